"""Where a pretraining step spends its time: ``torch.profiler`` over the bundle's own trainer step.

Builds the trainer as ``pretrain_e2e.py`` does (train.json + the paper overlay), runs ``--steps``
iterations on one in-memory batch under ``torch.profiler``, and prints the operators with the most
device time (CUDA kernels) or self CPU time, each as a share of the step. The same run's images/s for larger
per-GPU batches (``--batches``) show how far batching alone goes.

Usage::

    python benchmarks/pretrain_profile.py --device cuda --arch vit_small --batch 128 --batches 128 256
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from pretrain_e2e import OVERLAYS, bundle, step_rate
from torch.profiler import ProfilerActivity, profile


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(OVERLAYS), default="demo")
    parser.add_argument("--batch", type=int, default=None, help="global batch of the profiled step")
    parser.add_argument("--batches", type=int, nargs="*", default=[], help="also time the step at these batches")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dataset-dir", default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    args.workers, args.compile = 0, False
    if args.dataset_dir is None:
        from pretrain_e2e import REPO

        from data_prep.demo import ensure_sharded_demo

        args.dataset_dir = str(ensure_sharded_demo(REPO / "demo_data"))
    device = torch.device(args.device)
    for position, batch in enumerate([args.batch, *args.batches]):
        args.batch = batch
        with tempfile.TemporaryDirectory() as scratch:
            config = bundle(args, scratch, 100)
            size = int(config.get_parsed_content("batch_size_per_device"))
            trainer = config.get_parsed_content("train#trainer")
            batch_data = next(iter(config.get_parsed_content("train#dataloader")))
            rate, _ = step_rate(trainer, batch_data, size, 3, args.steps, device)
            print(f"# {args.arch}, batch {size}, {device}: step alone {rate:.1f} img/s")
            if position > 0:  # timing only
                continue
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                for _ in range(args.steps):
                    trainer._iteration(trainer, batch_data)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            key = "device_time_total" if device.type == "cuda" else "self_cpu_time_total"
            events = [e for e in prof.key_averages() if getattr(e, key) > 0 and not e.key.startswith("ProfilerStep")]
            kernels = [e for e in events if device.type != "cuda" or e.device_type.name == "CUDA"]
            total = sum(getattr(e, key) for e in kernels)
            print(f"  device time per step {total / args.steps / 1e3:.1f} ms over {len(kernels)} kernels/ops")
            for event in sorted(kernels, key=lambda e: getattr(e, key), reverse=True)[: args.top]:
                share = getattr(event, key) / total
                print(f"  {share:6.1%}  {event.count // args.steps:5d}/step  {event.key[:90]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
