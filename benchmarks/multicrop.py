"""Throughput of the DINOv2 / UltraDINO multi-crop augmentation: ours vs. torchvision, one worker.

Usage::

    python benchmarks/multicrop.py                      # 200 synthetic 640x480 grey images
    python benchmarks/multicrop.py --n 500 --global-size 224 --local-size 96 --n-local 8
    python benchmarks/multicrop.py --images-dir /path/to/pngs   # real frames (converted to grey)

What is timed, per image, with ``torch.set_num_threads(1)`` (a DataLoader worker runs one
thread) and decoding excluded for every pipeline (the images are decoded once up front):

* ``ours``: :class:`ultradino_monai.transforms.multicrop.DinoMultiCrop` on a uint8
  ``[1, H, W]`` tensor (what ``LoadUltrasoundImage`` yields), 2 global + N local views.
* ``torchvision-pil``: the UltraDINO ``DataAugmentationDINUS`` recipe rebuilt with
  ``torchvision.transforms.v2`` on a PIL ``"L"`` image, as UltraDINO runs it:
  RandomResizedCrop(bicubic) + RandomVerticalFlip, RandomApply(ColorJitter(0.4, 0.4, 0.2, 0), 0.8),
  RandomApply(GaussianBlur(9, (0.1, 2.0))) at the effective probabilities 0 / 0.9 / 0.5,
  RandomSolarize(128, 0.2) on the second global view, ToImage + ToDtype + Normalize(FUS).
* ``torchvision-tensor``: the same transforms on a uint8 ``[1, H, W]`` tensor.

Every pipeline gets the same warm-up images (ours caches its resize tap tables per crop
size, which is its steady state in training; the cache fills after a few hundred images),
then the timed rounds alternate between pipelines so background load hits them alike.
The script prints the best and median images/s of each and the speed-up of ours over the
faster torchvision variant. It also prints the CPU model so numbers from different
machines are not compared by mistake.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ultradino_monai.transforms.multicrop import BLUR_PROBABILITIES, DinoMultiCrop  # noqa: E402
from ultradino_monai.transforms.ultrasound import FUS_MEAN, FUS_STD  # noqa: E402


def synthetic_ultrasound(n: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    """uint8 ``[H, W]`` frames: Rayleigh speckle inside a fan-shaped sector, black outside."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    apex_r, apex_c = -0.1 * height, width / 2
    radius = np.hypot(rows - apex_r, cols - apex_c)
    angle = np.arctan2(cols - apex_c, rows - apex_r)
    sector = (np.abs(angle) < 0.6) & (radius < 1.05 * height)
    depth_gain = np.clip(1.2 - radius / (1.5 * height), 0.2, 1.0)
    frames = []
    for _ in range(n):
        speckle = rng.rayleigh(scale=0.25, size=(height, width))
        blob = np.exp(-(((rows - rng.uniform(0.3, 0.8) * height) / 60.0) ** 2 + ((cols - width / 2) / 90.0) ** 2))
        frame = np.clip((speckle * depth_gain + 0.6 * blob) * sector, 0.0, 1.0)
        frames.append((frame * 255).astype(np.uint8))
    return frames


def load_images(directory: Path, n: int) -> list[np.ndarray]:
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))[:n]
    if not paths:
        raise SystemExit(f"no images found in {directory}")
    return [np.asarray(Image.open(p).convert("L")) for p in paths]


def torchvision_reference(global_size: int, local_size: int, n_local: int, pil: bool):
    """The DataAugmentationDINUS recipe (docs/recipe.md §1.3 / §2.4) with torchvision.transforms.v2."""
    bicubic = v2.InterpolationMode.BICUBIC
    geometric_global = v2.Compose(
        [
            v2.RandomResizedCrop(global_size, scale=(0.32, 1.0), interpolation=bicubic, antialias=True),
            v2.RandomVerticalFlip(p=0.5),
        ]
    )
    geometric_local = v2.Compose(
        [
            v2.RandomResizedCrop(local_size, scale=(0.05, 0.32), interpolation=bicubic, antialias=True),
            v2.RandomVerticalFlip(p=0.5),
        ]
    )
    jitter = v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.0)], p=0.8)

    def blur(p: float):
        return v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=p)

    normalize = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([FUS_MEAN], [FUS_STD])])
    p_g0, p_g1, p_local = BLUR_PROBABILITIES["effective"]
    solarize = v2.RandomSolarize(threshold=128, p=0.2)  # uint8 scale for both PIL and uint8 tensors
    global_0 = v2.Compose([jitter, blur(p_g0), normalize])
    global_1 = v2.Compose([jitter, blur(p_g1), solarize, normalize])
    local = v2.Compose([jitter, blur(p_local), normalize])

    def apply(image):
        out = {"global_0": global_0(geometric_global(image)), "global_1": global_1(geometric_global(image))}
        for i in range(n_local):
            out[f"local_{i}"] = local(geometric_local(image))
        return out

    apply.pil = pil
    return apply


def time_pipeline(fn, inputs, n: int) -> tuple[float, float]:
    """(images/s by wall clock, images/s by process CPU time) over ``n`` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(inputs[i % len(inputs)])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, n / max(cpu, 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="images per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per pipeline (alternating)")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up images per pipeline")
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--n-local", type=int, default=8)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--distinct", type=int, default=32, help="distinct synthetic images to cycle through")
    parser.add_argument("--images-dir", type=Path, default=None, help="use these images instead (converted to grey)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    if args.images_dir is not None:
        frames = load_images(args.images_dir, args.distinct)
    else:
        frames = synthetic_ultrasound(args.distinct, args.height, args.width, args.seed)
    tensors = [torch.from_numpy(f)[None].contiguous() for f in frames]
    pils = [Image.fromarray(f, mode="L") for f in frames]

    ours = DinoMultiCrop(global_size=args.global_size, local_size=args.local_size, n_local_crops=args.n_local)
    ours.set_random_state(args.seed)
    pipelines = {
        "ours": (ours, tensors),
        "torchvision-pil": (torchvision_reference(args.global_size, args.local_size, args.n_local, True), pils),
        "torchvision-tensor": (torchvision_reference(args.global_size, args.local_size, args.n_local, False), tensors),
    }
    # Same output structure and shapes from every pipeline (a cheap guard against comparing different work).
    shapes = {name: {k: tuple(v.shape) for k, v in fn(inputs[0]).items()} for name, (fn, inputs) in pipelines.items()}
    if len({tuple(sorted(s.items())) for s in shapes.values()}) != 1:
        raise SystemExit(f"pipelines disagree on outputs: {shapes}")

    with torch.no_grad():
        for fn, inputs in pipelines.values():
            time_pipeline(fn, inputs, args.warmup)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in pipelines}
        for _ in range(args.rounds):
            for name, (fn, inputs) in pipelines.items():
                results[name].append(time_pipeline(fn, inputs, args.n))

    print(f"machine: {platform.processor() or platform.machine()} | torch {torch.__version__} | threads 1")
    print(
        f"images {frames[0].shape[1]}x{frames[0].shape[0]} grey | 2 x {args.global_size}px global + "
        f"{args.n_local} x {args.local_size}px local views | {args.rounds} rounds x {args.n} images"
    )
    print(f"{'pipeline':<20} {'best img/s':>11} {'median img/s':>13} {'best img/s (CPU time)':>22}")
    best = {}
    for name, runs in results.items():
        wall = [w for w, _ in runs]
        cpu = [c for _, c in runs]
        best[name] = max(wall)
        print(f"{name:<20} {max(wall):>11.1f} {statistics.median(wall):>13.1f} {max(cpu):>22.1f}")
    reference = max(best["torchvision-pil"], best["torchvision-tensor"])
    print(f"speed-up of ours over the faster torchvision pipeline: {best['ours'] / reference:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
