"""Leak scan: no PHI string, original UID or original date survives ingestion, anywhere.

Input: the five ultrasound files shipped in the pydicom wheel, every other local
pydicom test and charset file (no downloads), synthetic fixtures with PHI in
every PS3.15 Table E.1-1 attribute, nested sequences, private tags (XML blob with
UID and date, Kretz-like block), IconImageSequence, overlays, curves, file meta,
and in file and folder names (plain and zipped), and the demo archive when the
demo generator is present.  Ingestion runs with ``--keep-dicom`` through the
CLI; the scan then reads every output byte (file contents, relative paths,
manifest, report, quarantine list, datalist, state records, DICOM incl. file
meta) plus the CLI's stdout/stderr, in verbatim and normalised forms.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
from audit_page import Page, assert_page_matches_outputs, image_metadata
from phi_fixtures import PlantedPhi, SyntheticStudy, make_us_dataset
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from data_prep.dicom_synth import write_dataset
from data_prep.ingest import Pseudonymizer
from data_prep.ingest.annex_e import blocklist_violations
from data_prep.ingest.deid import PERMITTED_REPLACEMENTS, parse_date

KEY = b"leak-scan-test-key-0123456789abcdef"
US_EXAMPLES = [
    "examples_palette.dcm",
    "examples_ybr_color.dcm",
    "examples_rgb_color.dcm",
    "examples_jpeg2k.dcm",
    "ExplVR_BigEnd.dcm",
]
PHI_FOLDER = "ZZDOE^JANE 19610301 MRN4455"
PHI_FILE = "ZZDOE_JANE_MRN4455_US.dcm"
# Attributes whose original values the allowlist keeps on purpose (docs/deidentification.md §0)
# or that only name standard things (class UIDs, codes); never needles.
KEPT_KEYWORDS = {
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "TransducerData",
    "ImageType",
    "Modality",
    "SOPClassUID",
    "ReferencedSOPClassUID",
    "MediaStorageSOPClassUID",
    "TransferSyntaxUID",
    "SpecificCharacterSet",
    "PhotometricInterpretation",
    "CodeValue",
    "CodingSchemeDesignator",
    "CodeMeaning",
}
_ALNUM = re.compile(r"[^0-9A-Z]")


def _norm(text: str) -> str:
    return _ALNUM.sub("", text.upper())


class Needles:
    """Planted or harvested PHI, expanded into the forms the scan looks for."""

    def __init__(self) -> None:
        self.strings: set[str] = set()
        self.uids: set[str] = set()
        self.dates: set[str] = set()
        self.kept_values: set[str] = set()

    def add_planted(self, planted: PlantedPhi) -> None:
        self.strings |= planted.strings
        self.uids |= planted.uids
        self.dates |= planted.dates

    def harvest(self, path: str) -> None:
        """Collect PN/LO/SH/text/DA/DT/UI values and private payload tokens of one file."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    dataset = dcmread(path)
                except Exception:
                    dataset = dcmread(path, force=True)
                    if "SOPClassUID" not in dataset and "PatientName" not in dataset:
                        return  # not DICOM: a forced parse of text yields garbage
                elements = list(_walk(dataset)) + (
                    list(_walk(dataset.file_meta)) if hasattr(dataset, "file_meta") else []
                )
        except Exception:
            return
        for element in elements:
            try:
                value = element.value
            except Exception:
                continue
            if element.keyword in KEPT_KEYWORDS:
                for v in _as_list(value):
                    self.kept_values.add(_norm(str(v)))
                continue
            if element.tag == 0x7FE00010:
                continue
            if element.tag.is_private:
                text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                # Private payloads (e.g. the SonoSite XML, docs/deidentification.md §1.6) repeat IDs,
                # UIDs and dates in their own formats: keep every digit-bearing token.
                self.strings |= set(re.findall(r"\d{8,}", text))
                self.strings |= {w for w in re.findall(r"[A-Za-z0-9]{8,}", text) if sum(c.isdigit() for c in w) >= 4}
                if element.VR in ("PN", "LO", "SH") and text.strip():
                    self.strings.add(text.strip())
                continue
            vr = element.VR
            for v in _as_list(value):
                if v is None or isinstance(v, bytes):
                    continue
                text = str(v).strip()
                if vr == "UI":
                    if text.count(".") >= 2 and not text.startswith("1.2.840.10008."):
                        self.uids.add(text)
                elif vr in ("DA", "DT"):
                    date = parse_date(text)
                    if date:
                        self.dates.add(date.strftime("%Y%m%d"))
                elif vr in ("PN", "LO", "SH", "LT", "ST", "UT", "UC"):
                    self.strings.add(text)
                    if vr == "PN":
                        self.strings |= {p for p in re.split(r"[\^=]", text) if p}

    # -- forms ------------------------------------------------------------------------------
    def forms(self) -> dict[str, list[str]]:
        """The needle forms, by how they are matched.

        * ``long``: case-insensitive substrings (>= 8 characters);
        * ``words``: shorter strings, matched case-insensitively between
          non-alphanumeric boundaries (so 'ecor' does not hit 'records');
        * ``digits``: digit-only needles (IDs, UIDs without dots, dates in several
          orders) matched between non-digits after removing separators inside numbers;
        * ``normalised``: alphanumeric-only upper-case forms matched in the
          alphanumeric-only upper-case form of each output token.
        """
        long, words, digits, normalised = set(), set(), set(), set()
        for text in self.strings:
            text = text.strip()
            norm = _norm(text)
            if not norm or norm in self.kept_values:
                continue
            if text.isdigit():
                if len(text) >= 6:
                    digits.add(text)
                continue
            if len(text) >= 8:
                long.add(text.lower())
            elif len(text) >= 4:
                words.add(text.lower())
            if len(norm) >= 8 or (len(norm) >= 6 and not norm.isdigit()):
                normalised.add(norm)
        for uid in self.uids:
            long.add(uid.lower())
            digits.add(uid.replace(".", ""))
        for date in self.dates:
            y, m, d = date[:4], date[4:6], date[6:]
            for form in (
                f"{y}-{m}-{d}",
                f"{y}.{m}.{d}",
                f"{y}/{m}/{d}",
                f"{m}/{d}/{y}",
                f"{d}.{m}.{y}",
                f"{d}/{m}/{y}",
                f"{int(m)}/{int(d)}/{y}",
            ):
                long.add(form)
            digits |= {date, f"{d}{m}{y}", f"{m}{d}{y}"}
        return {
            key: sorted(value, key=lambda v: (-len(v), v))
            for key, value in {"long": long, "words": words, "digits": digits, "normalised": normalised}.items()
        }


def _walk(dataset: Dataset):
    for element in dataset:
        yield element
        if element.VR == "SQ":
            for item in element.value or []:
                yield from _walk(item)


def _as_list(value):
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _dicom_header_text(path: Path) -> str:
    dataset = dcmread(path)
    parts = []
    for element in list(_walk(dataset.file_meta)) + list(_walk(dataset)):
        if element.tag == 0x7FE00010 or element.VR == "SQ":
            continue
        value = element.value
        parts.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    return "\n".join(parts)


class _Corpus:
    """Many documents joined into one string, with a map back to their names."""

    def __init__(self, documents: list[tuple[str, str]]) -> None:
        self.names, self.starts, parts, offset = [], [], [], 0
        for name, text in documents:
            self.names.append(name)
            self.starts.append(offset)
            parts.append(text)
            offset += len(text) + 3
        self.text = "\n\x00\n".join(parts)

    def where(self, position: int) -> str:
        import bisect

        return self.names[bisect.bisect_right(self.starts, position) - 1]


def _html_documents(relative: str, text: str) -> tuple[list[tuple[str, str]], list[tuple[str, bytes]]]:
    """The audit page as a browser reads it: text nodes and comments, attribute names and values (data URI
    payloads decoded separately), style sheets minus the page's fixed CSS; and its images' metadata.
    Tag names are left out: they come from the code, and words like 'body' are also harvested needles."""
    from data_prep.ingest.report_html import PAGE_CSS

    page = Page(text)
    documents = [
        (f"{relative} text", "\n".join(page.texts)),
        (f"{relative} attributes", "\n".join(f"{name}={value}" for _, name, value in page.attributes)),
        (f"{relative} style", "\n".join(page.styles).replace(PAGE_CSS, "")),
    ]
    images = [(f"{relative} image {i}", image_metadata(mime, raw)) for i, (mime, raw) in enumerate(page.images)]
    return documents, images


def scan(output: Path, needles: Needles, extra_text: str = "") -> list[str]:
    """Every place an output byte reveals a needle (empty list means clean)."""
    forms = needles.forms()
    documents = [("<cli output>", extra_text)]
    raw_documents: list[tuple[str, bytes]] = []
    for path in sorted(output.rglob("*")):
        relative = path.relative_to(output).as_posix()
        documents.append((f"path {relative}", relative))
        if not path.is_file():
            continue
        raw = path.read_bytes()
        if path.suffix == ".png":
            raw_documents.append((relative, image_metadata("image/png", raw)))
        elif path.suffix == ".html":
            texts, images = _html_documents(relative, raw.decode("utf-8"))
            documents.extend(texts)
            raw_documents.extend(images)
        elif path.suffix == ".dcm":
            # Everything up to the pixel data element (pixels are the OCR check's job).
            end = raw.find(b"\xe0\x7f\x10\x00")
            raw_documents.append((relative, raw[: end if end > 0 else len(raw)].lower()))
            documents.append((relative, _dicom_header_text(path)))
        else:
            documents.append((relative, raw.decode("utf-8")))
    corpus = _Corpus(documents)
    lower = corpus.text.lower()
    hits: list[str] = []
    for needle in forms["long"]:
        start = lower.find(needle)
        if start >= 0:
            hits.append(f"{corpus.where(start)}: {needle!r}")
    if forms["words"]:
        pattern = re.compile("(?<![a-z0-9])(?:" + "|".join(map(re.escape, forms["words"])) + ")(?![a-z0-9])")
        hits.extend(f"{corpus.where(m.start())}: {m.group()!r}" for m in pattern.finditer(lower))
    if forms["digits"]:
        # Remove separators inside numbers (same length, so positions still map).
        joined = re.sub(r"(?<=\d)[.\-/](?=\d)", "\x01", corpus.text)
        digits_only = joined.replace("\x01", "")
        pattern = re.compile("(?<!\\d)(?:" + "|".join(forms["digits"]) + ")(?!\\d)")
        hits.extend(
            f"digits: {m.group()!r} near {digits_only[max(0, m.start() - 20) : m.end() + 20]!r}"
            for m in pattern.finditer(digits_only)
        )
    tokens = " ".join(_norm(token) for token in re.split(r"[\s,;\"'{}\[\]:=<>\x00]+", corpus.text))
    hits.extend(f"normalised {n!r}" for n in forms["normalised"] if n in tokens)
    # Raw bytes of PNG (verbatim) and DICOM (lower-cased) files, joined for one pass per needle.
    blob = b"\x00\xff\x00".join(raw for _, raw in raw_documents)
    for needle in forms["long"]:
        if needle.encode("utf-8") in blob:
            hits.extend(f"{rel}: raw {needle!r}" for rel, raw in raw_documents if needle.encode("utf-8") in raw)
    return hits


def _synthetic_inputs(root: Path, needles: Needles) -> dict[str, str]:
    """PHI-laden synthetic studies; returns original UIDs used for reference checks."""
    study_a = SyntheticStudy("QA", uid_index=11)
    study_b = SyntheticStudy("QB", uid_index=12, study_date="20220302", lmp="20211020")
    cine, planted = make_us_dataset(study_a, frames=4, doppler=True, rows=200, columns=256, region=(30, 40, 225, 189))
    needles.add_planted(planted)
    write_dataset(root / PHI_FOLDER / PHI_FILE, cine)
    still, planted = make_us_dataset(
        study_a, instance=2, photometric="MONOCHROME2", rows=200, columns=256, region=(30, 40, 225, 189)
    )
    # A derived image that references the cine: references must use the same UID map.
    reference = Dataset()
    reference.ReferencedSOPClassUID = cine.SOPClassUID
    reference.ReferencedSOPInstanceUID = cine.SOPInstanceUID
    still.SourceImageSequence = Sequence([reference])
    needles.add_planted(planted)
    write_dataset(root / PHI_FOLDER / "no_extension_ZZDOE", still)
    other, planted = make_us_dataset(study_b, rows=180, columns=240, region=(20, 36, 219, 171))
    needles.add_planted(planted)
    member = root / "tmp_member.dcm"
    write_dataset(member, other)
    with zipfile.ZipFile(root / "export_ZZROE_QB.zip", "w") as archive:
        archive.write(member, f"ZZROE^QB_{study_b.patient_id}/IMG0001")
        archive.writestr("../../escape_ZZROE.dcm", member.read_bytes())
    member.unlink()
    needles.strings |= {
        PHI_FOLDER,
        "ZZDOE",
        "MRN4455",
        "ZZDOE_JANE_MRN4455_US",
        "ZZROE",
        "escape_ZZROE",
        f"ZZROE^QB_{study_b.patient_id}",
    }
    return {"cine": cine.SOPInstanceUID, "still": still.SOPInstanceUID, "study_a": cine.StudyInstanceUID}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    source, output = root / "input", root / "output"
    needles = Needles()
    pydicom_root = Path(get_testdata_files()[0]).parent
    while pydicom_root.name != "test_files":
        pydicom_root = pydicom_root.parent
    for path in get_testdata_files():
        if not os.path.isfile(path):
            continue
        relative = Path(path).relative_to(pydicom_root)
        target = source / "pydicom" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        needles.harvest(path)
    for path in get_charset_files():
        target = source / "charsets" / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        needles.harvest(path)
    # The ultrasound examples also go into a PHI-named folder without extensions.
    for name in US_EXAMPLES:
        path = get_testdata_file(name, download=False)
        assert path is not None, f"{name} must ship inside the pydicom wheel"
        target = source / PHI_FOLDER / "us" / Path(name).stem
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    originals = _synthetic_inputs(source, needles)
    demo_phi = _demo_inputs(source / "demo", needles)
    key_file = root / "secret.key"
    key_file.write_bytes(KEY)
    command = [
        sys.executable,
        "-m",
        "data_prep.ingest",
        str(source),
        str(output),
        "--secret-file",
        str(key_file),
        "--keep-dicom",
        "--banner-policy",
        "mask-top-40",
        "--workers",
        "2",
        "-v",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return {
        "output": output,
        "needles": needles,
        "log": result.stdout + result.stderr,
        "originals": originals,
        "demo": demo_phi,
        "input": source,
    }


def _demo_inputs(folder: Path, needles: Needles) -> dict:
    """Add a small demo archive (data_prep.dicom_synth, tiny scale) and its PHI truth list."""
    from data_prep.demo import SCALES
    from data_prep.dicom_synth import write_archive

    record = write_archive(folder / "archive", 0, SCALES["tiny"].archive, relative_to=folder)
    needles.strings |= {str(v) for v in record["strings"]}
    needles.uids |= {str(v) for v in record["uids"]}
    for value in record["dates"]:
        date = parse_date(re.sub(r"^(\d\d)/(\d\d)/(\d{4})$", r"\3\1\2", str(value)))
        if date:
            needles.dates.add(date.strftime("%Y%m%d"))
    for entry in record["files"]:
        needles.strings |= {str(line) for line in entry.get("burned_in_text", [])}
    return record


def test_no_phi_uid_or_date_in_any_output_byte(ingested):
    assert len(ingested["needles"].uids) > 100 and len(ingested["needles"].dates) > 50
    hits = scan(ingested["output"], ingested["needles"], ingested["log"])
    assert hits == [], "\n".join(hits[:40])


def test_scan_detects_planted_leaks(ingested, tmp_path):
    """The scanner itself must catch verbatim, normalised and reformatted leaks."""
    needles = ingested["needles"]
    uid = sorted(needles.uids)[0]
    date = sorted(needles.dates)[0]
    name = "ZZDOE^JANEQXQA"
    for index, text in enumerate([uid, f"{date[:4]}-{date[4:6]}-{date[6:]}", name.replace("^", " "), name.lower()]):
        case = tmp_path / f"case{index}"
        case.mkdir()
        (case / "manifest.csv").write_text(f"image,x\na.png,{text}\n")
        assert scan(case, needles), text
    case = tmp_path / "pathcase" / "MRN4455"
    case.mkdir(parents=True)
    assert scan(tmp_path / "pathcase", needles)


def _jpeg_uri(comment: bytes | None = None) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    extra = {"comment": comment} if comment else {}
    Image.new("L", (8, 8), 90).save(buffer, format="JPEG", **extra)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_scan_reads_the_audit_page_like_a_browser(ingested, tmp_path):
    """Attribute values, entity-encoded text and embedded image metadata of qc/index.html are scanned."""
    import base64
    import io

    from PIL import Image, PngImagePlugin

    needles = ingested["needles"]
    clean = f'<html><body><img src="{_jpeg_uri()}" alt="frame"><p>P0123456789abcdef</p></body></html>'
    pages = {
        "attribute": clean.replace('alt="frame"', 'alt="ZZDOE^JANEQXQA"'),
        "entities": clean.replace("P0123456789abcdef", "&#90;ZDOE&#94;JANEQXQA"),
        "style": clean.replace("<body>", "<body><style>/* MRN4455 */</style>"),
    }
    for name, text in {"clean": clean, **pages}.items():
        (tmp_path / name / "qc").mkdir(parents=True)
        (tmp_path / name / "qc" / "index.html").write_text(text)
        assert bool(scan(tmp_path / name, needles)) == (name != "clean"), name
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "nothing to see")
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    for name, uri in (
        ("png_text", "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()),
        ("jpeg_comment", _jpeg_uri(b"ZZDOE")),
    ):
        (tmp_path / name / "qc").mkdir(parents=True)
        (tmp_path / name / "qc" / "index.html").write_text(clean.replace(_jpeg_uri(), uri))
        with pytest.raises(AssertionError, match="unexpected (PNG chunk|JPEG marker)"):
            scan(tmp_path / name, needles)


def test_audit_page_is_scanned_and_its_numbers_match(ingested):
    """The leak scan above covered a real page: thumbnails, every reason code of this export, and its numbers."""
    page = assert_page_matches_outputs(ingested["output"])
    assert len(page.images) >= 10
    assert {"skipped:dicomdir", "quarantined:zip_unsafe_path", "skipped:secondary_capture"} <= set(page.reasons)


def test_every_input_accounted_and_positions_only(ingested):
    import csv
    import json

    output = ingested["output"]
    report = json.loads((output / "report.json").read_text())
    files = report["files"]
    inputs = [p for p in ingested["input"].rglob("*") if p.is_file()]
    zip_members = sum(
        len([i for i in zipfile.ZipFile(p).infolist() if not i.is_dir()]) for p in inputs if p.suffix == ".zip"
    )
    assert files["found"] == len(inputs) - sum(p.suffix == ".zip" for p in inputs) + zip_members
    assert files["found"] == files["converted"] + files["quarantined"] + files["skipped"]
    rows = list(csv.DictReader((output / "quarantine.csv").open()))
    file_rows = [r for r in rows if r["frame"] == ""]
    assert len(file_rows) == files["quarantined"] + files["skipped"]
    assert all(r["position"].isdigit() and int(r["position"]) < files["found"] for r in rows)
    assert set(rows[0]) == {"position", "frame", "outcome", "reason"}
    reasons = {r["reason"] for r in file_rows}
    assert {
        "zip_unsafe_path",
        "dicomdir",
        "not_dicom",
        "secondary_capture",
        "structured_report",
        "not_ultrasound_image",
    } <= reasons
    assert report["reasons"]["skipped"]["dicomdir"] >= 1


def test_markers_and_blocklist_on_every_kept_dicom(ingested):
    output = ingested["output"]
    files = sorted((output / "dicom").rglob("*.dcm"))
    assert len(files) >= 8
    verified = 0
    for path in files:
        dataset = dcmread(path)
        assert blocklist_violations(dataset, PERMITTED_REPLACEMENTS) == []
        assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
        for uid in (dataset.SOPInstanceUID, dataset.StudyInstanceUID, dataset.SeriesInstanceUID):
            assert uid.startswith("2.25.") and uid.is_valid and len(uid) <= 64
        assert dataset.PatientIdentityRemoved == "YES"
        codes = {item.CodeValue for item in dataset.DeidentificationMethodCodeSequence}
        assert {"113100", "113107"} <= codes
        assert dataset.DeidentificationMethod
        assert dataset.LongitudinalTemporalInformationModified == "MODIFIED"
        assert "IconImageSequence" not in dataset and not any(e.tag.is_private for e in dataset)
        if dataset.BurnedInAnnotation == "NO":
            assert "113101" in codes
            verified += 1
        else:
            assert dataset.BurnedInAnnotation == "YES" and "113101" not in codes
    # Synthetic studies have valid regions: cropped, so their pixels count as cleaned.
    assert verified >= 3


def test_mask_policy_never_claims_clean_pixels_without_ocr(ingested):
    import csv

    rows = list(csv.DictReader((ingested["output"] / "manifest.csv").open()))
    for row in rows:
        if row["pixel_policy"] == "mask-top":
            assert row["pixels_verified"] == "0" and row["spacing_row_mm"] == ""
        else:
            assert row["pixel_policy"] == "region" and row["pixels_verified"] == "1"


def test_references_and_grouping_use_one_uid_map(ingested):
    output, originals = ingested["output"], ingested["originals"]
    pseudo = Pseudonymizer(KEY)
    by_uid = {dcmread(p).SOPInstanceUID: dcmread(p) for p in (output / "dicom").rglob("*.dcm")}
    cine = by_uid[pseudo.uid(originals["cine"])]
    still = by_uid[pseudo.uid(originals["still"])]
    assert still.SourceImageSequence[0].ReferencedSOPInstanceUID == cine.SOPInstanceUID
    assert still.StudyInstanceUID == cine.StudyInstanceUID == pseudo.uid(originals["study_a"])
    assert still.PatientID == cine.PatientID
    # examples_jpeg2k: its SourceImageSequence goes through the same keyed map.
    original = dcmread(get_testdata_file("examples_jpeg2k.dcm", download=False))
    jpeg2k = by_uid[pseudo.uid(original.SOPInstanceUID)]
    assert jpeg2k.SourceImageSequence[0].ReferencedSOPInstanceUID == pseudo.uid(
        original.SourceImageSequence[0].ReferencedSOPInstanceUID
    )
    assert jpeg2k.SourceImageSequence[0].ReferencedSOPClassUID == original.SourceImageSequence[0].ReferencedSOPClassUID
    assert "PurposeOfReferenceCodeSequence" not in jpeg2k.SourceImageSequence[0]


def test_stale_regions_never_used_and_spacing_is_ten_delta(ingested):
    import csv

    output = ingested["output"]
    pseudo = Pseudonymizer(KEY)
    rows = list(csv.DictReader((output / "manifest.csv").open()))
    for name in ("examples_palette.dcm", "examples_ybr_color.dcm"):
        instance = pseudo.instance(dcmread(get_testdata_file(name, download=False)).SOPInstanceUID)
        mine = [r for r in rows if r["instance"] == instance]
        # Converted only under mask-top (whole frame), never cropped to the stale region.
        assert mine and all(
            r["pixel_policy"] == "mask-top" and r["crop_x0"] == "0" and r["crop_y0"] == "0" for r in mine
        )
    synthetic = [r for r in rows if r["manufacturer"] == "Synthetic Medical"]
    assert synthetic and all(r["pixel_policy"] == "region" for r in synthetic)
    for row in synthetic:
        # make_us_dataset stores PhysicalDelta = 0.025 cm with unit code 3 (cm).
        assert float(row["spacing_row_mm"]) == pytest.approx(0.25) and float(row["spacing_col_mm"]) == pytest.approx(
            0.25
        )
    cine = [r for r in synthetic if r["frames_in_source"] == "4"]
    assert {(r["crop_x0"], r["crop_y0"], r["crop_x1"], r["crop_y1"], r["width"], r["height"]) for r in cine} == {
        ("30", "40", "225", "189", "196", "150")
    }
    assert all(r["doppler"] == "1" for r in cine)


def test_datalist_contract(ingested):
    from ultradino_monai.data.datalist import load_datalist, read_datalist

    output = ingested["output"]
    document = read_datalist(output / "datalist.json")
    items = load_datalist(output / "datalist.json", "training")
    assert len(items) == len(document["training"]) > 0
    for raw, item in zip(document["training"], items):
        assert not os.path.isabs(raw["image"]) and raw["image"].startswith("images/")
        parts = raw["image"].split("/")
        assert parts[1] == raw["patient"] and parts[2] == raw["study"] and parts[3].startswith(raw["instance"] + "_")
        assert Path(item["image"]).is_file()


def test_demo_archive_is_ingested_and_clean(ingested):
    """The demo archive (when its generator exists) converts every US file, cropped, at 10*delta spacing."""
    import csv

    record = ingested["demo"]
    pseudo = Pseudonymizer(KEY)
    rows = list(csv.DictReader((ingested["output"] / "manifest.csv").open()))
    by_instance: dict[str, list[dict]] = {}
    for row in rows:
        by_instance.setdefault(row["instance"], []).append(row)
    expected = [f for f in record["files"] if f["expected"] == "ingest"]
    assert expected and len(expected) < len(record["files"])  # the worksheet is dropped
    for entry in expected:
        mine = by_instance[pseudo.instance(entry["sop_instance_uid"])]
        assert len(mine) == entry["frames"]
        assert all(r["pixel_policy"] == "region" and r["pixels_verified"] == "1" for r in mine)
        assert float(mine[0]["spacing_row_mm"]) == pytest.approx(entry["mm_per_px"], rel=1e-4)
        # The crop starts below the burned-in banner.
        assert int(mine[0]["crop_y0"]) >= entry["banner_height"]
    dropped = [f for f in record["files"] if f["expected"] != "ingest"]
    assert all(pseudo.instance(f["sop_instance_uid"]) not in by_instance for f in dropped)
