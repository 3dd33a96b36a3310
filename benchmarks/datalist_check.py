"""Speed of the bundles' datalist check (ultradino_monai.data.validate.check_datalist) on a 2M-entry datalist.

A synthetic pretraining datalist of ``--entries`` entries points, in turn, at ``--files`` real 240 x 320 PNGs
(the file system caches them, as it caches a warm dataset). Printed, all in the same run:

* reference: ``json.load`` of the file plus an ``os.stat`` of every entry's image (the least any check that
  looks at every file can cost);
* the default check (``decode="header"``): keys and types of every entry, ``os.stat`` of every file, Pillow
  headers of ``header_limit`` (100,000) evenly spaced files;
* keys and types only (``decode="none"``, what the bundles' datasets call per section) on a classification
  datalist of the same length;
* per-file costs measured on a smaller set and extrapolated to 2M: a header read of every file
  (``header_limit=None``), and a segmentation check with label values read in every label map.

python benchmarks/datalist_check.py [--entries 2000000] [--files 200]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ultradino_monai.data.validate import check_datalist
from ultradino_monai.utils.logs import setup_logging


def make_files(root: Path, count: int, shape=(240, 320)) -> list[str]:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    names = []
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / "images" / f"{index}.png")
        Image.fromarray(rng.integers(0, 5, shape, dtype=np.uint8)).save(root / "labels" / f"{index}.png")
        names.append(f"{index}.png")
    return names


def write(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document))


def reference(path: Path) -> float:
    start = time.perf_counter()
    document = json.loads(path.read_text())
    root = str(path.parent)
    for item in document["training"]:
        os.stat(os.path.join(root, item["image"]))
    return time.perf_counter() - start


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--per-file-entries", type=int, default=20_000, help="set size for the per-file costs")
    parser.add_argument("--label-maps", type=int, default=1_000, help="segmentation entries for the pixel check")
    args = parser.parse_args()
    setup_logging(logging.WARNING)
    n = args.entries
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = make_files(root, args.files)
        images = [{"image": f"images/{names[i % len(names)]}", "patient": f"p{i % 1000}"} for i in range(n)]
        pretrain = root / "pretrain.json"
        write(pretrain, {"training": images})
        classes = ["a", "b", "c", "d", "e", "f"]
        labelled = [{**item, "label": i % 6} for i, item in enumerate(images)]
        write(root / "classification.json", {"classes": classes, "training": labelled})
        del images, labelled
        print(f"{n:,} entries over {args.files} PNGs (240 x 320); {os.cpu_count()} CPUs")

        ref = reference(pretrain)
        print(f"reference json.load + os.stat loop : {ref:7.2f} s  {n / ref:12,.0f} entries/s")
        default = timed(check_datalist, pretrain, ["training"], "images")
        print(
            f"check, default (stat all, headers of 100k): {default:7.2f} s  {n / default:12,.0f} entries/s  "
            f"= {ref / default:.2f} x reference"
        )
        keys = timed(check_datalist, root / "classification.json", ["training"], "classification", decode="none")
        print(f"check, keys and labels only (none)  : {keys:7.2f} s  {n / keys:12,.0f} entries/s")

        m = min(args.per_file_entries, n)
        small = root / "small.json"
        write(small, {"training": [{"image": f"images/{names[i % len(names)]}"} for i in range(m)]})
        header_all = timed(check_datalist, small, ["training"], "images", header_limit=None)
        stat_only = timed(check_datalist, small, ["training"], "images", decode="exists")
        per_header = (header_all - stat_only) / m
        print(
            f"header read, every file           : {per_header * 1e6:7.1f} us a file beyond stat "
            f"-> {per_header * n:6.0f} s extra at {n:,} entries"
        )
        k = min(args.label_maps, n)
        seg = root / "segmentation.json"
        entries = [
            {"image": f"images/{names[i % len(names)]}", "label": f"labels/{names[i % len(names)]}"} for i in range(k)
        ]
        write(seg, {"labels": {str(c): c for c in range(5)}, "training": entries})
        seg_time = timed(check_datalist, seg, ["training"], "segmentation", label_value_limit=None)
        print(
            f"segmentation, all label values    : {seg_time / k * 1e3:7.2f} ms an entry "
            f"({k:,} entries in {seg_time:.1f} s; default limit 5,000 label maps a section)"
        )


if __name__ == "__main__":
    main()
