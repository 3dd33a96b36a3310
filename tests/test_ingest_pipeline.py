"""Pipeline robustness: accounting, fuzzing, kill -9 and resume, determinism, zips, CLI errors."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phi_fixtures import SyntheticStudy, make_us_dataset
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from data_prep.dicom_synth import write_dataset
from data_prep.ingest import IngestConfig, IngestError, Pseudonymizer, run_ingest
from data_prep.ingest.discovery import InputItem
from data_prep.ingest.process import WorkContext, process_item

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
KEY = b"pipeline-test-key-0123456789abcdef"
OUTCOMES = {"converted", "quarantined", "skipped"}


def small_us(tag: str, *, frames: int = 1, rows: int = 72, columns: int = 96, **kwargs):
    kwargs.setdefault("region", (8, 12, columns - 9, rows - 5))
    kwargs.setdefault("banner_height", 10)
    return make_us_dataset(SyntheticStudy(tag), rows=rows, columns=columns, frames=frames, **kwargs)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file below root (except the lock file) -> content."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "lock"
    }


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_prep.ingest", *args], capture_output=True, text=True, timeout=300, **kwargs
    )


@pytest.fixture()
def key_file(tmp_path) -> Path:
    path = tmp_path / "key"
    path.write_bytes(KEY)
    return path


# -- CLI contract ---------------------------------------------------------------------------------
def test_cli_errors_are_clear_and_non_zero(tmp_path, key_file, capsys):
    from data_prep.ingest.__main__ import main

    source = tmp_path / "in"
    source.mkdir()
    # One real process for the exit status as a shell sees it.
    missing = cli(str(source), str(tmp_path / "out"), "--secret-file", str(tmp_path / "nokey"))
    assert missing.returncode == 2 and "secret key file not found" in missing.stderr

    def run(*args: str) -> tuple[int, str]:
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse usage errors
            code = exit_.code
        return code, capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.write_text("")
    code, err = run(str(source), str(tmp_path / "out"), "--secret-file", str(empty))
    assert code == 2 and "empty" in err
    code, err = run(
        str(source), str(tmp_path / "out"), "--secret-file", str(key_file), "--banner-policy", "mask-everything"
    )
    assert code == 2 and "banner-policy" in err
    code, err = run(str(source), str(tmp_path / "out"), "--secret-file", str(key_file), "--frame-stride", "0")
    assert code == 2 and "frame-stride" in err
    code, err = run(str(source), str(source / "out"), "--secret-file", str(key_file))
    assert code == 2 and "inside INPUT" in err
    code, err = run(str(tmp_path / "nothing"), str(tmp_path / "out"), "--secret-file", str(key_file))
    assert code == 2 and "INPUT folder not found" in err
    code, err = run(str(source), str(tmp_path / "out"))
    assert code == 2 and "--secret-file" in err
    # An empty INPUT is refused before OUTPUT is made, unless --allow-empty (tests/test_cli_bad_input.py).
    code, err = run(str(source), str(tmp_path / "out"), "--secret-file", str(key_file), "--no-progress")
    assert code == 2 and "INPUT holds no files" in err and not (tmp_path / "out").exists()
    code, _ = run(str(source), str(tmp_path / "out"), "--secret-file", str(key_file), "--no-progress", "--allow-empty")
    assert code == 0


def test_other_key_on_same_output_is_refused(tmp_path):
    source = tmp_path / "in"
    write_dataset(source / "a.dcm", small_us("K1")[0])
    run_ingest(source, tmp_path / "out", KEY, progress=False)
    with pytest.raises(IngestError, match="different secret key"):
        run_ingest(source, tmp_path / "out", KEY + b"2", progress=False)


# -- accounting, duplicates, stride, options ------------------------------------------------------
def test_duplicates_stride_dedup_and_input_untouched(tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    cine, _ = small_us("C1", frames=6, doppler=False)
    frames = cine.pixel_array.copy()
    frames[3] = frames[2]  # a frozen frame
    cine.set_pixel_data(frames, "RGB", 8, generate_instance_uid=False)
    write_dataset(source / "cine.dcm", cine)
    write_dataset(source / "copy" / "cine_again.dcm", cine)  # identical duplicate
    clash, _ = small_us("C2", seed=99)  # same SOP instance UID as clash_b, other pixels
    write_dataset(source / "clash_a.dcm", clash)
    write_dataset(source / "clash_b.dcm", small_us("C2", seed=5)[0])
    (source / "notes.txt").write_text("not dicom")
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}

    report = run_ingest(source, output, KEY, IngestConfig(frame_stride=1), workers=0, progress=False)
    assert report["files"] == {"found": 5, "converted": 1, "quarantined": 2, "skipped": 2}
    assert report["reasons"]["skipped"] == {"duplicate_instance": 1, "not_dicom": 1}
    assert report["reasons"]["quarantined"] == {"conflicting_duplicate_instance": 2}
    assert report["frames"]["near_duplicates_removed"] == 1
    rows = list(csv.DictReader((output / "manifest.csv").open()))
    assert [int(r["frame"]) for r in rows] == [0, 1, 2, 4, 5]
    assert sorted(p.name for p in (output / "images").rglob("*.png")) == sorted(Path(r["image"]).name for r in rows)

    report = run_ingest(source, output, KEY, IngestConfig(frame_stride=2), workers=0, progress=False)
    rows = list(csv.DictReader((output / "manifest.csv").open()))
    assert [int(r["frame"]) for r in rows] == [0, 2, 4]
    assert report["frames"]["strided_out"] == 3
    # Frames of the previous options are swept; nothing unreferenced remains.
    assert len(list((output / "images").rglob("*.png"))) == 3
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before


def test_rerun_skips_finished_work(tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    for index in range(3):
        write_dataset(source / f"{index}.dcm", small_us(f"R{index}")[0])
    run_ingest(source, output, KEY, workers=0, progress=False)
    records = sorted((output / ".ingest_state" / "records").glob("*.json"))
    stamps = [r.stat().st_mtime_ns for r in records]
    first = tree_bytes(output)
    time.sleep(0.02)
    run_ingest(source, output, KEY, workers=0, progress=False)
    assert [r.stat().st_mtime_ns for r in records] == stamps  # nothing reprocessed
    assert tree_bytes(output) == first
    # A deleted frame is noticed and its input redone.
    next((output / "images").rglob("*.png")).unlink()
    run_ingest(source, output, KEY, workers=0, progress=False)
    assert tree_bytes(output) == first


def _mark_encrypted(path: Path, name: bytes) -> None:
    """Set the 'encrypted' flag bit of one member in its local and central headers."""
    data = bytearray(path.read_bytes())
    for signature, flag_at, length_at, name_at in ((b"PK\x03\x04", 6, 26, 30), (b"PK\x01\x02", 8, 28, 46)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            length = struct.unpack_from("<H", data, start + length_at)[0]
            if bytes(data[start + name_at : start + name_at + length]) == name:
                data[start + flag_at] |= 0x1
            start += 4
    path.write_bytes(bytes(data))


def test_zip_archives_are_read_in_place_with_traversal_guard(tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    good = io.BytesIO()
    small_us("Z1")[0].save_as(good, enforce_file_format=True)
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w") as inner:
        inner.writestr("x.dcm", good.getvalue())
    with zipfile.ZipFile(source / "export.zip", "w") as archive:
        archive.writestr("PATIENT/IMG1", good.getvalue())
        archive.writestr("../../evil.dcm", good.getvalue())
        archive.writestr("/abs/evil2.dcm", good.getvalue())
        archive.writestr("C:\\win\\evil3.dcm", good.getvalue())
        archive.writestr("inner.zip", nested.getvalue())
        archive.writestr("locked.dcm", b"x" * 10)
    _mark_encrypted(source / "export.zip", b"locked.dcm")
    (source / "broken.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 50)
    report = run_ingest(source, output, KEY, workers=0, progress=False)
    assert report["files"]["found"] == 7 and report["files"]["converted"] == 1
    assert report["reasons"]["quarantined"] == {
        "bad_archive": 1,
        "nested_archive": 1,
        "zip_encrypted": 1,
        "zip_unsafe_path": 3,
    }
    assert not (tmp_path / "evil.dcm").exists() and not list(tmp_path.rglob("evil*"))


# -- fuzzing --------------------------------------------------------------------------------------
def _jpeg_us() -> bytes:
    dataset, _ = small_us("FJ", plant_everything=False)
    frame = dataset.pixel_array
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
    dataset.PixelData = encapsulate([buffer.getvalue()])
    dataset["PixelData"].VR = "OB"
    dataset.PhotometricInterpretation = "YBR_FULL_422"
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _base_files() -> dict[str, bytes]:
    files = {}
    native, _ = small_us("FN")
    rle, _ = small_us("FR", frames=3, photometric="MONOCHROME2", plant_everything=False)
    rle.compress(RLELossless, generate_instance_uid=False)
    j2k, _ = small_us("FK", plant_everything=False)
    j2k.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    for name, dataset in (("native", native), ("rle", rle), ("j2k", j2k)):
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        files[name] = buffer.getvalue()
    files["jpeg"] = _jpeg_us()
    return files


def _header_mutations(data: bytes) -> dict[str, bytes]:
    out = {}
    for name, change in {
        "huge": {"Rows": 65535, "Columns": 65535},
        "zero_rows": {"Rows": 0},
        "many_frames": {"NumberOfFrames": 10**8},
        "bits12": {"BitsAllocated": 12},
        "bad_pi": {"PhotometricInterpretation": "FOO"},
        "bad_frames": {"NumberOfFrames": "abc"},
        "no_pixels": {"PixelData": None},
        "bad_region": {"SequenceOfUltrasoundRegions": None},
    }.items():
        dataset = dcmread(io.BytesIO(data))
        for key, value in change.items():
            if value is None:
                if key in dataset:
                    delattr(dataset, key)
            elif key == "NumberOfFrames" and isinstance(value, str):
                dataset.add_new(0x00280008, "IS", "1")
                dataset[0x00280008]._value = value
            else:
                setattr(dataset, key, value)
        buffer = io.BytesIO()
        try:
            dataset.save_as(buffer, enforce_file_format=True)
        except Exception:
            continue
        out[name] = buffer.getvalue()
    # Wrong VR on the wire: Rows (0028,0010) claims SQ / UN instead of US.
    marker = struct.pack("<HH", 0x0028, 0x0010) + b"US"
    position = data.find(marker)
    if position >= 0:
        out["vr_sq"] = data[: position + 4] + b"SQ" + data[position + 6 :]
        out["vr_un"] = data[: position + 4] + b"UN" + data[position + 6 :]
    return out


def test_fuzzed_files_never_crash_and_are_all_accounted(tmp_path, key_file):
    source = tmp_path / "fuzz"
    source.mkdir()
    rng = np.random.default_rng(1234)
    count = 0
    for name, data in _base_files().items():
        for fraction in (0.02, 0.3, 0.7, 0.97):
            (source / f"{name}_trunc{fraction}").write_bytes(data[: int(len(data) * fraction)])
            count += 1
        for trial in range(4):
            mutated = bytearray(data)
            for offset in rng.integers(0, len(data), size=12):
                mutated[offset] = int(rng.integers(0, 256))
            (source / f"{name}_flip{trial}").write_bytes(bytes(mutated))
            count += 1
        for label, mutated in _header_mutations(data).items():
            (source / f"{name}_{label}").write_bytes(mutated)
            count += 1
    output = tmp_path / "out"
    result = cli(str(source), str(output), "--secret-file", str(key_file), "--workers", "2", "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((output / "report.json").read_text())
    files = report["files"]
    assert files["found"] == count
    assert files["found"] == files["converted"] + files["quarantined"] + files["skipped"]
    rows = list(csv.DictReader((output / "quarantine.csv").open()))
    rejected = {int(r["position"]) for r in rows if r["frame"] == ""}
    converted = {int(r["input_position"]) for r in csv.DictReader((output / "manifest.csv").open())}
    assert rejected.isdisjoint(converted) and rejected | converted == set(range(count))
    reasons = report["reasons"]["quarantined"]
    assert reasons.get("pixel_budget", 0) >= 4 and reasons.get("frame_budget", 0) >= 3
    assert reasons.get("no_pixel_data", 0) >= 1 and reasons.get("no_tissue_region", 0) >= 4
    assert "internal_error" not in reasons and "worker_crash" not in reasons


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    edits=st.lists(st.tuples(st.integers(0, 3999), st.integers(0, 255)), min_size=1, max_size=20),
    cut=st.integers(200, 4000),
)
def test_hypothesis_mutations_give_a_record_not_a_crash(tmp_path, edits, cut):
    base = _FUZZ_BASE
    data = bytearray(base[:cut] if cut < len(base) else base)
    for offset, value in edits:
        if offset < len(data):
            data[offset] = value
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir(exist_ok=True)
    (source / "x").write_bytes(bytes(data))
    context = WorkContext(str(source), str(output), IngestConfig(), KEY)
    record = process_item(context, InputItem("x", stamp=str(len(data))), 0)
    assert record["outcome"] in OUTCOMES and (record["outcome"] == "converted") == bool(record["frames"])
    assert record["reason"] != "internal_error"
    for relative in record["outputs"]:
        assert (output / relative).is_file()


def _fuzz_base() -> bytes:
    dataset, _ = small_us("HY", rows=40, columns=48, plant_everything=False, banner_height=0)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


_FUZZ_BASE = _fuzz_base()


# -- determinism and kill -9 -----------------------------------------------------------------------
def test_output_is_identical_for_any_worker_count_and_keys_disjoint(tmp_path):
    source = tmp_path / "in"
    for index in range(4):
        dataset = small_us(f"W{index}", frames=2 + index % 2, doppler=index % 2 == 0)[0]
        write_dataset(source / f"s{index}" / "img.dcm", dataset)
    config = IngestConfig(keep_dicom=True)
    run_ingest(source, tmp_path / "w0", KEY, config, workers=0, progress=False)
    run_ingest(source, tmp_path / "w2", KEY, config, workers=2, progress=False)
    assert tree_bytes(tmp_path / "w0") == tree_bytes(tmp_path / "w2")
    other = b"a-completely-different-key-0123456789"
    run_ingest(source, tmp_path / "k2", other, config, workers=0, progress=False)
    uids = lambda root: {str(dcmread(p).SOPInstanceUID) for p in (root / "dicom").rglob("*.dcm")}  # noqa: E731
    assert uids(tmp_path / "w0").isdisjoint(uids(tmp_path / "k2"))
    names = lambda root: {p.name for p in (root / "images").rglob("*.png")}  # noqa: E731
    assert names(tmp_path / "w0").isdisjoint(names(tmp_path / "k2"))
    pseudo = Pseudonymizer(KEY)
    rows = list(csv.DictReader((tmp_path / "w0" / "manifest.csv").open()))
    assert {r["patient"] for r in rows} == {pseudo.patient(f"id:HOSPW{i}ISSUER|MRNW{i}7731") for i in range(4)}


def _start(source: Path, output: Path, key_file: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "data_prep.ingest", str(source), str(output), "--secret-file", str(key_file)]
    command += ["--keep-dicom", "--png-compress-level", "9", "--no-progress", "--workers", "1"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for_records(output: Path, process: subprocess.Popen, at_least: int) -> int:
    records = output / ".ingest_state" / "records"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        count = len(list(records.glob("*.json"))) if records.exists() else 0
        if count >= at_least:
            return count
        time.sleep(0.005)
    raise AssertionError("the run finished or stalled before it could be interrupted")


def test_kill_minus_9_and_resume_gives_identical_outputs(tmp_path, key_file):
    source = tmp_path / "in"
    items = 10
    for index in range(items):
        dataset, _ = small_us(f"KR{index}", frames=4, rows=240, columns=320, doppler=True)
        write_dataset(source / f"p{index}" / "cine.dcm", dataset)
    reference = tmp_path / "reference"
    assert (
        cli(
            str(source),
            str(reference),
            "--secret-file",
            str(key_file),
            "--keep-dicom",
            "--png-compress-level",
            "9",
            "--no-progress",
        ).returncode
        == 0
    )

    interrupted = tmp_path / "interrupted"
    # First kill: the main process only (its worker dies with it via PDEATHSIG).
    process = _start(source, interrupted, key_file)
    done = _wait_for_records(interrupted, process, 2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert done < items
    # Second kill: the whole process group, later in the run.
    process = _start(source, interrupted, key_file)
    done = _wait_for_records(interrupted, process, done + 3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert done < items
    time.sleep(0.2)
    assert not (interrupted / "manifest.csv").exists()
    result = cli(
        str(source),
        str(interrupted),
        "--secret-file",
        str(key_file),
        "--keep-dicom",
        "--png-compress-level",
        "9",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert tree_bytes(interrupted) == tree_bytes(reference)
    assert not [p for p in interrupted.rglob("*") if p.name.startswith(".ingest-tmp-") or p.name.endswith(".tmp")]


def test_burned_in_annotation_is_never_trusted(tmp_path):
    """Missing BurnedInAnnotation counts as YES; an explicit NO is recorded but still cropped."""
    source, output = tmp_path / "in", tmp_path / "out"
    missing, _ = small_us("B1")
    said_no, _ = small_us("B2")
    said_no.BurnedInAnnotation = "NO"
    write_dataset(source / "a.dcm", missing)
    write_dataset(source / "b.dcm", said_no)
    run_ingest(source, output, KEY, workers=0, progress=False)
    rows = list(csv.DictReader((output / "manifest.csv").open()))
    assert [r["burned_in_source"] for r in rows] == ["YES", "NO"]
    assert all(r["pixel_policy"] == "region" and int(r["crop_y0"]) == 12 for r in rows)  # banner rows 0-9 gone
