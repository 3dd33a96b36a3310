"""End-to-end pretraining throughput: the pretrain bundle's own loader and trainer, against the step alone.

Builds ``train#dataloader`` and ``train#trainer`` from ``bundles/pretrain/configs/train.json`` plus a
paper overlay (``ultradino_vits16.json`` / ``ultradino_vitb16.json``) with MONAI's ``ConfigParser``,
exactly as ``python -m monai.bundle run`` would, and prints

* the loader alone: images/s of ``--iterations`` batches (decode + multi-crop + mask collate);
* the step alone: images/s of the trainer's iteration on one batch held in memory;
* end to end: images/s of ``trainer.run()`` and the fraction of its wall time spent waiting for
  the next batch (ignite's ``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED``);
* the same run's dense matmul peak, and the step's and end-to-end rate as a share of it.

Usage::

    python benchmarks/pretrain_e2e.py                                    # CPU, demo shards, demo model
    python benchmarks/pretrain_e2e.py --device cuda --arch vit_small --batch 64 --workers 12 \\
        --dataset-dir SHARDS_DIR [--compile]

``--arch demo`` keeps train.json's demo model and crops (what the main command trains); ``vit_small``
and ``vit_base`` merge the paper overlay (224 / 96 px crops, 65,536 prototypes). Without
``--dataset-dir`` the demo shards are made (``data_prep.demo``) and used.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from reference import matmul_peak
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "pretrain" / "configs"
OVERLAYS = {"demo": [], "vit_small": ["ultradino_vits16.json"], "vit_base": ["ultradino_vitb16.json"]}


def bundle(args, bundle_root: str, iterations: int) -> ConfigParser:
    """The pretrain bundle's config, as the CLI would parse it, sized for a benchmark run."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in ["train.json", *OVERLAYS[args.arch]]])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    overrides = {
        "bundle_root": bundle_root,
        "dataset_dir": args.dataset_dir,
        "device": f"$torch.device('{args.device}')",
        "num_workers": args.workers,
        "compile": args.compile,
        "knn_datalist": None,
        "epochs": 1,
        "epoch_length": iterations,
        "warmup_epochs": 0,
        "warmup_teacher_temp_epochs": 0,
        "freeze_last_layer_epochs": 0,
        "log_interval": 10**6,
        "checkpoint_interval": 10**6,
    }
    if args.batch:
        overrides["global_batch_size"] = args.batch
    for key, value in overrides.items():
        parser[key] = value
    return parser


def loader_rate(loader, batch: int, warmup: int, iterations: int) -> float:
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(iterations):
        next(iterator)
    return iterations * batch / (time.perf_counter() - start)


def step_rate(trainer, batch_data, batch: int, warmup: int, iterations: int, device) -> tuple[float, float]:
    """(images/s, FLOPs per step) of the trainer's iteration on one in-memory batch."""
    trainer.state.iteration, trainer.state.epoch = 1, 1
    for _ in range(warmup):
        trainer._iteration(trainer, batch_data)
    with FlopCounterMode(display=False) as counter:
        trainer._iteration(trainer, batch_data)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        trainer._iteration(trainer, batch_data)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return iterations * batch / (time.perf_counter() - start), counter.get_total_flops()


def end_to_end(trainer, batch: int, warmup: int) -> tuple[float, float]:
    """(images/s, share of wall time waiting for data) of ``trainer.run()`` after ``warmup`` iterations."""
    marks = {"wait": 0.0, "start": None, "get": None}

    def get_started(engine):
        marks["get"] = time.perf_counter()

    def get_completed(engine):
        if engine.state.iteration >= warmup:
            marks["wait"] += time.perf_counter() - marks["get"]

    def iteration_completed(engine):
        if engine.state.iteration == warmup:
            marks["start"] = time.perf_counter()

    trainer.add_event_handler(Events.GET_BATCH_STARTED, get_started)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, get_completed)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, iteration_completed)
    trainer.run()
    wall = time.perf_counter() - marks["start"]
    timed = trainer.state.iteration - warmup
    return timed * batch / wall, marks["wait"] / wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(OVERLAYS), default="demo")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbones")
    parser.add_argument("--dataset-dir", default=None, help="shard folder or ingest folder (default: demo shards)")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    if args.dataset_dir is None:
        from data_prep.demo import ensure_sharded_demo

        args.dataset_dir = str(ensure_sharded_demo(REPO / "demo_data"))
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        config = bundle(args, scratch, args.warmup + args.iterations)
        batch = int(config.get_parsed_content("batch_size_per_device"))
        print(
            f"# pretrain bundle, arch {args.arch}, batch {batch}, crops {config['global_crops_size']}/"
            f"{config['local_crops_size']} x {config['n_local_crops']} local, device {device}, "
            f"{args.workers} loader workers, compile {args.compile}, amp {config.get_parsed_content('amp')}, "
            f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, data {args.dataset_dir}"
        )
        loader_ips = loader_rate(config.get_parsed_content("train#dataloader"), batch, args.warmup, args.iterations)
        print(f"loader alone       {loader_ips:9.1f} img/s  ({loader_ips / max(1, args.workers):.1f} per worker)")
        sys.stdout.flush()

        trainer = config.get_parsed_content("train#trainer")
        from ultradino_monai.engines.pretrain import compile_backbones

        compile_backbones([config.get_parsed_content("student"), config.get_parsed_content("teacher")], args.compile)
        e2e_ips, waiting = end_to_end(trainer, batch, args.warmup)
        batch_data = next(iter(config.get_parsed_content("train#dataloader")))
        step_ips, flops = step_rate(trainer, batch_data, batch, args.warmup, args.iterations, device)
        dtype = torch.bfloat16 if config.get_parsed_content("amp") else torch.float32
        peak = matmul_peak(dtype, device)
        achieved = flops * step_ips / batch / 1e9
        print(f"step alone         {step_ips:9.1f} img/s  {achieved:10.1f} GFLOP/s = {achieved / peak:.3f} of peak")
        print(f"end to end         {e2e_ips:9.1f} img/s  waiting for data {100 * waiting:.1f}% of the time")
        print(f"matmul peak        {peak:9.1f} GFLOP/s ({dtype}, same run)")
        print(f"ratios             end-to-end/step {e2e_ips / step_ips:.2f}, loader/step {loader_ips / step_ips:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
