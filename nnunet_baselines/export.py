"""Write a datalist and its split files as an nnU-Net v2 raw dataset (``nnUNet_raw/DatasetXXX_NAME``).

Pixels. Every image and label map goes through THE shared preprocessing
(:func:`ultradino_monai.transforms.ultrasound.ultrasound_preprocessing` with
``normalization="none"``, ``in_chans=1``, docs/design.md contract 2): load, dtype-range
scaling to [0, 1], grey, antialiased bilinear resize to the network grid
(nearest-exact for labels). nnU-Net therefore trains and predicts on the grid the
foundation-model bundles use, and its predictions are scored against the same
resized label maps (``docs/datasets.md`` §2.7 step 2: nnU-Net trains on the same
stored pixels the foundation models see).

Re-quantisation. The preprocessed image is float32 in [0, 1]; nnU-Net's
``NaturalImage2DIO`` reads PNG, so it is stored as ``round(x * (2**bits - 1))``:

* ``bit_depth=8`` (default, docs/datasets.md §2.3: single-channel 8-bit grey PNG):
  the stored value differs from the foundation model's pixel by at most
  0.5 / 255 ≈ 0.002 (exactly 0 when no resize happens, because 8-bit sources divided
  by 255 are already on that grid);
* ``bit_depth=16``: at most 0.5 / 65535 ≈ 7.6e-6 (``NaturalImage2DIO`` reads 16-bit
  PNG through ``skimage.io.imread`` as uint16).

nnU-Net then z-scores every image itself (channel name ``"US"``, docs/datasets.md §2.3), so the
intensity scale does not matter, only this rounding.

Layout written (docs/datasets.md §2.3):

* ``imagesTr/CASE_0000.png`` + ``labelsTr/CASE.png``: every case in the training or
  validation section of *any* given split file (the planner's fingerprint sees only
  these);
* ``imagesTs/CASE_0000.png`` + ``labelsTs/CASE.png``: every test case; a case that is a
  test case in one split file and a training / validation case in another is refused;
* ``dataset.json``: ``channel_names {"0": "US"}``, ``labels`` from the datalist (index 0
  named ``background`` as nnU-Net requires), ``numTraining``, ``file_ending ".png"``,
  ``overwrite_image_reader_writer "NaturalImage2DIO"`` (pinned: PNGs have been
  auto-detected as SimpleITKIO, docs/datasets.md §2.3 #2404);
* ``ultradino_export.json`` (:data:`MANIFEST_NAME`): provenance and the fold table, one
  fold per split file in the order given: ``{"fold", "split_file", "split_sha256",
  "kind", "dataset", "seed", "draw", "train", "val", "test"}`` with case ids. The
  ``plan`` step turns it into ``splits_final.json``.

Case ids are the datalist item's ``id`` when present (the FASS / JNU-IFM converters
write one), else the image file's stem; characters outside ``[A-Za-z0-9._-]`` become
``_``. Ids must be unique.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_baselines.environment import check_nnunet_version, configure_environment
from ultradino_monai.data.datalist import DatalistError, load_datalist, read_datalist
from ultradino_monai.utils.files import sha256_file, write_json_atomic, write_png_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_FORMAT",
    "CHANNEL_NAME",
    "ExportError",
    "case_id",
    "dataset_folder_name",
    "export_dataset",
    "load_manifest",
    "split_case_ids",
    "quantise_image",
]

MANIFEST_NAME = "ultradino_export.json"
MANIFEST_FORMAT = "nnunet_baselines.export/v1"
#: Any name other than CT / noNorm / rescale_to_0_1 / rgb_to_0_1 selects nnU-Net's per-image z-score
#: (docs/datasets.md §2.3).
CHANNEL_NAME = "US"
FILE_ENDING = ".png"
_TRAIN_SECTIONS = ("training", "validation")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_OWNED_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")


class ExportError(DatalistError):
    """The datalist / split files cannot be exported as asked."""


def case_id(item: Mapping[str, Any]) -> str:
    """nnU-Net case identifier of a datalist item: ``item["id"]`` or the image stem, made file-name safe."""
    raw = item.get("id")
    if not isinstance(raw, str) or not raw.strip():
        raw = Path(str(item["image"])).stem
    safe = _SAFE_ID.sub("_", raw.strip())
    if not safe or safe in (".", ".."):
        raise ExportError(f"cannot derive a case id from item {dict(item)}")
    return safe


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset{ID:03d}_{NAME}``; IDs 1..999 (001-010 are MSD's, docs/datasets.md §2.3), names ``[A-Za-z0-9_-]``."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ExportError(f"dataset id must be an integer in 1..999, got {dataset_id!r}")
    if not _DATASET_NAME.match(str(name)):
        raise ExportError(f"dataset name {name!r} must match [A-Za-z0-9][A-Za-z0-9_-]* (it becomes a folder name)")
    return f"Dataset{dataset_id:03d}_{name}"


def _image_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(v) for v in size)
    if len(size) != 2 or min(size) < 8:
        raise ExportError(f"size must be one int or (H, W), each >= 8; got {size!r}")
    return size  # type: ignore[return-value]


def quantise_image(image: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """``[H, W]`` float in [0, 1] -> uint8 / uint16 ``round(x * (2**bits - 1))`` (module docstring)."""
    if bit_depth not in (8, 16):
        raise ExportError(f"bit_depth must be 8 or 16, got {bit_depth}")
    top = (1 << bit_depth) - 1
    values = np.rint(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * top)
    return values.astype(np.uint8 if bit_depth == 8 else np.uint16)


def _resolved(path: str) -> str:
    return os.path.realpath(path)


def split_case_ids(
    split_file: str | os.PathLike, datalist_items: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, list[str]]:
    """Case ids of a split file's ``training`` / ``validation`` / ``test`` sections, in file order.

    Args:
        split_file: a split file from :mod:`ultradino_monai.data.splits` (or any datalist).
        datalist_items: optional ``{resolved image path: datalist item}``; when given, every
            split item must be one of them (and its id is taken from the datalist item).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.

    Raises:
        ExportError: an item is not in the datalist, an id repeats, or a case is in two sections.
    """
    result: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    document = read_datalist(split_file)
    for section, key in (("training", "train"), ("validation", "val"), ("test", "test")):
        items = load_datalist(split_file, section) if section in document else []
        ids = []
        for item in items:
            if datalist_items is not None:
                source = datalist_items.get(_resolved(item["image"]))
                if source is None:
                    raise ExportError(f"{split_file}: {section} image {item['image']} is not in the datalist")
                item = source
            identifier = case_id(item)
            if identifier in seen:
                raise ExportError(
                    f"{split_file}: case id {identifier!r} appears twice ({seen[identifier]} and {section}); "
                    "give the items unique 'id' values"
                )
            seen[identifier] = section
            ids.append(identifier)
        result[key] = ids
    return result


def _preprocess(items: Sequence[Mapping[str, Any]], size: tuple[int, int]):
    from ultradino_monai.transforms.ultrasound import ultrasound_preprocessing

    chain = ultrasound_preprocessing(
        image_key="image", label_key="label", spatial_size=size, normalization="none", in_chans=1
    )
    for item in items:
        out = chain({"image": item["image"], "label": item["label"]})
        image = np.asarray(out["image"].detach().cpu().numpy()[0], dtype=np.float32)
        label = np.asarray(out["label"].detach().cpu().numpy()[0])
        yield item, image, label


def _prepare_folder(dataset_dir: Path) -> None:
    """Create the dataset folder; clear the folders a previous export of this harness wrote."""
    if dataset_dir.exists():
        if not (dataset_dir / MANIFEST_NAME).is_file():
            if any(dataset_dir.iterdir()):
                raise ExportError(
                    f"{dataset_dir} exists and was not written by nnunet_baselines (no {MANIFEST_NAME}); "
                    "choose another dataset id / name or remove it yourself"
                )
        for name in _OWNED_FOLDERS:
            if (dataset_dir / name).is_dir():
                shutil.rmtree(dataset_dir / name)
        (dataset_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for name in _OWNED_FOLDERS:
        (dataset_dir / name).mkdir(parents=True, exist_ok=True)


def _check_id_free(raw_root: Path, dataset_id: int, folder: str) -> None:
    """nnU-Net resolves an id to a name by scanning its folders; two names for one id make that ambiguous."""
    prefix = f"Dataset{dataset_id:03d}_"
    for root_var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        root = Path(os.environ[root_var])
        if not root.is_dir():
            continue
        for other in root.iterdir():
            if other.name.startswith(prefix) and other.name != folder:
                raise ExportError(
                    f"dataset id {dataset_id} is already used by {other} ({root_var}); pick another --dataset-id"
                )


def export_dataset(
    datalist: str | os.PathLike,
    split_files: Sequence[str | os.PathLike],
    dataset_id: int,
    name: str,
    workdir: str | os.PathLike,
    size: int | Sequence[int] = 224,
    bit_depth: int = 8,
    dataset: str | None = None,
) -> Path:
    """Write ``nnUNet_raw/Dataset{ID}_{NAME}`` (module docstring) and return its manifest path.

    Args:
        datalist: the converter's / demo's ``datalist.json`` (segmentation: items with
            ``image``, ``label`` map and ``patient``; top-level ``labels``).
        split_files: one or more split files of that datalist; fold k = ``split_files[k]``.
        dataset_id, name: nnU-Net dataset id (e.g. 501 FASS, 502 JNU-IFM, docs/datasets.md §2.3) and name.
        workdir: sets ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` under it
            unless they are already set (:func:`configure_environment`).
        size: the network grid ``(H, W)`` (or one int); the segmentation bundle's ``image_size``.
        bit_depth: 8 or 16 (re-quantisation, module docstring).
        dataset: dataset name for result records when the split files name none
            (default: the datalist's ``dataset`` key, else its folder name, as the bundle does).

    Raises:
        ExportError / DatalistError: missing files, labels that are not 0..K-1, a case in
        test and train/val, an id collision, a label value outside the label set.
    """
    from ultradino_monai.engines.segmentation import labels_of
    from ultradino_monai.evaluation.provenance import split_info

    check_nnunet_version()
    if not split_files:
        raise ExportError("give at least one split file (one nnU-Net fold per split file)")
    configure_environment(workdir)
    size = _image_size(size)
    if bit_depth not in (8, 16):
        raise ExportError(f"bit_depth must be 8 or 16, got {bit_depth}")
    datalist = Path(datalist).resolve()
    document = read_datalist(datalist)
    labels = labels_of(datalist)
    if len(labels) < 2:
        raise ExportError(f"{datalist}: need background plus at least one class, got labels {labels}")
    if len(labels) > 255:
        raise ExportError(f"{datalist}: {len(labels)} classes do not fit a uint8 label PNG")
    by_path: dict[str, dict[str, Any]] = {}
    for section in ("training", "validation", "test"):
        if section not in document:
            continue
        for item in load_datalist(datalist, section):
            if not isinstance(item.get("label"), str):
                raise ExportError(f"{datalist}: {section} item {item['image']} has no label map path")
            by_path[_resolved(item["image"])] = item
    if not by_path:
        raise ExportError(f"{datalist}: no items")

    folds = []
    train_ids: dict[str, dict[str, Any]] = {}
    test_ids: dict[str, dict[str, Any]] = {}
    items_by_id: dict[str, dict[str, Any]] = {}
    for item in by_path.values():
        identifier = case_id(item)
        if identifier in items_by_id and items_by_id[identifier]["image"] != item["image"]:
            raise ExportError(
                f"{datalist}: case id {identifier!r} is shared by {items_by_id[identifier]['image']} "
                f"and {item['image']}; give the items unique 'id' values"
            )
        items_by_id[identifier] = item
    default_dataset = dataset or document.get("dataset") or datalist.parent.name
    for fold, split_file in enumerate(split_files):
        split_file = Path(split_file).resolve()
        ids = split_case_ids(split_file, by_path)
        if not ids["train"]:
            raise ExportError(f"{split_file}: empty training section")
        if not ids["val"]:
            raise ExportError(f"{split_file}: empty validation section (nnU-Net needs a validation set per fold)")
        split_labels = read_datalist(split_file).get("labels")
        if split_labels is not None and {str(k): int(v) for k, v in split_labels.items()} != labels:
            raise ExportError(f"{split_file}: labels {split_labels} differ from the datalist's {labels}")
        info = split_info(split_file)
        for identifier in ids["train"] + ids["val"]:
            train_ids[identifier] = items_by_id[identifier]
        for identifier in ids["test"]:
            test_ids[identifier] = items_by_id[identifier]
        folds.append(
            {
                "fold": fold,
                "split_file": str(split_file),
                "split_sha256": info["sha256"],
                "kind": info["kind"],
                "dataset": info["dataset"] or default_dataset,
                "seed": info["seed"],
                "draw": info["draw"],
                **ids,
            }
        )
    leaked = sorted(set(train_ids) & set(test_ids))
    if leaked:
        raise ExportError(
            f"{len(leaked)} case(s) are test cases in one split file and training/validation cases in another "
            f"(e.g. {leaked[:5]}); nnU-Net's planner would see test images. Export such split files separately."
        )

    folder = dataset_folder_name(dataset_id, name)
    raw_root = Path(os.environ["nnUNet_raw"])
    _check_id_free(raw_root, dataset_id, folder)
    dataset_dir = raw_root / folder
    _prepare_folder(dataset_dir)

    label_values = set(labels.values())
    written = {"train": 0, "test": 0}
    # fingerprint of every exported pixel, so `plan` / `train` notice a re-export with different content
    pixels = hashlib.sha256()
    for role, chosen, image_folder, label_folder in (
        ("train", train_ids, "imagesTr", "labelsTr"),
        ("test", test_ids, "imagesTs", "labelsTs"),
    ):
        for count, (item, image, label) in enumerate(_preprocess(list(chosen.values()), size), start=1):
            identifier = case_id(item)
            present = set(np.unique(label).tolist())
            unknown = present - label_values
            if unknown:
                raise ExportError(f"{item['label']}: label values {sorted(unknown)} not in the labels {labels}")
            stored_image, stored_label = quantise_image(image, bit_depth), label.astype(np.uint8)
            write_png_atomic(dataset_dir / image_folder / f"{identifier}_0000{FILE_ENDING}", stored_image)
            write_png_atomic(dataset_dir / label_folder / f"{identifier}{FILE_ENDING}", stored_label)
            for part in (role, identifier, stored_image.tobytes(), stored_label.tobytes()):
                pixels.update(part if isinstance(part, bytes) else part.encode())
            written[role] += 1
            if count % 200 == 0:
                logger.info("exported %d / %d %s cases", count, len(chosen), role)

    nnunet_labels = {("background" if index == 0 else label_name): index for label_name, index in labels.items()}
    write_json_atomic(
        dataset_dir / "dataset.json",
        {
            "channel_names": {"0": CHANNEL_NAME},
            "labels": nnunet_labels,
            "numTraining": len(train_ids),
            "file_ending": FILE_ENDING,
            "overwrite_image_reader_writer": "NaturalImage2DIO",
            "name": folder,
            "description": f"exported by nnunet_baselines from {datalist} through the shared ultrasound preprocessing "
            f"at {size[0]}x{size[1]}, {bit_depth}-bit PNG",
        },
    )
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset_id": dataset_id,
        "dataset_folder": folder,
        "datalist": str(datalist),
        "datalist_sha256": sha256_file(datalist),
        "image_size": list(size),
        "bit_depth": bit_depth,
        "pixels_sha256": pixels.hexdigest(),
        "preprocessing": {
            "function": "ultradino_monai.transforms.ultrasound.ultrasound_preprocessing",
            "normalization": "none",
            "in_chans": 1,
            "spatial_size": list(size),
            "quantisation": f"round(x * {(1 << bit_depth) - 1}); max abs error 0.5/{(1 << bit_depth) - 1} on [0, 1]",
        },
        "labels": labels,
        "nnunet_labels": nnunet_labels,
        "cases": {
            identifier: {
                "image": item["image"],
                "label": item["label"],
                "patient": item.get("patient"),
                "role": "test" if identifier in test_ids else "train",
            }
            for identifier, item in sorted({**train_ids, **test_ids}.items())
        },
        "folds": folds,
    }
    manifest_path = dataset_dir / MANIFEST_NAME
    write_json_atomic(manifest_path, manifest)
    logger.info(
        "exported %s: %d training/validation cases, %d test cases, %d fold(s), %dx%d, %d-bit",
        dataset_dir,
        written["train"],
        written["test"],
        len(folds),
        size[0],
        size[1],
        bit_depth,
    )
    return manifest_path


def load_manifest(workdir: str | os.PathLike, dataset_id: int) -> tuple[Path, dict[str, Any]]:
    """Find ``nnUNet_raw/Dataset{ID}_*/ultradino_export.json`` and return ``(dataset folder, manifest)``."""
    configure_environment(workdir)
    raw_root = Path(os.environ["nnUNet_raw"])
    matches = sorted(raw_root.glob(f"Dataset{int(dataset_id):03d}_*"))
    if not matches:
        raise ExportError(f"no exported dataset with id {dataset_id} under {raw_root}; run `export` first")
    if len(matches) > 1:
        raise ExportError(f"several datasets with id {dataset_id} under {raw_root}: {[m.name for m in matches]}")
    path = matches[0] / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(f"{matches[0]} was not written by nnunet_baselines export (no {MANIFEST_NAME})")
    manifest = read_datalist(path)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{path}: unknown manifest format {manifest.get('format')!r}")
    return matches[0], manifest
