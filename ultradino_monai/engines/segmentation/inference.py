"""Segmentation inference: the images of an input folder, and the masks and overlays written for them."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from ultradino_monai.evaluation.overlay import colour_overlay
from ultradino_monai.utils.errors import MissingInputError
from ultradino_monai.utils.files import write_json_atomic, write_png_atomic

logger = logging.getLogger(__name__)

__all__ = ["image_items", "PredictionWriter"]


def image_items(
    input_dir: str | os.PathLike, suffixes: Sequence[str] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
) -> list[dict[str, str]]:
    """``[{"image": path}]`` for every image file under ``input_dir`` (recursive, sorted)."""
    root = Path(input_dir)
    if not root.is_dir():
        raise MissingInputError(f"input folder not found: {root}")
    suffixes = tuple(s.lower() for s in suffixes)
    items = [
        {"image": str(path)} for path in sorted(root.rglob("*")) if path.is_file() and path.suffix.lower() in suffixes
    ]
    if not items:
        raise MissingInputError(f"no images ({', '.join(suffixes)}) under {root}")
    return items


class PredictionWriter:
    """Writes the prediction of every image: an index-mask PNG and a colour overlay (inference).

    For each decollated output sample the logits ``[K, h, w]`` are resized bilinearly to the
    original image size (``meta["spatial_shape"]`` of the loaded image; mmseg resizes logits,
    not labels) and arg-maxed. Outputs, mirroring the input folder's structure:
    ``masks/<rel>.png`` (uint8 class indices, 0 = background), ``overlays/<rel>.png``
    (grey image with the classes in colour) and, at the end, ``predictions.json`` (labels,
    one record per image with the pixel count of each class).

    Args:
        output_dir: destination folder.
        labels: class name -> index (from the model's ``model.json``).
        input_dir: the root the relative output paths are taken from (default: file names only).
        alpha: overlay opacity.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        labels: Mapping[str, int],
        input_dir: str | os.PathLike | None = None,
        alpha: float = 0.5,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.labels = {str(k): int(v) for k, v in labels.items()}
        self.input_dir = Path(input_dir).resolve() if input_dir is not None else None
        self.alpha = float(alpha)
        self.records: list[dict[str, Any]] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_batch)
        engine.add_event_handler(Events.COMPLETED, self._write_index)

    def _relative(self, filename: str) -> Path:
        path = Path(filename).resolve()
        if self.input_dir is not None:
            try:
                return path.relative_to(self.input_dir).with_suffix(".png")
            except ValueError:
                pass
        return Path(path.name).with_suffix(".png")

    def _write_batch(self, engine) -> None:
        from PIL import Image

        outputs = engine.state.output
        if isinstance(outputs, Mapping):
            raise TypeError("PredictionWriter needs decollated outputs (SupervisedEvaluator(decollate=True))")
        for sample in outputs:
            image, logits = sample["image"], sample["pred"]
            meta = image.meta if isinstance(image, MetaTensor) else {}
            filename = str(meta.get("filename_or_obj", f"image_{len(self.records):05d}"))
            height, width = (int(v) for v in meta.get("spatial_shape", logits.shape[-2:])[:2])
            logits = torch.as_tensor(logits).float().unsqueeze(0)
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            mask = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
            relative = self._relative(filename)
            write_png_atomic(self.output_dir / "masks" / relative, mask)
            if os.path.isfile(filename):
                grey = np.asarray(Image.open(filename).convert("L"))
                if grey.shape == mask.shape:
                    write_png_atomic(self.output_dir / "overlays" / relative, colour_overlay(grey, mask, self.alpha))
            counts = np.bincount(mask.ravel(), minlength=len(self.labels))
            self.records.append(
                {
                    "image": filename,
                    "mask": str(Path("masks") / relative),
                    "overlay": str(Path("overlays") / relative),
                    "pixels": {name: int(counts[index]) for name, index in self.labels.items()},
                }
            )

    def _write_index(self, engine) -> None:
        write_json_atomic(self.output_dir / "predictions.json", {"labels": self.labels, "images": self.records})
        logger.info("wrote %d masks and overlays to %s", len(self.records), self.output_dir)
