"""Plain-language explanation of every ingest reason code, and what a user can do about it.

The audit page (:mod:`data_prep.ingest.report`) shows these next to the counts of ``quarantine.csv``.
The codes are the ones listed in ``data_prep/ingest/README.md`` ("Reason codes"); a test keeps the two
lists equal.  Each entry is ``(what happened, what to do)``.
"""

from __future__ import annotations

__all__ = ["REASONS", "explain"]

_DECODERS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (JPEG extended/lossless/LS, JPEG 2000)"

REASONS: dict[str, tuple[str, str]] = {
    # -- skipped: not an ultrasound image, nothing to convert -------------------------------------------------
    "not_dicom": ("The file is not a DICOM file (no DICM preamble and no readable header).", "Nothing to do."),
    "dicomdir": ("A DICOMDIR index file; it holds no images.", "Nothing to do."),
    "secondary_capture": (
        "A secondary capture (screenshot, worksheet, scanned page); these usually show patient text everywhere.",
        "Nothing to do; they are left out on purpose.",
    ),
    "structured_report": ("A DICOM structured report (measurements as text), not an image.", "Nothing to do."),
    "encapsulated_document": ("An encapsulated PDF or CDA document, not an image.", "Nothing to do."),
    "raw_data": ("Vendor raw data (not displayable pixels).", "Nothing to do."),
    "presentation_state": ("A presentation state (display settings), not an image.", "Nothing to do."),
    "us_volume": ("A 3D ultrasound volume; only 2D images and cines are converted.", "Nothing to do."),
    "derived_secondary": (
        "A DERIVED/SECONDARY or SAVE image (a re-export or annotated copy of another image).",
        "Nothing to do; the original acquisition is converted instead.",
    ),
    "not_ultrasound_image": ("A DICOM image of another modality or SOP class.", "Nothing to do."),
    "duplicate_instance": (
        "A second copy of an instance that was already converted with identical output.",
        "Nothing to do.",
    ),
    "symlink": ("A symbolic link; links are never followed.", "Copy the target into INPUT if it belongs there."),
    "not_regular_file": ("A device, socket or pipe, not a regular file.", "Nothing to do."),
    "empty_archive": ("A zip archive without members.", "Nothing to do."),
    # -- quarantined, file level -----------------------------------------------------------------------------
    "unreadable_file": ("The file could not be read (I/O error or permissions).", "Check permissions and rerun."),
    "unreadable_folder": ("A folder could not be listed.", "Check permissions on INPUT and rerun."),
    "unreadable_header": ("The DICOM header could not be parsed.", "Re-export the study from the PACS or device."),
    "malformed_header": (
        "The header parsed but holds values of the wrong type or length.",
        "Re-export the study; if many files share it, report the device model.",
    ),
    "missing_sop_class": ("The header has no SOP Class UID.", "Re-export the study."),
    "missing_uid": ("The header lacks a study, series or instance UID.", "Re-export the study."),
    "missing_transfer_syntax": ("The file meta has no transfer syntax.", "Re-export the study."),
    "unsupported_transfer_syntax": (
        "The pixel encoding (transfer syntax) is unknown to pydicom.",
        "Re-export uncompressed or as JPEG baseline from the PACS.",
    ),
    "decoder_unavailable": (
        "The pinned decoder for this compressed encoding is not installed.",
        f"Install it ({_DECODERS}) and rerun; finished inputs are kept.",
    ),
    "bad_geometry": ("Rows, Columns or NumberOfFrames are missing, zero or inconsistent.", "Re-export the study."),
    "bad_pixel_header": ("Bits allocated/stored or samples per pixel are inconsistent.", "Re-export the study."),
    "unsupported_photometric": ("A photometric interpretation that is not converted.", "Report the device model."),
    "unsupported_bit_depth": ("A bit depth that is not converted.", "Report the device model."),
    "bad_palette": ("The palette colour lookup table is missing or malformed.", "Re-export the study."),
    "pixel_budget": (
        "Rows x Columns exceeds --max-pixels; rejected before decoding.",
        "Raise --max-pixels if such large frames are expected.",
    ),
    "frame_budget": (
        "The file declares more frames than --max-frames; rejected before decoding.",
        "Raise --max-frames if such long cines are expected.",
    ),
    "no_pixel_data": ("The file has no pixel data element.", "Nothing to do."),
    "decode_error": ("The compressed pixel data could not be decoded (truncated or corrupt).", "Re-export the study."),
    "decode_shape_mismatch": (
        "The decoded pixels do not match the header's geometry.",
        "Re-export the study; report the device model if it repeats.",
    ),
    "no_tissue_region": (
        "No usable ultrasound region (SequenceOfUltrasoundRegions) tells where the image is, so the burned-in "
        "banner cannot be cropped away.",
        "Rerun with --banner-policy mask-top-N (N = banner height in rows, often 25-80) and --ocr-check.",
    ),
    "region_out_of_bounds": (
        "The ultrasound region lies outside the image by more than 1 pixel (a stale region from another layout).",
        "Rerun with --banner-policy mask-top-N and --ocr-check, or fix the export settings of the device.",
    ),
    "region_too_small": ("The ultrasound region is smaller than 32 pixels on a side.", "Nothing to do."),
    "mask_exceeds_image": (
        "The --banner-policy mask is as tall as the image, so nothing would remain.",
        "Use a smaller N in --banner-policy mask-top-N.",
    ),
    "deid_check_failed": (
        "The cleaned header still held an attribute of DICOM PS3.15 Table E.1-1; the file was held back.",
        "Report it: this is a de-identification bug, never a user error.",
    ),
    "conflicting_duplicate_instance": (
        "Two or more inputs carry the same SOP Instance UID with different pixels; none of them is kept.",
        "Find the right copy in the export (positions listed) and re-ingest it alone.",
    ),
    "bad_archive": ("A zip archive that cannot be opened.", "Re-create the archive."),
    "zip_unsafe_path": (
        "A zip member with an absolute path, '..' or a drive letter, or a link entry.",
        "Re-create the archive with relative member names.",
    ),
    "zip_encrypted": ("An encrypted zip member.", "Decrypt and re-create the archive."),
    "zip_duplicate_member": ("Two zip members with the same name.", "Re-create the archive."),
    "zip_member_too_large": ("A zip member above the size limit.", "Unpack it into INPUT instead."),
    "zip_bomb_suspect": ("A zip member with an implausible compression ratio.", "Check the archive's origin."),
    "nested_archive": ("A zip inside a zip; nested archives are not opened.", "Unpack the inner archive into INPUT."),
    "out_of_memory": ("Decoding ran out of memory.", "Lower --workers, or raise the machine's memory."),
    "malformed_nesting": ("Sequences nested too deeply to be parsed safely.", "Re-export the study."),
    "worker_crash": (
        "The file crashed a decoder process twice.",
        "Re-export the study; report the device model and transfer syntax.",
    ),
    "internal_error": ("An unexpected error; the file was held back (fail closed).", "Rerun with -v and report it."),
    # -- quarantined, frame level (--ocr-check) --------------------------------------------------------------
    "ocr_header_token": (
        "OCR read a word from the patient or institution header attributes in the written frame.",
        "Check the device's crop region; for mask-top devices raise N in --banner-policy mask-top-N.",
    ),
    "ocr_date_pattern": (
        "OCR read a date or time in the frame.",
        "Check the device's crop region or the mask height; dates in the tissue area are rare.",
    ),
    "ocr_digit_run": (
        "OCR read a run of 6 or more digits (an ID or a compact date).",
        "Check the device's crop region or the mask height.",
    ),
}


def explain(code: str) -> tuple[str, str]:
    """``(what happened, what to do)`` for a reason code; unknown codes get a generic line."""
    return REASONS.get(code, ("A reason code this report does not know.", "See data_prep/ingest/README.md."))
