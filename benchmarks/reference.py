"""The machine's own reference figures, measured in the same run as a benchmark.

A benchmark prints its throughput next to these, as a ratio, so that figures from different
machines (or from one machine under different load) can be compared.
"""

from __future__ import annotations

import time

import torch


def matmul_peak(dtype: torch.dtype, device: torch.device | str = "cpu", size: int | None = None, repeats: int = 10):
    """Dense square matmul throughput in GFLOP/s: the best of ``repeats`` timed products.

    The best, not the median: a peak is what the hardware can do, and other processes sharing the
    cores only ever slow a product down (a median under load halved the CPU bf16 figure). ``size``
    defaults to 2048 on CPU and 8192 on GPU: a 2048-cube product fills an H200 only to 211 of its
    ~790 bf16 TFLOP/s, which made a training step look closer to peak than it is.
    """
    device = torch.device(device)
    if size is None:
        size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
