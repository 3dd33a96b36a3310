"""Classification inference: PNG and DICOM inputs (one item per frame), their transforms, the CSV of probabilities."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from ultradino_monai.engines.classification.metrics import stack_outputs
from ultradino_monai.utils.errors import MissingInputError
from ultradino_monai.utils.files import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["inference_items", "decode_dicom_frame", "DecodeDicomFramed", "inference_transforms", "ProbabilityCSVWriter"]


_DICOM_SUFFIXES = (".dcm", ".dicom")
_PNG_SUFFIXES = (".png",)


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    with open(path, "rb") as stream:
        head = stream.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def inference_items(input_dir: str | os.PathLike, max_frames_per_file: int | None = None) -> list[dict[str, Any]]:
    """One item per PNG file and per frame of each DICOM file under ``input_dir`` (recursive, sorted).

    PNG items: ``{"image": path, "source": relative path, "frame": -1}``. DICOM items (``.dcm``,
    ``.dicom`` or extension-less files with the ``DICM`` preamble): ``{"image": path, "source":
    relative path, "frame": i}``, decoded lazily by :class:`DecodeDicomFramed`.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise MissingInputError(f"inference input folder not found: {root}")
    items: list[dict[str, Any]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if path.suffix.lower() in _PNG_SUFFIXES:
            items.append({"image": str(path), "source": relative, "frame": -1})
        elif _is_dicom(path):
            try:
                frames = _dicom_frame_count(path)
            except Exception as error:  # pydicom / PixelError: not an image this decoder supports
                logger.warning("skipping %s: not a decodable DICOM image (%s)", relative, error)
                continue
            count = frames if max_frames_per_file is None else min(frames, int(max_frames_per_file))
            items.extend({"image": str(path), "source": relative, "frame": i} for i in range(count))
        else:
            logger.debug("skipping %s (neither PNG nor DICOM)", relative)
    if not items:
        raise MissingInputError(f"no PNG or DICOM files under {root}")
    return items


def _dicom_frame_count(path: Path) -> int:
    from pydicom import dcmread

    from ultradino_monai.data.dicom import PixelSpec

    header = dcmread(path, stop_before_pixels=True)
    return PixelSpec.from_header(header).frames


def decode_dicom_frame(path: str | os.PathLike, frame: int) -> np.ndarray:
    """One frame of an ultrasound DICOM as uint8 ``[H, W]`` or ``[H, W, 3]``, cropped to the image region.

    Decoding (with the pinned decoder plugins), photometric conversion and the crop to the
    largest 2D tissue region of ``SequenceOfUltrasoundRegions`` are :mod:`ultradino_monai.data.dicom`'s,
    the code ingestion uses, so inference sees the pixels the ingested training frames were
    made of. A file without a usable region is classified on the whole frame (with a
    warning): inference writes no pixels, so the banner does not leave the machine.
    """
    from pydicom import dcmread

    from ultradino_monai.data.dicom import FrameDecoder, PixelSpec, apply_crop, decide_crop, parse_regions

    path = Path(path)
    with open(path, "rb") as stream:
        header = dcmread(stream, stop_before_pixels=True)
        spec = PixelSpec.from_header(header)
        if not 0 <= frame < spec.frames:
            raise IndexError(f"{path}: frame {frame} out of range (the file has {spec.frames})")
        decoder = FrameDecoder(stream, header, spec)
        _, pixels = next(iter(decoder.frames([frame])))
    decision = decide_crop(parse_regions(header), spec.rows, spec.columns)
    if decision.method == "region":
        return apply_crop(pixels, decision)
    logger.warning("%s: no usable ultrasound region (%s); classifying the whole frame", path.name, decision.reason)
    return pixels


class DecodeDicomFramed:
    """Replace ``item["image"]`` (a DICOM path) by its decoded, cropped frame ``item["frame"]``.

    Items with ``frame < 0`` (PNG files) pass through. Use before the shared preprocessing,
    whose loader accepts in-memory arrays.
    """

    def __call__(self, item: Mapping[str, Any]) -> dict[str, Any]:
        item = dict(item)
        if int(item.get("frame", -1)) >= 0:
            item["image"] = decode_dicom_frame(item["image"], int(item["frame"]))
        return item


def inference_transforms(sidecar: Mapping[str, Any]):
    """DICOM frame decoding (when the item is a DICOM frame) + the shared preprocessing of ``sidecar``'s model.

    ``sidecar``: a ``model.json`` document (:func:`read_model_sidecar`): its ``spatial_size``,
    ``normalization`` and the backbone's ``in_chans`` are the ones the model was trained with.
    """
    from monai.transforms import Compose

    from ultradino_monai.transforms.ultrasound import ultrasound_preprocessing

    chain = ultrasound_preprocessing(
        image_key="image",
        label_key=None,
        spatial_size=tuple(sidecar["spatial_size"]),
        normalization=sidecar["normalization"],
        in_chans=int(sidecar["backbone"]["in_chans"]),
        label_is_map=False,
    )
    return Compose([DecodeDicomFramed(), *chain.transforms])


class ProbabilityCSVWriter:
    """Evaluator handler: write one CSV row per input with the class probabilities.

    Columns: ``source, frame, predicted_class, p_<class>...`` (``frame`` empty for PNG files).
    Rows are collected at every iteration and the file is written atomically at the end.
    """

    def __init__(self, path: str | os.PathLike, classes: Sequence[str]) -> None:
        self.path = Path(path)
        self.classes = list(classes)
        self.rows: list[list[Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        logits = stack_outputs(engine.state.output["pred"]).detach().float()
        probabilities = torch.softmax(logits.reshape(logits.shape[0], -1), dim=-1).cpu().numpy()
        sources = list(batch["source"])
        frames = [int(f) for f in torch.as_tensor(batch["frame"]).reshape(-1)]
        for source, frame, row in zip(sources, frames, probabilities):
            self.rows.append(
                [source, "" if frame < 0 else frame, self.classes[int(row.argmax())]] + [f"{p:.6f}" for p in row]
            )

    def _write(self, engine: Engine) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["source", "frame", "predicted_class"] + [f"p_{name}" for name in self.classes])
        writer.writerows(self.rows)
        write_text_atomic(self.path, buffer.getvalue())
        logger.info("wrote %d prediction rows to %s", len(self.rows), self.path)
