"""SequenceOfUltrasoundRegions: pick the 2D tissue crop, validate it, derive spacing.

Reference ``dicom_deidentification.md`` §3.2:

* RegionLocationMinX0/MinY0/MaxX1/MaxY1 are **inclusive** pixel bounds.
* PhysicalDeltaX/Y are in the unit of PhysicalUnitsX/YDirection; code 3 is
  **centimetres**, so millimetres per pixel = 10 * delta.  Spacing is only used
  when both units are cm and delta_x ~ delta_y.
* Regions copied from a bigger original (``examples_palette``: Rows = 350 with
  regions reaching y = 576; ``examples_ybr_color``: 320x240 with a 640x480
  region) are stale.  A region may overshoot the image by at most the
  tolerance (1 px, e.g. MaxX1 == Columns) and is then clamped; anything more is
  stale and never used for cropping.
* When cropping, region locations shift with the crop and ReferencePixelX0/Y0
  stay (they are relative to the region); regions outside the crop are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from .config import BannerPolicy

__all__ = ["Region", "CropBox", "CropDecision", "parse_regions", "decide_crop", "clean_regions"]

SPATIAL_FORMAT_2D = 1
DATA_TYPE_TISSUE = 1
DATA_TYPE_COLOR_FLOW = 2
UNITS_CM = 3
# Isotropy tolerance for using PhysicalDelta as a pixel spacing (relative difference).
_ISOTROPY_TOLERANCE = 0.02

_REGION_KEEP = (
    "RegionSpatialFormat",
    "RegionDataType",
    "RegionFlags",
    "PhysicalUnitsXDirection",
    "PhysicalUnitsYDirection",
    "ReferencePixelX0",
    "ReferencePixelY0",
    "ReferencePixelPhysicalValueX",
    "ReferencePixelPhysicalValueY",
    "PhysicalDeltaX",
    "PhysicalDeltaY",
    "TransducerFrequency",
    "PulseRepetitionFrequency",
    "DopplerCorrectionAngle",
    "SteeringAngle",
)


@dataclass(frozen=True)
class CropBox:
    """Inclusive pixel rectangle ``[x0, x1] x [y0, y1]``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def height(self) -> int:
        return self.y1 - self.y0 + 1

    def contains(self, other: "CropBox") -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and other.x1 <= self.x1 and other.y1 <= self.y1


@dataclass(frozen=True)
class Region:
    """One parsed item of SequenceOfUltrasoundRegions (geometry in source pixels)."""

    index: int
    spatial_format: int | None
    data_type: int | None
    box: CropBox | None
    units_x: int | None
    units_y: int | None
    delta_x: float | None
    delta_y: float | None

    @property
    def area(self) -> int:
        return self.box.width * self.box.height if self.box else 0

    def spacing_mm(self) -> tuple[float, float] | None:
        """(row, column) spacing in mm when both units are cm and the pixels are square."""
        if self.units_x != UNITS_CM or self.units_y != UNITS_CM:
            return None
        if not self.delta_x or not self.delta_y or self.delta_x <= 0 or self.delta_y <= 0:
            return None
        if abs(self.delta_x - self.delta_y) > _ISOTROPY_TOLERANCE * max(self.delta_x, self.delta_y):
            return None
        return (10.0 * self.delta_y, 10.0 * self.delta_x)


@dataclass(frozen=True)
class CropDecision:
    """How a frame is cleaned, or why it cannot be.

    ``method`` is ``region`` (crop to ``box``), ``mask-top`` (whole frame with the
    top ``mask_rows`` rows blacked out) or ``None`` with a quarantine ``reason``.
    ``spacing_mm`` is (row, column) in millimetres or None.
    """

    method: str | None
    box: CropBox | None = None
    mask_rows: int = 0
    spacing_mm: tuple[float, float] | None = None
    region_type: str = "none"
    reason: str | None = None
    region_index: int | None = None


def _int(item: Dataset, keyword: str) -> int | None:
    try:
        value = item.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _float(item: Dataset, keyword: str) -> float | None:
    try:
        value = item.get(keyword)
        if value is None or value == "":
            return None
        number = float(value)
        return number if number == number and abs(number) != float("inf") else None
    except (TypeError, ValueError, OverflowError):
        return None


def parse_regions(dataset: Dataset) -> list[Region]:
    """Parse SequenceOfUltrasoundRegions; malformed items become regions without a box."""
    regions = []
    sequence = dataset.get("SequenceOfUltrasoundRegions") or []
    for index, item in enumerate(sequence):
        corners = [_int(item, k) for k in ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")]
        box = CropBox(*corners) if all(c is not None for c in corners) else None
        regions.append(
            Region(
                index=index,
                spatial_format=_int(item, "RegionSpatialFormat"),
                data_type=_int(item, "RegionDataType"),
                box=box,
                units_x=_int(item, "PhysicalUnitsXDirection"),
                units_y=_int(item, "PhysicalUnitsYDirection"),
                delta_x=_float(item, "PhysicalDeltaX"),
                delta_y=_float(item, "PhysicalDeltaY"),
            )
        )
    return regions


def _validate(box: CropBox, rows: int, columns: int, tolerance: int) -> CropBox | None:
    """Clamp a box that overshoots the image by <= tolerance px; None if it is stale."""
    if box.x1 < box.x0 or box.y1 < box.y0:
        return None
    if box.x0 < -tolerance or box.y0 < -tolerance:
        return None
    if box.x1 > columns - 1 + tolerance or box.y1 > rows - 1 + tolerance:
        return None
    return CropBox(max(box.x0, 0), max(box.y0, 0), min(box.x1, columns - 1), min(box.y1, rows - 1))


def decide_crop(
    regions: Sequence[Region],
    rows: int,
    columns: int,
    policy: BannerPolicy,
    tolerance: int = 1,
    min_size: int = 32,
) -> CropDecision:
    """Choose the largest 2D tissue/colour-flow region, or fall back to the banner policy.

    Args:
        regions: from :func:`parse_regions`.
        rows, columns: the image size in pixels.
        policy: what to do without a usable region.
        tolerance: pixels a region may overshoot the image and still be clamped.
        min_size: smallest accepted crop width and height.
    """
    candidates = [
        r
        for r in regions
        if r.spatial_format == SPATIAL_FORMAT_2D and r.data_type in (DATA_TYPE_TISSUE, DATA_TYPE_COLOR_FLOW) and r.box
    ]
    reason = "no_tissue_region"
    if candidates:
        # Largest area first; ties go to the earlier item so the choice is stable.
        best = sorted(candidates, key=lambda r: (-r.area, r.index))[0]
        box = _validate(best.box, rows, columns, tolerance)
        if box is None:
            reason = "region_out_of_bounds"
        elif box.width < min_size or box.height < min_size:
            reason = "region_too_small"
        else:
            return CropDecision(
                method="region",
                box=box,
                spacing_mm=best.spacing_mm(),
                region_type="2d_tissue" if best.data_type == DATA_TYPE_TISSUE else "2d_color_flow",
                region_index=best.index,
            )
    if policy.kind == "mask-top":
        if policy.rows >= rows:
            return CropDecision(method=None, reason="mask_exceeds_image")
        # Stale or missing regions say nothing trustworthy about geometry.
        return CropDecision(method="mask-top", box=CropBox(0, 0, columns - 1, rows - 1), mask_rows=policy.rows, reason=reason)
    return CropDecision(method=None, reason=reason)


def clean_regions(dataset: Dataset, decision: CropDecision) -> DicomSequence | None:
    """Allowlisted region items re-expressed in the coordinates of the written frame.

    Only regions that lie wholly inside the crop survive; ReferencePixelX0/Y0 are
    relative to their region and so stay unchanged.  Returns None when nothing
    survives (including every mask-top frame: stale geometry is not carried on).
    """
    if decision.method != "region" or decision.box is None:
        return None
    crop = decision.box
    kept = []
    for index, item in enumerate(dataset.get("SequenceOfUltrasoundRegions") or []):
        corners = [_int(item, k) for k in ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")]
        if any(c is None for c in corners):
            continue
        box = CropBox(*corners)
        if index == decision.region_index:
            box = CropBox(max(box.x0, crop.x0), max(box.y0, crop.y0), min(box.x1, crop.x1), min(box.y1, crop.y1))
        if not crop.contains(box):
            continue
        clean = Dataset()
        for keyword in _REGION_KEEP:
            value = item.get(keyword)
            if value is not None and value != "":
                setattr(clean, keyword, value)
        clean.RegionLocationMinX0 = box.x0 - crop.x0
        clean.RegionLocationMinY0 = box.y0 - crop.y0
        clean.RegionLocationMaxX1 = box.x1 - crop.x0
        clean.RegionLocationMaxY1 = box.y1 - crop.y0
        kept.append(clean)
    return DicomSequence(kept) if kept else None

