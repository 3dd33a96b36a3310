"""De-identified SequenceOfUltrasoundRegions for the written (cropped) frames.

The region geometry itself (parsing, the crop decision) is :mod:`ultradino_monai.data.dicom`'s,
shared with inference. Here, for ``--keep-dicom`` output: region locations shift with the crop
and ReferencePixelX0/Y0 stay (they are relative to the region); regions outside the crop are
dropped, and only allowlisted region attributes are copied.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from ultradino_monai.data.dicom import CropBox, CropDecision, region_box

__all__ = ["clean_regions"]

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
        box = region_box(item)
        if box is None:
            continue
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
