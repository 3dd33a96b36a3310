"""Throughput of one DINOv2 pretraining step, against this machine's own matmul peak.

Runs the real :class:`~ultradino_monai.engines.dino_trainer.DinoTrainer` iteration (teacher
forward, student forward on 2 global + 8 local crops with iBOT masks, DINO + iBOT + KoLeo
losses, backward, clipping, AdamW, EMA) for ViT-S/16 at the paper's crops (224 / 96) on
synthetic crops, and reports

* images/s (an image = its 10 crops),
* achieved GFLOP/s, from the FLOPs that ``torch.utils.flop_counter`` counts in one step,
* the ratio to a dense matmul peak measured in the same process and the same dtype,
* peak RSS.

Usage::

    python benchmarks/pretrain_step.py                 # ViT-S/16, batch 8, CPU, fp32 and bf16
    python benchmarks/pretrain_step.py --arch vit_base --batch 128 --device cuda --dtypes bfloat16

Timings are wall-clock medians over ``--steps`` steps after ``--warmup`` steps.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch
from reference import matmul_peak
from torch.utils.flop_counter import FlopCounterMode

from ultradino_monai.engines import pretrain
from ultradino_monai.engines.dino_trainer import DinoTrainer
from ultradino_monai.networks.dino_model import DinoModel
from ultradino_monai.networks.heads import DINOHead
from ultradino_monai.networks.vit import build_vit
from ultradino_monai.optim import build_adamw
from ultradino_monai.ssl import DINOLoss, KoLeoLoss, MultiCropMaskCollate, build_dino_schedules, iBOTPatchLoss


def synthetic_batches(batch: int, global_size: int, local_size: int, n_local: int, patch: int):
    collate = MultiCropMaskCollate(n_tokens=(global_size // patch) ** 2, seed=0)
    generator = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(batch):
        sample = {f"global_{i}": torch.randn(1, global_size, global_size, generator=generator) for i in range(2)}
        sample.update(
            {f"local_{i}": torch.randn(1, local_size, local_size, generator=generator) for i in range(n_local)}
        )
        samples.append(sample)
    while True:
        yield collate(samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--n-local", type=int, default=8)
    parser.add_argument("--prototypes", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"]
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(
        f"# DINOv2 pretraining step: {args.arch}/16, batch {args.batch}, crops 2x{args.global_size} + "
        f"{args.n_local}x{args.local_size}, K={args.prototypes}, device {device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    if device.type == "cpu" and "bfloat16" in args.dtypes:
        supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        print(f"# CPU bf16 support (mkldnn_bf16): {supported}")
    print("dtype     img/s   step_s  GFLOP/step  GFLOP/s  matmul_peak_GFLOP/s  ratio_to_peak  peak_RSS_MB")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        torch.manual_seed(0)
        backbone = build_vit(args.arch, patch_size=16, img_size=args.global_size, drop_path_rate=0.3)
        student = DinoModel(backbone, DINOHead(backbone.embed_dim, args.prototypes)).to(device)
        teacher = pretrain.make_teacher(student)
        optimizer = build_adamw(student, lr=0.0, weight_decay=0.0, layer_decay_rate=0.9, patch_embed_lr_mult=0.2)
        epochs, epoch_length = 2, args.steps + args.warmup + 1
        schedules = build_dino_schedules(
            0.004, args.batch, epochs, epoch_length, 0, 1e-6, 0.04, 0.4, 0.992, 1.0, 0.07, 0.04, 0, 0
        )
        loader = synthetic_batches(args.batch, args.global_size, args.local_size, args.n_local, 16)
        trainer = DinoTrainer(
            device,
            epochs,
            epoch_length,
            loader,
            student,
            teacher,
            optimizer,
            schedules,
            DINOLoss(args.prototypes).to(device),
            iBOTPatchLoss(args.prototypes).to(device),
            KoLeoLoss(),
            n_local_crops=args.n_local,
            amp=dtype != torch.float32,
            amp_dtype=dtype_name if dtype != torch.float32 else "bfloat16",
        )
        trainer.state.iteration = 1
        trainer.state.epoch = 1
        trainer.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        step_times, flops = [], None
        for step in range(args.warmup + args.steps + 1):
            batch = next(loader)
            if step == args.warmup + args.steps:  # count FLOPs on an extra, untimed step
                with FlopCounterMode(display=False) as counter:
                    trainer._iteration(trainer, batch)
                flops = counter.get_total_flops()
                break
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer._iteration(trainer, batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= args.warmup:
                step_times.append(time.perf_counter() - start)
            trainer.state.iteration += 1
        step_s = statistics.median(step_times)
        peak = matmul_peak(dtype, device)
        achieved = flops / step_s / 1e9
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{dtype_name:8s} {args.batch / step_s:7.2f} {step_s:8.3f} {flops / 1e9:11.1f} {achieved:8.1f} "
            f"{peak:20.1f} {achieved / peak:14.2f} {rss_mb:12.0f}"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
