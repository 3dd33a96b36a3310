"""CPU deployment of an exported classifier with ONNX Runtime: int8 quantisation and frame streaming.

A ViT-S/16 at 224 x 224 costs 8.6 GFLOP per frame, so a 2-core CPU cannot keep up with a 30
frames/s scanner in fp32 (it would need about 260 GFLOP/s). Two standard steps make real time
possible without a GPU:

* :func:`quantize_int8`: ONNX Runtime's *dynamic* quantisation. Weights of every MatMul/Gemm
  become int8 (one scale per output channel); activations are quantised per call from their
  observed range, so no calibration data is needed. The integer GEMMs run on the CPU's
  VNNI instructions at about three times the fp32 rate.
* :class:`FrameStream`: one single-threaded session per core, frames handed out round-robin
  and results returned in arrival order. Each frame still takes one session's latency, but
  ``n`` frames are in flight, so throughput scales with the cores instead of paying
  intra-operator threading overhead on small per-frame matrices.

:func:`prediction_agreement` measures what quantisation costs on real images (top-1 agreement
and the largest class-probability change); ``bundles/classification/configs/quantize.json``
runs both on the validation images and writes a report next to the model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ultradino_monai.data.datalist import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["FrameStream", "cpu_session", "prediction_agreement", "preprocessed_frames", "quantize_and_check", "quantize_int8"]


def _require_onnx_model(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ONNX model not found: {path}. Export one first with `python -m monai.bundle onnx_export` "
            "(bundles/classification/docs/README.md, section Export)."
        )
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError, OSError) as error:
        raise ValueError(f"{path} is not a valid ONNX model: {error}") from error
    return path


def _quiet_quantizer(record: logging.LogRecord) -> bool:
    # onnxruntime's quantiser logs one INFO line per unquantised tensor straight to the root logger
    return not record.getMessage().startswith("Quantization parameters for tensor")


def quantize_int8(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Write a dynamically int8-quantised copy of the ONNX model ``source`` to ``destination``.

    Weights: signed int8, one scale per output channel. Activations: unsigned int8, quantised
    at run time (``DynamicQuantizeLinear``). The file is written atomically: on any error
    ``destination`` is left as it was. Returns ``destination``.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = _require_onnx_model(source)
    destination = Path(destination)
    if destination.resolve() == source.resolve():
        raise ValueError(f"quantize_int8 would overwrite its input {source}: choose another destination")

    def write(temporary: Path) -> None:
        root = logging.getLogger()
        root.addFilter(_quiet_quantizer)
        try:
            quantize_dynamic(str(source), str(temporary), weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.removeFilter(_quiet_quantizer)

    atomic_write(destination, write)
    logger.info("int8 model written to %s (%.1f MB, fp32 %.1f MB)", destination,
                destination.stat().st_size / 1e6, source.stat().st_size / 1e6)
    return destination


def cpu_session(path: str | os.PathLike, threads: int = 1):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and all graph optimisations."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # streams share the cores: a thread that spins while waiting would steal its neighbour's core
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(_require_onnx_model(path)), options, providers=["CPUExecutionProvider"])


class FrameStream:
    """Classify a stream of frames with ``streams`` single-threaded sessions of one ONNX model.

    Frame ``i`` goes to session ``i % streams``; ONNX Runtime releases the GIL while it runs,
    so the sessions work in parallel. :meth:`submit` returns a future of the output array;
    :meth:`map` yields outputs in input order.

    Args:
        model_path: ONNX model with one input (``[1, C, H, W]`` float32 frames).
        streams: sessions (and worker threads); one per physical core is the sensible maximum.
    """

    def __init__(self, model_path: str | os.PathLike, streams: int = 2):
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.sessions = [cpu_session(model_path, threads=1) for _ in range(streams)]
        self.input_name = self.sessions[0].get_inputs()[0].name
        # one worker per session, so a session never runs two frames at once
        self._workers = [ThreadPoolExecutor(max_workers=1) for _ in self.sessions]
        self._next = 0

    def _run(self, session, frame: np.ndarray) -> np.ndarray:
        return session.run(None, {self.input_name: frame})[0]

    def submit(self, frame: np.ndarray) -> Future:
        index = self._next % len(self.sessions)
        self._next += 1
        return self._workers[index].submit(self._run, self.sessions[index], np.ascontiguousarray(frame, np.float32))

    def map(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        pending: list[Future] = []
        for frame in frames:
            pending.append(self.submit(frame))
            if len(pending) > len(self.sessions):
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()

    def close(self) -> None:
        for worker in self._workers:
            worker.shutdown(wait=True)

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def prediction_agreement(reference_path: str | os.PathLike, candidate_path: str | os.PathLike,
                         frames: Iterable[np.ndarray]) -> dict[str, float]:
    """Compare two ONNX classifiers on the same frames (each ``[1, C, H, W]`` float32).

    Returns ``frames``, ``top1_agreement`` (fraction of frames with the same arg-max class)
    and ``max_abs_probability_change`` (largest change of any softmax output on any frame).
    """
    reference, candidate = cpu_session(reference_path), cpu_session(candidate_path)
    name_r, name_c = reference.get_inputs()[0].name, candidate.get_inputs()[0].name
    agree, changes = [], []
    for frame in frames:
        frame = np.ascontiguousarray(frame, np.float32)
        p_r = _softmax(reference.run(None, {name_r: frame})[0])
        p_c = _softmax(candidate.run(None, {name_c: frame})[0])
        agree.append(np.array_equal(p_r.argmax(-1), p_c.argmax(-1)))
        changes.append(np.abs(p_r - p_c).max())
    if not agree:
        raise ValueError("prediction_agreement needs at least one frame")
    return {"frames": len(agree), "top1_agreement": float(np.mean(agree)),
            "max_abs_probability_change": float(np.max(changes))}


def preprocessed_frames(items: Iterable[dict], transform, limit: int | None = None) -> Iterator[np.ndarray]:
    """``transform(item)["image"]`` of each item as a ``[1, C, H, W]`` float32 array (at most ``limit``)."""
    for count, item in enumerate(items):
        if limit is not None and count >= limit:
            return
        yield np.asarray(transform(item)["image"], dtype=np.float32)[None]


def quantize_and_check(source: str | os.PathLike, destination: str | os.PathLike, frames: Iterable[np.ndarray],
                       report_path: str | os.PathLike) -> dict[str, Any]:
    """:func:`quantize_int8` ``source`` to ``destination``, compare both on ``frames`` and write a JSON report."""
    from ultradino_monai.data.datalist import write_json_atomic

    quantize_int8(source, destination)
    report = {"fp32_model": str(source), "int8_model": str(destination),
              "quantization": "onnxruntime dynamic: int8 weights per output channel, uint8 activations per call",
              **prediction_agreement(source, destination, frames)}
    write_json_atomic(report_path, report)
    logger.info("int8 vs fp32 on %d frames: top-1 agreement %.1f %%, largest probability change %.4f; report %s",
                report["frames"], 100 * report["top1_agreement"], report["max_abs_probability_change"], report_path)
    return report
