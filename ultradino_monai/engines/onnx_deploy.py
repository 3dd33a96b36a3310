"""CPU deployment of an exported classifier with ONNX Runtime: int8 quantisation and frame streaming.

A ViT-S/16 at 224 x 224 costs 8.6 GFLOP per frame, so a 2-core CPU cannot keep up with a 30
frames/s scanner in fp32 (it would need about 260 GFLOP/s). Two standard steps make real time
possible without a GPU:

* :func:`quantize_int8`: ONNX Runtime's *dynamic* quantisation. Every MatMul with constant
  weights (the qkv, projection, MLP and head layers) and the patch-embedding Conv get int8
  weights with one scale per output channel; their activations are quantised per call from
  the observed range, so no calibration data is needed. The attention products (QK^T, AV)
  have no constant operand and stay fp32 (about 9 % of the FLOPs at 224 px). The integer
  GEMMs run on the CPU's VNNI instructions at about three times the fp32 rate.
* :class:`FrameStream`: one single-threaded session per core; each frame goes to whichever
  session is free and results come back in input order. Each frame still takes one session's
  latency, but ``n`` frames are in flight, so throughput scales with the cores instead of
  paying intra-operator threading overhead on small per-frame matrices.

:func:`prediction_agreement` measures what quantisation costs on real images (top-1 agreement
and the largest class-probability change); :func:`quantize_and_check`, which
``bundles/classification/configs/quantize.json`` runs, writes the int8 model and that report.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ultradino_monai.utils.errors import MissingInputError
from ultradino_monai.utils.files import atomic_write, write_json_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "FrameStream",
    "cpu_session",
    "prediction_agreement",
    "preprocessed_frames",
    "quantize_and_check",
    "quantize_int8",
]

_WHERE_MODELS_COME_FROM = (
    "model.onnx comes from `python -m monai.bundle onnx_export`, model_int8.onnx from "
    "`python -m monai.bundle run --config_file bundles/classification/configs/quantize.json` "
    "(bundles/classification/docs/README.md, sections Export and Real-time deployment)"
)


def _require_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"ONNX model not found: {path}. {_WHERE_MODELS_COME_FROM}")
    return path


def _require_onnx_model(path: str | os.PathLike) -> Path:
    import onnx

    path = _require_file(path)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as error:
        raise ValueError(f"{path} is not a valid ONNX model: {error}") from error
    return path


def _source_and_destination(source: str | os.PathLike, destination: str | os.PathLike) -> tuple[Path, Path]:
    """A valid ONNX ``source`` and a ``destination`` that is not the same file."""
    source, destination = _require_onnx_model(source), Path(destination)
    if destination.resolve() == source.resolve():
        raise ValueError(f"quantising {source} would overwrite its input: choose another destination")
    return source, destination


def _quiet_quantizer(record: logging.LogRecord) -> bool:
    # onnxruntime's quantiser logs straight to the root logger: one INFO line per tensor it leaves in
    # fp32, and a WARNING suggesting `quant_pre_process` (symbolic shape inference and graph
    # optimisation). Measured on the exported ViT-S/16: same latency (82.4 vs 82.9 ms, 1 thread)
    # and identical outputs with and without it, so it is skipped and the advice silenced
    message = record.getMessage()
    return not (
        message.startswith("Quantization parameters for tensor")
        or message.startswith("Please consider to run pre-processing before quantization")
    )


def _quantize_into(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_quiet_quantizer)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(_quiet_quantizer)


def quantize_int8(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Write a dynamically int8-quantised copy of the ONNX model ``source`` to ``destination``.

    Weights: signed int8, one scale per output channel. Activations: unsigned int8, quantised
    at run time (``DynamicQuantizeLinear``). The file is written atomically: on any error
    ``destination`` is left as it was. Returns ``destination``.
    """
    source, destination = _source_and_destination(source, destination)
    atomic_write(destination, lambda temporary: _quantize_into(source, temporary))
    logger.info(
        "int8 model written to %s (%.1f MB, fp32 %.1f MB)",
        destination,
        destination.stat().st_size / 1e6,
        source.stat().st_size / 1e6,
    )
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
    return onnxruntime.InferenceSession(str(_require_file(path)), options, providers=["CPUExecutionProvider"])


class FrameStream:
    """Classify a stream of frames with ``streams`` single-threaded sessions of one ONNX model.

    Each frame runs on whichever session is free (ONNX Runtime releases the GIL while it runs,
    so the sessions work in parallel). :meth:`submit` returns a future of the output array and
    blocks while ``max_in_flight`` frames are already queued or running, so a producer faster
    than the model is slowed down instead of building an ever-longer queue. :meth:`map` yields
    outputs in input order. ``submit`` and ``map`` may be called from several threads.

    Args:
        model_path: ONNX model with one input (``[1, C, H, W]`` float32 frames).
        streams: sessions (and worker threads); one per physical core is the sensible maximum.
        max_in_flight: frames accepted but not finished before :meth:`submit` blocks (default ``2 * streams``).
    """

    def __init__(self, model_path: str | os.PathLike, streams: int = 2, max_in_flight: int | None = None):
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        max_in_flight = 2 * streams if max_in_flight is None else max_in_flight
        if max_in_flight < streams:
            raise ValueError(f"max_in_flight ({max_in_flight}) must be >= streams ({streams})")
        self.sessions = [cpu_session(model_path, threads=1) for _ in range(streams)]
        self.input_name = self.sessions[0].get_inputs()[0].name
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for session in self.sessions:
            self._free.put(session)
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._workers = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="frame-stream")

    def _run(self, frame: np.ndarray) -> np.ndarray:
        session = self._free.get()  # a worker only starts when a session is free: never two frames on one
        try:
            return session.run(None, {self.input_name: frame})[0]
        finally:
            self._free.put(session)
            self._slots.release()

    def submit(self, frame: np.ndarray) -> Future:
        frame = np.ascontiguousarray(frame, np.float32)
        self._slots.acquire()
        try:
            return self._workers.submit(self._run, frame)
        except BaseException:
            self._slots.release()
            raise

    def map(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        pending: deque[Future] = deque()
        for frame in frames:
            if len(pending) >= len(self.sessions):
                yield pending.popleft().result()
            pending.append(self.submit(frame))
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        self._workers.shutdown(wait=True)

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def prediction_agreement(
    reference_path: str | os.PathLike, candidate_path: str | os.PathLike, frames: Iterable[np.ndarray]
) -> dict[str, float]:
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
    return {
        "frames": len(agree),
        "top1_agreement": float(np.mean(agree)),
        "max_abs_probability_change": float(np.max(changes)),
    }


def preprocessed_frames(items: Iterable[dict], transform, limit: int | None = None) -> Iterator[np.ndarray]:
    """``transform(item)["image"]`` of each item as a ``[1, C, H, W]`` float32 array (at most ``limit``)."""
    for count, item in enumerate(items):
        if limit is not None and count >= limit:
            return
        yield np.asarray(transform(item)["image"], dtype=np.float32)[None]


def quantize_and_check(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    frames: Iterable[np.ndarray],
    report_path: str | os.PathLike,
) -> dict[str, Any]:
    """:func:`quantize_int8` ``source`` to ``destination``, compare both on ``frames``, write a JSON report.

    The int8 model is compared while it is still a temporary file and only then renamed to
    ``destination``; an earlier report is removed first. So a failure anywhere leaves no
    report that vouches for a model it was not measured on.
    """
    source, destination = _source_and_destination(source, destination)
    report_path = Path(report_path)
    report_path.unlink(missing_ok=True)
    report: dict[str, Any] = {
        "fp32_model": str(source),
        "int8_model": str(destination),
        "quantization": "onnxruntime dynamic: int8 weights per output channel, uint8 activations per call",
    }

    def quantize_then_compare(temporary: Path) -> None:
        _quantize_into(source, temporary)
        report.update(prediction_agreement(source, temporary, frames))

    atomic_write(destination, quantize_then_compare)
    write_json_atomic(report_path, report)
    logger.info(
        "int8 vs fp32 on %d frames: top-1 agreement %.1f %%, largest probability change %.4f; model %s, report %s",
        report["frames"],
        100 * report["top1_agreement"],
        report["max_abs_probability_change"],
        destination,
        report_path,
    )
    return report
