"""The embedded demo dataset: ``python -m data_prep.demo OUT_DIR [--seed S]``.

Every bundle runs on this when no dataset is given. It writes, deterministically from
the seed (same seed -> byte-identical files):

* ``archive/``: a synthetic clinical export of US DICOM files with fake PHI
  (:mod:`data_prep.dicom_synth`), and ``archive_phi.json`` next to it (outside the
  archive) listing every planted PHI string, UID and date plus a file inventory;
* ``planes/``: the six Fetal Planes DB classes as PNGs with a classification datalist
  (top-level ``classes``; items ``{"image", "label": int, "patient"}``);
* ``fass/``: fetal abdomen images and FASS label maps (background, artery, liver,
  stomach, vein) with a segmentation datalist;
* ``jnu_ifm/``: intrapartum transperineal "videos" with JNU-IFM label maps
  (background, pubic symphysis, head) with a segmentation datalist;
* ``demo_complete.json``, written last: seed, version, scale and file count. A second
  call with the same seed, version and scale finds it and returns without regenerating.

All splits are patient-grouped and drawn from the seed. Images come from
:mod:`data_prep.phantom`.

The one way in for the bundles, the experiment runner and this command line is
:func:`ensure_demo` (and :func:`ensure_ingested_demo` for the pretraining data): it holds
an ``fcntl`` lock on ``OUT_DIR/.prepare.lock``, so concurrent runs never generate into the
same folder, and it uses the fixed seed 0 unless the command line asks for another.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_prep.dicom_synth import ArchiveConfig, write_archive
from data_prep.phantom import FASS_LABELS, INTRAPARTUM, JNU_LABELS, PLANE_CLASSES, render_plane, render_sequence
from ultradino_monai.data.datalist import read_datalist, write_datalist
from ultradino_monai.engines.config_values import require_dataset_dir
from ultradino_monai.utils.files import write_bytes_atomic, write_json_atomic, write_png_atomic
from ultradino_monai.utils.logs import setup_logging

logger = logging.getLogger(__name__)

#: Bump when the generator's output changes, so stale demo folders are regenerated.
DEMO_VERSION = 2
MARKER = "demo_complete.json"
#: What this generator owns inside OUT_DIR (nothing else is ever deleted).
OWNED = ("archive", "archive_phi.json", "planes", "fass", "jnu_ifm", MARKER)
SECTIONS = ("training", "validation", "test")


@dataclass(frozen=True)
class DemoScale:
    """How much to generate.

    Attributes:
        archive: size of the DICOM export.
        planes_per_class: images per Fetal Planes class.
        plane_shapes: (H, W) display sizes drawn per plane image (independently of the class).
        images_per_plane_patient: plane images per pseudo-patient (each a different class).
        fass_patients, fass_per_patient, fass_shape: FASS-like abdomen set.
        jnu_videos, jnu_frames, jnu_patients, jnu_shape: JNU-IFM-like intrapartum set.
        split: patient fractions of (training, validation, test).
    """

    archive: ArchiveConfig
    planes_per_class: int = 40
    plane_shapes: tuple[tuple[int, int], ...] = ((240, 320), (232, 344), (256, 352), (224, 300))
    images_per_plane_patient: int = 4
    fass_patients: int = 40
    fass_per_patient: int = 2
    fass_shape: tuple[int, int] = (240, 320)
    jnu_videos: int = 8
    jnu_frames: int = 10
    jnu_patients: int = 6
    jnu_shape: tuple[int, int] = (256, 320)
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)


SCALES: dict[str, DemoScale] = {
    "default": DemoScale(archive=ArchiveConfig()),
    # for tests: every file type and SOP class, default-size DICOM frames, a few of everything else
    "tiny": DemoScale(
        archive=ArchiveConfig(
            n_patients=2,
            studies_per_patient=(1, 1),
            stills_per_study=(2, 2),
            cines_per_study=(1, 1),
            cine_frames=(3, 3),
            worksheets=1,
        ),
        planes_per_class=4,
        plane_shapes=((120, 160), (128, 176)),
        images_per_plane_patient=4,
        fass_patients=6,
        fass_per_patient=2,
        fass_shape=(120, 160),
        jnu_videos=3,
        jnu_frames=3,
        jnu_patients=3,
        jnu_shape=(128, 160),
    ),
    # for experiments/gpu.yaml: about 7x the pretraining frames of the default archive (20 patients, the
    # generator's maximum), 2.5x the FASS patients and twice the JNU patients, so that the few-shot test
    # sets hold more than a handful of patients; the planes (the kNN monitor) as in the default
    "large": DemoScale(
        archive=ArchiveConfig(
            n_patients=20,
            studies_per_patient=(2, 3),
            stills_per_study=(8, 12),
            cines_per_study=(1, 2),
            cine_frames=(16, 24),
        ),
        fass_patients=100,
        jnu_videos=16,
        jnu_patients=12,
    ),
}


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """Independent generator per (seed, stream, item): items do not depend on what came before."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


# zlib level 1 for the demo PNGs: about as small as the default on speckle images, and several times faster.
PNG_COMPRESS_LEVEL = 1


def split_patients(
    patients: Sequence[str], rng: np.random.Generator, fractions=(0.6, 0.2, 0.2), strata: dict[str, int] | None = None
) -> dict[str, str]:
    """Assign each patient to training/validation/test (patient-grouped, seeded).

    ``strata`` (patient -> stratum) spreads every stratum over all sections, so e.g. every
    class reaches every section. With 3 or more patients no section is left empty.
    """
    patients = list(dict.fromkeys(patients))
    if not patients:
        raise ValueError("no patients to split")
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    groups: dict[int, list[str]] = {}
    for patient in patients:
        groups.setdefault((strata or {}).get(patient, 0), []).append(patient)
    shuffled = {k: [members[i] for i in rng.permutation(len(members))] for k, members in sorted(groups.items())}
    # round-robin over strata, so the first patients taken for validation and test mix them
    order: list[str] = []
    depth = max(len(m) for m in shuffled.values())
    for i in range(depth):
        order += [members[i] for members in shuffled.values() if i < len(members)]
    n = len(order)
    n_val, n_test = int(round(fractions[1] * n)), int(round(fractions[2] * n))
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    assignment: dict[str, str] = {}
    for k, patient in enumerate(order):
        assignment[patient] = SECTIONS[1] if k < n_val else SECTIONS[2] if k < n_val + n_test else SECTIONS[0]
    return assignment


def _sections(items: list[dict], assignment: dict[str, str]) -> dict[str, list[dict]]:
    sections: dict[str, list[dict]] = {name: [] for name in SECTIONS}
    for item in items:
        sections[assignment[item["patient"]]].append(item)
    return sections


def _owned_files(out_dir: Path) -> list[Path]:
    files = []
    for name in OWNED:
        if name == MARKER:
            continue
        path = out_dir / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file()]
    return sorted(files)


# --------------------------------------------------------------------------------------
# the four parts
# --------------------------------------------------------------------------------------


def generate_planes(out_dir: Path, seed: int, scale: DemoScale) -> dict:
    """Fetal Planes DB-like classification set: ``planes/images/*.png`` + ``planes/datalist.json``."""
    root = out_dir / "planes"
    n_classes = len(PLANE_CLASSES)
    per_patient = scale.images_per_plane_patient
    if not 1 <= per_patient <= n_classes:
        raise ValueError(f"images_per_plane_patient must be in 1..{n_classes}")
    n_images = scale.planes_per_class * n_classes
    n_patients = -(-n_images // per_patient)
    order = _rng(seed, 10).permutation(n_patients)
    items, strata = [], {}
    count = 0
    for slot in range(n_patients):
        patient = f"FP{int(order[slot]) + 1:04d}"
        strata[patient] = slot % 3
        for j in range(per_patient):
            if count >= n_images:
                break
            # consecutive patients cycle through class windows, so each patient has distinct
            # classes and every class gets the same number of images
            label = (slot * per_patient + j) % n_classes
            rng = _rng(seed, 11, count)
            shape = scale.plane_shapes[int(rng.integers(0, len(scale.plane_shapes)))]
            image = render_plane(PLANE_CLASSES[label], rng, shape, with_label=False).image
            name = f"{patient}_img{j + 1:02d}.png"
            write_png_atomic(root / "images" / name, image, compress_level=PNG_COMPRESS_LEVEL)
            items.append({"image": f"images/{name}", "label": int(label), "patient": patient})
            count += 1
    assignment = split_patients(list(strata), _rng(seed, 12), scale.split, strata)
    sections = _sections(items, assignment)
    write_datalist(root / "datalist.json", sections, classes=list(PLANE_CLASSES))
    counts = np.bincount([it["label"] for it in items], minlength=n_classes).tolist()
    return {
        "images": len(items),
        "patients": len(strata),
        "per_class": counts,
        "sections": {k: len(v) for k, v in sections.items()},
    }


def generate_fass(out_dir: Path, seed: int, scale: DemoScale) -> dict:
    """FASS-like abdominal segmentation set (labels 0 background, 1 artery, 2 liver, 3 stomach, 4 vein)."""
    root = out_dir / "fass"
    items = []
    for p in range(scale.fass_patients):
        patient = f"P{p + 1:03d}"
        frames = render_sequence(
            "Fetal abdomen",
            _rng(seed, 20, p),
            scale.fass_per_patient,
            scale.fass_shape,
            with_label=True,
            max_rock_lines=10,
        )
        for j, frame in enumerate(frames):
            name = f"{patient}_{j + 1:02d}.png"
            write_png_atomic(root / "images" / name, frame.image, compress_level=PNG_COMPRESS_LEVEL)
            write_png_atomic(root / "labels" / name, frame.label, compress_level=PNG_COMPRESS_LEVEL)
            items.append({"image": f"images/{name}", "label": f"labels/{name}", "patient": patient})
    assignment = split_patients([it["patient"] for it in items], _rng(seed, 21), scale.split)
    sections = _sections(items, assignment)
    write_datalist(root / "datalist.json", sections, labels=dict(FASS_LABELS))
    return {"images": len(items), "patients": scale.fass_patients, "sections": {k: len(v) for k, v in sections.items()}}


def generate_jnu(out_dir: Path, seed: int, scale: DemoScale) -> dict:
    """JNU-IFM-like intrapartum set: videos named by timestamp, several videos per patient for some."""
    root = out_dir / "jnu_ifm"
    rng = _rng(seed, 30)
    n_patients = min(scale.jnu_patients, scale.jnu_videos)
    # every patient has a video; the remaining videos go to random patients (78 videos / 51 patients)
    owners = list(range(n_patients)) + [int(v) for v in rng.integers(0, n_patients, scale.jnu_videos - n_patients)]
    base_day = np.datetime64("2019-09-02T08:00:00") + np.timedelta64(int(rng.integers(0, 200)), "D")
    items, videos = [], []
    for v, owner in enumerate(owners):
        patient = f"JNU{owner + 1:03d}"
        # a patient's videos share a day; timestamps tell videos apart as in the real release
        stamp = base_day + np.timedelta64(int(owner) * 3, "D") + np.timedelta64(int(rng.integers(0, 8 * 3600)), "s")
        video = str(stamp).replace("-", "").replace(":", "")
        while video in videos:
            stamp += np.timedelta64(61, "s")
            video = str(stamp).replace("-", "").replace(":", "")
        videos.append(video)
        frames = render_sequence(INTRAPARTUM, _rng(seed, 31, v), scale.jnu_frames, scale.jnu_shape, with_label=True)
        for k, frame in enumerate(frames):
            name = f"{video}_{k + 1:04d}.png"
            write_png_atomic(root / "images" / name, frame.image, compress_level=PNG_COMPRESS_LEVEL)
            write_png_atomic(root / "labels" / name, frame.label, compress_level=PNG_COMPRESS_LEVEL)
            items.append({"image": f"images/{name}", "label": f"labels/{name}", "patient": patient, "video": video})
    assignment = split_patients([it["patient"] for it in items], _rng(seed, 32), scale.split)
    sections = _sections(items, assignment)
    write_datalist(root / "datalist.json", sections, labels=dict(JNU_LABELS))
    return {
        "images": len(items),
        "videos": len(videos),
        "patients": n_patients,
        "sections": {k: len(v) for k, v in sections.items()},
    }


def generate_archive(out_dir: Path, seed: int, scale: DemoScale) -> dict:
    """DICOM export under ``archive/`` plus the PHI truth list ``archive_phi.json`` beside it."""
    record = write_archive(out_dir / "archive", seed, scale.archive, relative_to=out_dir)
    document = {
        "description": "Every PHI value planted in the synthetic archive (names, IDs, dates, times, UIDs, "
        "institutions, addresses, devices), per-file inventory with burned-in banner text. "
        "All values are fake. Paths are relative to this file.",
        "version": DEMO_VERSION,
        **record,
    }
    write_json_atomic(out_dir / "archive_phi.json", document)
    dicoms = [f for f in record["files"] if f["expected"] == "ingest"]
    return {
        "patients": len(record["patients"]),
        "studies": sum(len(p["studies"]) for p in record["patients"]),
        "files": len(record["files"]),
        "us_files": len(dicoms),
        "frames": record["frames"],
        "multi_frame_files": sum(f["frames"] > 1 for f in dicoms),
        "photometric": {
            pi: sum(f["photometric"] == pi for f in dicoms) for pi in ("MONOCHROME2", "RGB", "YBR_FULL_422")
        },
        "frames_per_plane": {c: sum(f["planes"].count(c) for f in dicoms) for c in PLANE_CLASSES},
    }


# --------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------


def _read_marker(out_dir: Path) -> dict | None:
    path = out_dir / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(out_dir: str | os.PathLike, seed: int, scale: str = "default") -> bool:
    """True if ``out_dir`` holds a complete demo of this seed, scale and generator version."""
    out_dir = Path(out_dir)
    marker = _read_marker(out_dir)
    if not (
        marker is not None
        and marker.get("seed") == seed
        and marker.get("version") == DEMO_VERSION
        and marker.get("scale") == scale
        and isinstance(marker.get("files"), list)
    ):
        return False
    # files a user added (split files, notes) do not make the demo incomplete; missing ones do
    return all((out_dir / relative).is_file() for relative in marker["files"])


def generate_demo(out_dir: str | os.PathLike, seed: int = 0, scale: str = "default", force: bool = False) -> dict:
    """Generate the demo dataset into ``out_dir`` (idempotent).

    Args:
        out_dir: target folder (created). Only the paths in :data:`OWNED` are ever written or removed.
        seed: all content and every split derives from it.
        scale: ``"default"`` (the embedded demo), ``"tiny"`` (tests) or ``"large"`` (``experiments/gpu.yaml``).
        force: regenerate even if a complete demo of this seed is present.

    Returns:
        Summary dict: seed, version, scale, file_count, per-part counts, relative paths of the
        datalists, ``regenerated`` (False when an existing complete demo was reused) and ``out_dir``.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"demo output {out_dir} exists and is not a folder")
    if not force and is_complete(out_dir, seed, scale):
        marker = _read_marker(out_dir)
        logger.info("demo data already complete in %s (seed %d, %d files)", out_dir, seed, marker["file_count"])
        return {**marker["summary"], "regenerated": False, "out_dir": str(out_dir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = [name for name in OWNED if (out_dir / name).exists()]
    if stale:
        logger.warning("removing incomplete or different demo output in %s: %s", out_dir, stale)
        for name in stale:
            path = out_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    config = SCALES[scale]
    started = time.perf_counter()
    summary: dict[str, Any] = {"seed": seed, "version": DEMO_VERSION, "scale": scale}
    summary["archive"] = generate_archive(out_dir, seed, config)
    logger.info("demo archive: %s", summary["archive"])
    summary["planes"] = generate_planes(out_dir, seed, config)
    summary["fass"] = generate_fass(out_dir, seed, config)
    summary["jnu_ifm"] = generate_jnu(out_dir, seed, config)
    summary["paths"] = {
        "archive": "archive",
        "archive_phi": "archive_phi.json",
        "planes_datalist": "planes/datalist.json",
        "fass_datalist": "fass/datalist.json",
        "jnu_ifm_datalist": "jnu_ifm/datalist.json",
    }
    files = [path.relative_to(out_dir).as_posix() for path in _owned_files(out_dir)]
    summary["file_count"] = len(files)
    # the marker goes last: its presence means everything it lists is on disk
    write_json_atomic(
        out_dir / MARKER,
        {
            "seed": seed,
            "version": DEMO_VERSION,
            "scale": scale,
            "file_count": len(files),
            "files": files,
            "summary": summary,
        },
    )
    logger.info(
        "demo data written to %s in %.1f s (%d files)", out_dir, time.perf_counter() - started, summary["file_count"]
    )
    return {**summary, "regenerated": True, "out_dir": str(out_dir)}


DEMO_SEED = 0
#: Fixed key of the demo ingestion, written next to the synthetic archive (never for patient data).
DEMO_SECRET = "ultradino-demo-key: synthetic data only, never use for patient data\n"
LOCK_FILE = ".prepare.lock"
#: The demo parts a bundle's ``dataset_dir`` defaults to (``ingested`` is made by :func:`ensure_ingested_demo`).
DEMO_PARTS = ("planes", "fass", "jnu_ifm")


@contextmanager
def demo_lock(demo_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive ``fcntl`` lock on ``demo_dir/.prepare.lock`` (``demo_dir`` is created).

    Runs started side by side (a sweep, torchrun ranks, the experiment runner's cells) share
    one demo folder: one prepares it, the others wait and then find the work done. The lock
    is not re-entrant: do not call another locking function of this module inside it.
    """
    demo_dir = Path(demo_dir)
    if demo_dir.exists() and not demo_dir.is_dir():
        raise NotADirectoryError(f"demo output {demo_dir} exists and is not a folder")
    demo_dir.mkdir(parents=True, exist_ok=True)
    # append mode: taking the lock never rewrites the file
    with open(demo_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield demo_dir
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_demo(
    demo_dir: str | os.PathLike, scale: str = "default", *, seed: int = DEMO_SEED, force: bool = False
) -> dict:
    """The shared demo data in ``demo_dir``: generated under :func:`demo_lock`, skipped when complete.

    Every bundle and the experiment runner go through this (or :func:`ensure_ingested_demo`),
    always with the demo's own seed 0, so a training seed never regenerates the shared folder.
    ``seed`` and ``force`` are for the command line (``python -m data_prep.demo --seed S``).
    Returns :func:`generate_demo`'s summary.
    """
    with demo_lock(demo_dir):
        return generate_demo(demo_dir, seed=seed, scale=scale, force=force)


def ensure_ingested_demo(
    demo_dir: str | os.PathLike, dataset_dir: str | os.PathLike | None = None, scale: str = "default"
) -> Path:
    """The demo pretraining data: the demo (seed 0) and its archive ingested into ``dataset_dir``.

    ``dataset_dir`` defaults to ``demo_dir/ingested``. Under the same lock as :func:`ensure_demo`:
    generates the demo if it is incomplete, writes the fixed demo key next to the archive, and
    ingests ``demo_dir/archive`` with :mod:`data_prep.ingest` (resumable: a finished run only
    re-checks its inputs, a regenerated archive is re-ingested). Returns the datalist path.
    """
    from data_prep.ingest import load_secret_key, run_ingest

    demo_dir = Path(demo_dir)
    dataset_dir = demo_dir / "ingested" if dataset_dir is None else Path(dataset_dir)
    with demo_lock(demo_dir):
        generate_demo(demo_dir, seed=DEMO_SEED, scale=scale)
        secret = demo_dir / "demo_secret.key"
        if not secret.exists():
            secret.write_text(DEMO_SECRET)
        logger.info("ingesting the demo archive %s into %s", demo_dir / "archive", dataset_dir)
        run_ingest(demo_dir / "archive", dataset_dir, key=load_secret_key(secret), workers=1)
    return dataset_dir / "datalist.json"


#: Shard size of the demo's shards: 264 frames in 12 shards, enough for 2 ranks x a few workers.
DEMO_SHARD_MB = 2.0


def ensure_sharded_demo(
    demo_dir: str | os.PathLike, shards_dir: str | os.PathLike | None = None, scale: str = "default"
) -> Path:
    """The demo pretraining shards: :func:`ensure_ingested_demo`, then :mod:`data_prep.shards` into ``shards_dir``.

    ``shards_dir`` defaults to ``demo_dir/shards``. Under the demo lock; a finished shard folder
    of the same ingest output is kept, a stale one (a regenerated demo) is rewritten.
    """
    from data_prep.shards import write_shards

    demo_dir = Path(demo_dir)
    shards_dir = demo_dir / "shards" if shards_dir is None else Path(shards_dir)
    ingested = ensure_ingested_demo(demo_dir, scale=scale).parent
    with demo_lock(demo_dir):
        write_shards(ingested, shards_dir, shard_size_mb=DEMO_SHARD_MB, overwrite=True)
    return shards_dir


def prepare_demo_dataset(dataset_dir: str | os.PathLike, demo_dir: str | os.PathLike, scale: str = "default") -> str:
    """The bundle configs' hook on ``dataset_dir``: returns it, after making the demo when it is a demo default.

    * ``demo_dir/shards`` (the pretrain bundle's default): :func:`ensure_sharded_demo`, every run.
    * ``demo_dir/ingested`` (the pretrain bundle's datalist mode): :func:`ensure_ingested_demo`, every run.
    * ``demo_dir/planes``, ``/fass`` or ``/jnu_ifm`` without a ``datalist.json``: :func:`ensure_demo`.
    * anything else (a converted real dataset): nothing; the engines say what is missing.

    ``scale`` is the demo size (``"tiny"`` in tests); the configs keep the default.
    """
    # an empty --dataset_dir would become "." (the current folder) below: refuse it by name
    dataset_dir, demo_dir = Path(require_dataset_dir(dataset_dir)), Path(demo_dir)
    target = dataset_dir.resolve()
    if target == (demo_dir / "shards").resolve():
        ensure_sharded_demo(demo_dir, dataset_dir, scale=scale)
    elif target == (demo_dir / "ingested").resolve():
        ensure_ingested_demo(demo_dir, dataset_dir, scale=scale)
    elif any(target == (demo_dir / part).resolve() for part in DEMO_PARTS):
        if not (dataset_dir / "datalist.json").is_file():
            logger.info("generating the demo data in %s", demo_dir)
            ensure_demo(demo_dir, scale=scale)
    return str(dataset_dir)


def make_preview(out_dir: str | os.PathLike, png_path: str | os.PathLike) -> Path:
    """Render a 3 x 4 contact sheet of a generated demo: the six plane classes, FASS and JNU
    images with label overlays, and DICOM frames (decoded with pydicom) with their banners."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pydicom

    out_dir = Path(out_dir)
    planes = read_datalist(out_dir / "planes" / "datalist.json")
    all_items = [it for name in SECTIONS for it in planes[name]]
    tiles: list[tuple[str, np.ndarray]] = []
    for label, name in enumerate(PLANE_CLASSES):
        item = next(it for it in all_items if it["label"] == label)
        tiles.append((f"planes: {name}", np.asarray(Image.open(out_dir / "planes" / item["image"]))))

    def overlay(folder: str, colours: dict[int, tuple[int, int, int]], title: str):
        document = read_datalist(out_dir / folder / "datalist.json")
        item = [it for name in SECTIONS for it in document[name]][0]
        image = np.asarray(Image.open(out_dir / folder / item["image"])).astype(np.float32)
        label = np.asarray(Image.open(out_dir / folder / item["label"]))
        rgb = np.repeat(image[..., None], 3, axis=2)
        for value, colour in colours.items():
            mask = label == value
            rgb[mask] = 0.55 * rgb[mask] + 0.45 * np.asarray(colour, np.float32)
        tiles.append((f"{title} + labels", rgb.clip(0, 255).astype(np.uint8)))
        tiles.append((title, image.astype(np.uint8)))

    overlay("fass", {1: (255, 60, 60), 2: (60, 200, 60), 3: (70, 110, 255), 4: (255, 220, 40)}, "FASS abdomen")
    overlay("jnu_ifm", {1: (255, 60, 60), 2: (60, 200, 60)}, "JNU intrapartum")
    phi = json.loads((out_dir / "archive_phi.json").read_text())
    dicoms = [f for f in phi["files"] if f["expected"] == "ingest"]
    for wanted, title in (("YBR_FULL_422", "DICOM JPEG YBR_FULL_422"), ("MONOCHROME2", "DICOM cine MONOCHROME2")):
        pick = [f for f in dicoms if f["photometric"] == wanted]
        if wanted == "MONOCHROME2":
            pick = [f for f in pick if f["frames"] > 1] or pick
        if pick:
            ds = pydicom.dcmread(out_dir / pick[0]["path"])
            array = ds.pixel_array
            frame = array[0] if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 else array
            tiles.append((f"{title} ({ds.file_meta.TransferSyntaxUID.name})", frame))
    tiles = tiles[:12]
    fig, axes = plt.subplots(3, 4, figsize=(16, 9.6), dpi=90)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, image) in zip(axes.ravel(), tiles):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    fig.suptitle(
        "UltraDINO-MONAI synthetic demo data (data_prep.demo, all images simulated, all PHI fake)", fontsize=11
    )
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes_atomic(png_path, buffer.getvalue())
    return png_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write the demo data into")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default", help="dataset size (default: default)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a complete demo is present")
    parser.add_argument("--preview", metavar="PNG", help="also write a contact sheet of the generated data")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    started = time.perf_counter()
    summary = ensure_demo(args.out_dir, seed=args.seed, scale=args.scale, force=args.force)
    if args.preview:
        summary["preview"] = str(make_preview(args.out_dir, args.preview))
    summary["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
