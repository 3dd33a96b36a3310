"""A small synthetic "clinical export" of fetal ultrasound DICOM files with planted fake PHI.

This is the project's one generator of synthetic DICOM: the demo archive (:func:`write_archive`) and
the pieces the test fixtures reuse (:func:`region_item`, :func:`write_dataset`). The archive mimics what
a hospital data team gets from an obstetric ultrasound system:

* US Image Storage (1.2.840.10008.5.1.4.1.1.6.1) single frames and US Multi-frame Image Storage
  (1.2.840.10008.5.1.4.1.1.3.1) cine loops, plus an occasional Secondary Capture worksheet full of
  demographics that an ingestion SOP-class allowlist must drop;
* MONOCHROME2 and RGB uncompressed (Explicit VR Little Endian) and YBR_FULL_422 JPEG Baseline
  encapsulated pixel data, encoded with Pillow's libjpeg encoder;
* a SequenceOfUltrasoundRegions item around the fan (DICOM PS3.3 C.8.5.5): RegionSpatialFormat 1 (2D),
  RegionDataType 1 (tissue), PhysicalUnitsX/YDirection 3 (cm), PhysicalDeltaX/Y in cm, inclusive
  min/max bounds;
* burned-in annotation (DICOM PS3.15 E.3.1 notes that ultrasound routinely burns it in): a full-width top
  banner (24-80 px, light grey bitmap-font text on black) with name, ID, birth date and exam date/time, a
  depth ruler with 1 cm ticks at the right, a grey bar, an orientation marker and a parameter block
  (docs/phantom.md, "On-screen overlays"); BurnedInAnnotation is YES, absent or a wrong NO, as in real
  exports;
* fake PHI in the header, in a GE-like private block (name repeated, an XML-ish blob with the
  StudyInstanceUID and a date), in nested sequences (RequestAttributesSequence with a
  ReferencedStudySequence, OtherPatientIDsSequence), and in some folder names.

Everything is drawn from a seeded ``numpy`` generator and UIDs are derived from the seed
(:func:`pydicom.uid.generate_uid` with entropy sources), so the same seed writes byte-identical files.
The truth list of every planted value is returned by :func:`write_archive` for ``archive_phi.json``.
"""

from .archive import ArchiveConfig, ultrasound_region, write_archive
from .dataset import PIXEL_FORMATS, PRIVATE_CREATOR, PRIVATE_GROUP, build_dataset, region_item, write_dataset
from .overlays import OverlayStyle, burn_overlays, draw_text
from .patients import UID_PREFIX, FakePatient, FakeStudy, PhiRegistry, make_patients

__all__ = [
    "PIXEL_FORMATS",
    "PRIVATE_CREATOR",
    "PRIVATE_GROUP",
    "UID_PREFIX",
    "ArchiveConfig",
    "FakePatient",
    "FakeStudy",
    "OverlayStyle",
    "PhiRegistry",
    "build_dataset",
    "burn_overlays",
    "draw_text",
    "make_patients",
    "region_item",
    "ultrasound_region",
    "write_archive",
    "write_dataset",
]
