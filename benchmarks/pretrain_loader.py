"""Pretraining loader throughput, end to end: PNG files vs tar shards vs a naive PIL + torchvision pipeline.

Times, per DataLoader worker and on the same frames:

* ``files``: the pretrain bundle's ``train#dataloader`` on the ingest folder's ``datalist.json``
  (one PNG file opened per sample; no cache);
* ``shards``: the same loader on the shard folder (``python -m data_prep.shards``);
* ``naive``: the same-run reference, in one process: ``PIL.Image.open`` on each PNG file, then the
  UltraDINO multi-crop recipe rebuilt with ``torchvision.transforms.v2`` (``benchmarks/multicrop.py``),
  no masks and no collate.

Each bundle loader does the whole job of a training step's input: decode, resize, 2 global + N local
crops with their augmentations, iBOT masks and the view-major collate. Figures are images/s per
worker (``--workers 0`` times the main process itself) and the ratio to the naive pipeline.

Usage::

    python benchmarks/pretrain_loader.py                        # demo frames, the paper's 224/96 crops
    python benchmarks/pretrain_loader.py --ingest-dir INGEST --shards-dir SHARDS --workers 4 --batches 40
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from multicrop import torchvision_reference
from PIL import Image

from ultradino_monai.data.datalist import load_datalist

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "pretrain" / "configs"


def bundle_loader(dataset_dir: str, workers: int, batch: int, scratch: str):
    """The pretrain bundle's loader with the paper's crops (ViT-S/16 overlay), as the CLI builds it."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "ultradino_vits16.json")])
    overrides = {
        "bundle_root": scratch,
        "dataset_dir": dataset_dir,
        "num_workers": workers,
        "global_batch_size": batch,
        "knn_datalist": None,
        "epoch_length": 1,
        "device": "$torch.device('cpu')",
    }
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("train#dataloader"), parser


def time_loader(loader, batch: int, batches: int, warmup: int = 2) -> float:
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def time_naive(paths: list[str], images: int, global_size: int, local_size: int, n_local: int) -> float:
    pipeline = torchvision_reference(global_size, local_size, n_local, pil=True)
    for path in paths[:8]:
        pipeline(Image.open(path).convert("L"))
    start = time.perf_counter()
    for index in range(images):
        with Image.open(paths[index % len(paths)]) as image:
            pipeline(image.convert("L"))
    return images / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ingest-dir", default=None, help="a data_prep.ingest output (default: the demo's)")
    parser.add_argument("--shards-dir", default=None, help="its shards (default: the demo's)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # what a DataLoader worker runs with
    if args.ingest_dir is None or args.shards_dir is None:
        from data_prep.demo import ensure_sharded_demo

        shards = ensure_sharded_demo(REPO / "demo_data")
        args.ingest_dir, args.shards_dir = str(shards.parent / "ingested"), str(shards)
    per = max(1, args.workers)
    with tempfile.TemporaryDirectory() as scratch:
        files_loader, config = bundle_loader(args.ingest_dir, args.workers, args.batch, scratch)
        sizes = (config["global_crops_size"], config["local_crops_size"], config["n_local_crops"])
        print(
            f"# pretrain loader: batch {args.batch}, {args.batches} batches, crops {sizes[0]}/{sizes[1]} x "
            f"{sizes[2]} local, {args.workers} workers, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
        )
        paths = [item["image"] for item in load_datalist(Path(args.ingest_dir) / "datalist.json")]
        naive = time_naive(paths, args.batch * args.batches, *sizes)
        files = time_loader(files_loader, args.batch, args.batches) / per
        shards_loader, _ = bundle_loader(args.shards_dir, args.workers, args.batch, scratch)
        shards = time_loader(shards_loader, args.batch, args.batches) / per
    print("pipeline   img/s per worker   ratio to naive")
    print(f"naive      {naive:16.1f}   {1.0:14.2f}")
    print(f"files      {files:16.1f}   {files / naive:14.2f}")
    print(f"shards     {shards:16.1f}   {shards / naive:14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
