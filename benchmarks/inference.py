"""Single-frame CPU latency of the fetal-plane classifier (ViT-S/16, 224 x 224, 1 channel).

Usage::

    python benchmarks/inference.py                    # 2 threads, ViT-S/16 at 224
    python benchmarks/inference.py --threads 1 --iters 50 --json latency.json

What is timed: ``Classifier(ViT-S/16 with 4 registers) -> 6 logits`` on one normalised
``[1, 1, 224, 224]`` frame under ``torch.inference_mode()`` (batch 1: a live scanner sends one
frame at a time), with ``torch.set_num_threads(--threads)``:

* ``eager fp32``: the PyTorch module as trained;
* ``eager bf16 autocast``: the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* ``torchscript fp32``: ``torch.jit.trace`` + ``torch.jit.freeze`` (weights folded into the
  graph as constants) + ``torch.jit.optimize_for_inference``;
* ``onnxruntime fp32``: the model exported to ONNX (as ``python -m monai.bundle onnx_export``
  does) in an ONNX Runtime CPU session with ``--threads`` intra-op threads;
* ``onnxruntime int8``: the same file after ``ultradino_monai.engines.onnx_deploy.quantize_int8``
  (dynamic quantisation: int8 weights per output channel, activations quantised per call),
  as ``bundles/classification/configs/quantize.json`` produces it.

Then the streaming figures, for the fp32 and the int8 file, with
:class:`~ultradino_monai.engines.onnx_deploy.FrameStream` (one single-threaded ONNX Runtime
session per thread, each frame on whichever session is free):

* closed loop: ``--stream-frames`` frames as fast as the sessions take them (``--threads`` in
  flight), repeated ``--stream-repeats`` times: throughput (median and worst repeat) and
  per-frame latency;
* a live feed: frames arrive on a fixed ``--feed-fps`` clock whether or not the model keeps up,
  and the latency from arrival to result (queueing included) is reported as median, p90 and
  max. A model that cannot keep up shows it here as a latency that grows through the run.

The model's FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
attention and the patch-embedding convolution; 2 FLOPs per multiply-add). The same process
measures the machine's dense matmul peak (a 2048^3 fp32 and bf16 ``torch.mm``, and an int8
ONNX Runtime ``MatMulInteger`` (uint8 x int8 -> int32, the kernel the int8 model uses), best of
several) so every latency is also reported as achieved GFLOP/s and as a fraction of that
peak. Timed rounds alternate between the variants so background load hits them alike; the
median and 90th percentile latency of each are printed, with frames/s = 1000 / median ms.
The load average at start is printed too: on a shared machine the numbers are upper bounds.
The weights are random: latency does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from reference import matmul_peak  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ultradino_monai.engines.onnx_deploy import FrameStream, cpu_session, quantize_int8  # noqa: E402
from ultradino_monai.networks.classifier import Classifier  # noqa: E402
from ultradino_monai.networks.vit import build_vit  # noqa: E402

REAL_TIME_FPS = 30.0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_seconds(run, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``run``, after one untimed warm-up (kernel selection)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def int8_matmul_peak_gops(threads: int, workdir: Path, size: int = 2048, repeats: int = 5) -> float:
    """Best GOP/s of ONNX Runtime's ``MatMulInteger`` (uint8 [size, size] x int8 [size, size] -> int32)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.integers(-128, 128, (size, size), dtype=np.int8), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["C"])],
        "int8_gemm",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("C", TensorProto.INT32, [size, size])],
        initializer=[weights],
    )
    path = workdir / "int8_gemm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = cpu_session(path, threads=threads)
    activations = {"A": rng.integers(0, 256, (size, size), dtype=np.uint8)}
    return 2.0 * size**3 / best_seconds(lambda: session.run(None, activations), repeats) / 1e9


def export_onnx(model: torch.nn.Module, frame: torch.Tensor, workdir: Path) -> tuple[Path, Path]:
    """fp32 ONNX export (the legacy exporter, as the bundle's onnx_export) and its int8 quantisation."""
    fp32 = workdir / "model.onnx"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(model, frame, str(fp32), input_names=["image"], output_names=["pred"], dynamo=False)
    return fp32, quantize_int8(fp32, workdir / "model_int8.onnx")


def stream_figures(model_path: Path, frame, streams: int, frames: int, repeats: int, feed_fps: float) -> dict:
    """Closed-loop throughput / latency and live-feed latency of a ``streams``-session FrameStream."""
    closed_fps: list[float] = []
    closed_latencies: list[float] = []
    feed_latencies: list[float] = []

    def record(into: list[float], arrival: float):
        # runs in the worker thread as the frame finishes (or at once if it already has)
        return lambda _: into.append(time.perf_counter() - arrival)

    with FrameStream(model_path, streams=streams) as stream:
        for _ in range(2 * streams):  # warm-up: every session runs at least once
            stream.submit(frame).result()
        for _ in range(repeats):
            start = time.perf_counter()
            in_flight = []
            for _ in range(frames):
                if len(in_flight) >= streams:
                    in_flight.pop(0).result()
                future = stream.submit(frame)
                future.add_done_callback(record(closed_latencies, time.perf_counter()))
                in_flight.append(future)
            for future in in_flight:
                future.result()
            closed_fps.append(frames / (time.perf_counter() - start))
        start = time.perf_counter()
        feed = []
        for index in range(frames):
            arrival = start + index / feed_fps
            time.sleep(max(0.0, arrival - time.perf_counter()))
            future = stream.submit(frame)
            future.add_done_callback(record(feed_latencies, arrival))
            feed.append(future)
        for future in feed:
            future.result()
    # the with block has joined the workers, so every latency is recorded

    def percentile(values: list[float], q: float) -> float:
        return sorted(values)[max(0, int(round(q * len(values))) - 1)]

    return {
        "fps": statistics.median(closed_fps),
        "worst_fps": min(closed_fps),
        "median_latency_ms": 1e3 * statistics.median(closed_latencies),
        "p90_latency_ms": 1e3 * percentile(closed_latencies, 0.9),
        "feed_fps": feed_fps,
        "feed_median_ms": 1e3 * statistics.median(feed_latencies),
        "feed_p90_ms": 1e3 * percentile(feed_latencies, 0.9),
        "feed_max_ms": 1e3 * max(feed_latencies),
    }


def count_flops(model: torch.nn.Module, frame: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(frame)
    return int(counter.get_total_flops())


def build_variants(
    model: torch.nn.Module, frame: torch.Tensor, onnx_files: tuple[Path, Path], threads: int
) -> dict[str, callable]:
    def eager(x):
        return model(x)

    def eager_bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    with torch.no_grad(), warnings.catch_warnings():  # outside inference_mode: freeze needs ordinary tensors
        # timm's dynamic-size patch embedding formats shapes in an assert: constant for a fixed input size
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model, frame)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))

    def scripted(x):
        return frozen(x)

    sessions = {name: cpu_session(path, threads=threads) for name, path in zip(("fp32", "int8"), onnx_files)}

    def onnxruntime_run(name):
        return lambda x: torch.from_numpy(sessions[name].run(None, {"image": x.numpy()})[0])

    return {
        "eager fp32": eager,
        "eager bf16 autocast": eager_bf16,
        "torchscript fp32 (traced, frozen)": scripted,
        "onnxruntime fp32": onnxruntime_run("fp32"),
        "onnxruntime int8 (dynamic)": onnxruntime_run("int8"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch and onnxruntime intra-op threads, and the number of streams (default 2)",
    )
    parser.add_argument("--arch", default="vit_small", help="backbone arch (default vit_small)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per variant")
    parser.add_argument("--iters", type=int, default=30, help="timed runs per variant")
    parser.add_argument("--stream-frames", type=int, default=120, help="frames per streaming measurement")
    parser.add_argument("--stream-repeats", type=int, default=3, help="closed-loop streaming repeats")
    parser.add_argument("--feed-fps", type=float, default=REAL_TIME_FPS, help="frame rate of the live feed")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Classifier(build_vit(args.arch, img_size=args.image_size), num_classes=6).eval()
    frame = torch.randn(1, 1, args.image_size, args.image_size)
    flops = count_flops(model, frame)
    scratch = tempfile.TemporaryDirectory(prefix="inference_benchmark_")
    workdir = Path(scratch.name)
    onnx_files = export_onnx(model, frame, workdir)
    variants = build_variants(model, frame, onnx_files, args.threads)

    with torch.inference_mode():
        reference = model(frame)
        for name, run in variants.items():
            out = run(frame).float()
            error = (out - reference).abs().max().item()
            print(f"check {name:<36} max |logit - eager fp32| = {error:.2e}")
            for _ in range(args.warmup):
                run(frame)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.iters):
            for name, run in variants.items():  # interleaved rounds: background load hits all alike
                start = time.perf_counter()
                run(frame)
                times[name].append(time.perf_counter() - start)

    streaming = {
        precision: stream_figures(
            path, frame.numpy(), args.threads, args.stream_frames, args.stream_repeats, args.feed_fps
        )
        for precision, path in zip(("fp32", "int8"), onnx_files)
    }
    peak = {
        "fp32": matmul_peak(torch.float32, repeats=5),
        "bf16": matmul_peak(torch.bfloat16, repeats=5),
        "int8": int8_matmul_peak_gops(args.threads, workdir),
    }
    scratch.cleanup()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print()
    print(f"CPU: {cpu_name()} | {os.cpu_count()} logical CPUs | torch {torch.__version__} | threads {args.threads}")
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other processes share the cores)")
    print(
        f"model: Classifier({args.arch}/16, 4 registers) at {args.image_size}x{args.image_size}, 1 channel: "
        f"{flops / 1e9:.2f} GFLOP per frame"
    )
    print(
        f"dense matmul peak in this process: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s, "
        f"int8 (onnxruntime MatMulInteger) {peak['int8']:.1f} GOP/s"
    )
    print()
    print(f"{'variant':<36}{'median ms':>10}{'p90 ms':>9}{'frames/s':>10}{'GFLOP/s':>9}{'/ peak':>8}")
    results = []
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = sorted(samples)[max(0, int(round(0.9 * len(samples))) - 1)]
        achieved = flops / median / 1e9
        reference_peak = peak["bf16"] if "bf16" in name else peak["int8"] if "int8" in name else peak["fp32"]
        results.append(
            {
                "variant": name,
                "median_ms": 1e3 * median,
                "p90_ms": 1e3 * p90,
                "fps": 1.0 / median,
                "gflops": achieved,
                "fraction_of_peak": achieved / reference_peak,
            }
        )
        print(
            f"{name:<36}{1e3 * median:>10.1f}{1e3 * p90:>9.1f}{1.0 / median:>10.1f}{achieved:>9.1f}"
            f"{achieved / reference_peak:>8.2f}"
        )
    print(
        f"\nstreaming: {args.threads} single-threaded onnxruntime session(s), each frame on a free one; "
        f"closed loop {args.stream_repeats} x {args.stream_frames} frames ({args.threads} in flight), then a "
        f"live feed of {args.stream_frames} frames at {args.feed_fps:.0f} frames/s"
    )
    print(
        f"{'variant':<36}{'median ms':>10}{'p90 ms':>9}{'frames/s':>10}{'worst':>7}{'GFLOP/s':>9}{'/ peak':>8}"
        f"{'feed median / p90 / max ms':>30}"
    )
    for precision, figures in streaming.items():
        name = f"stream x{args.threads} onnxruntime {precision}"
        achieved = flops * figures["fps"] / 1e9
        results.append(
            {
                "variant": name,
                **figures,
                "median_ms": figures["median_latency_ms"],
                "p90_ms": figures["p90_latency_ms"],
                "gflops": achieved,
                "fraction_of_peak": achieved / peak[precision],
            }
        )
        feed = f"{figures['feed_median_ms']:.1f} / {figures['feed_p90_ms']:.1f} / {figures['feed_max_ms']:.1f}"
        print(
            f"{name:<36}{figures['median_latency_ms']:>10.1f}{figures['p90_latency_ms']:>9.1f}"
            f"{figures['fps']:>10.1f}{figures['worst_fps']:>7.1f}{achieved:>9.1f}"
            f"{achieved / peak[precision]:>8.2f}{feed:>30}"
        )
    print(
        "(int8 rows: the attention products stay fp32, about 9 % of the FLOPs, so / peak understates the "
        "int8 GEMMs' own efficiency)"
    )
    best = max(results, key=lambda r: r["fps"])
    verdict = "meets" if best["fps"] >= REAL_TIME_FPS else "misses"
    print(
        f"\nbest: {best['variant']} at {best['fps']:.1f} frames/s: {verdict} the {REAL_TIME_FPS:.0f} frames/s "
        f"real-time target on {args.threads} thread(s)"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "cpu": cpu_name(),
                    "threads": args.threads,
                    "load_average": list(load),
                    "torch": torch.__version__,
                    "arch": args.arch,
                    "image_size": args.image_size,
                    "gflop_per_frame": flops / 1e9,
                    "peak_gflops": peak,
                    "results": results,
                    "real_time_fps": REAL_TIME_FPS,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
