"""Bad input to the command-line tools: one line and exit code 2 (or a counted rejection), never a traceback,
never a misleading output left behind.

Each case runs the real command as a subprocess on a tiny input built in ``tmp_path`` and checks
the exit code, that the message names the option, entry or file, that no traceback is printed,
and what is (not) left in the output folder: a converter that fails writes no datalist, split
files, images or report, and an earlier good output stays byte for byte as it was.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from phi_fixtures import SyntheticStudy, make_us_dataset
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

REPO = Path(__file__).resolve().parents[1]
KEY = b"bad-input-test-key-0123456789abcdef"
H, W = 6, 8
# Names a real export could carry; they must never reach the console or the run outputs.
PHI_NAME = "DOE_JANE_MRN4711"


# -------------------------------------------------------------------------------- tiny inputs
def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _fass_tree(root: Path, patients: int, corrupt: str | None = None, seed: int = 0) -> Path:
    """FASS release layout (IMAGES/*.png + ARRAY_FORMAT/*.npy pickled dicts), ``patients`` x 2 images."""
    rng = np.random.default_rng(seed)
    release = root / "FASS"
    for p in range(1, patients + 1):
        for k in (1, 2):
            stem = f"P{p}_IMG{k}"
            grey = rng.integers(0, 256, size=(H, W), dtype=np.uint8)
            _png(release / "IMAGES" / f"{stem}.png", np.repeat(grey[..., None], 3, axis=2))
            liver = np.zeros((H, W), np.uint8)
            liver[1:5, 1:5] = 1
            buffer = io.BytesIO()
            np.save(buffer, {"image": np.repeat(grey[..., None], 3, axis=2), "structures": {"liver": liver}})
            (release / "ARRAY_FORMAT").mkdir(parents=True, exist_ok=True)
            (release / "ARRAY_FORMAT" / f"{stem}.npy").write_bytes(buffer.getvalue())
    if corrupt is not None:
        (release / "IMAGES" / f"{corrupt}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # header, no image
    return root


def _jnu_tree(root: Path, videos: int, corrupt_frame: int | None = None) -> Path:
    """JNU-IFM layout: ``videos`` video folders (one per day, so one patient each) x 2 frames."""
    rng = np.random.default_rng(0)
    number = 0
    for v in range(videos):
        video = f"201909{10 + v:02d}T090000"
        for f in range(2):
            stem = f"{video}_{f:04d}"
            mask = np.zeros((H, W), np.uint8)
            mask[4:6, 0:3] = 7  # pubic symphysis
            mask[0:3, 3:8] = 8  # head
            _png(root / video / "image" / f"{stem}.png", rng.integers(0, 256, size=(H, W), dtype=np.uint8))
            _png(root / video / "mask" / f"{stem}_mask.png", mask)
            _png(root / video / "mask_enhance" / f"{stem}_mask.png", np.repeat(mask[..., None], 3, axis=2))
            if number == corrupt_frame:
                (root / video / "image" / f"{stem}.png").write_bytes(b"not a png at all")
            number += 1
    return root


def _jpeg_cine(frames: int = 4, plant_everything: bool = True) -> bytes:
    """A US multi-frame JPEG Baseline cine (encapsulated pixel data), as bytes."""
    dataset, _ = make_us_dataset(
        SyntheticStudy("BI"),
        rows=72,
        columns=96,
        frames=frames,
        region=(8, 12, 86, 66),
        banner_height=10,
        plant_everything=plant_everything,
    )
    encoded = []
    for frame in dataset.pixel_array:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    dataset.PixelData = encapsulate(encoded)
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    dataset.PhotometricInterpretation = "YBR_FULL_422"
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -------------------------------------------------------------------------------- the table
@dataclass
class Case:
    """One bad input: the command, its expected exit code and message, and what must not be left."""

    command: list[str]
    code: int
    message: str  # regex searched in stderr
    prepare: Callable[[Path], None] = lambda tmp: None
    # paths (relative to tmp_path) that must not exist after the run
    absent: tuple[str, ...] = ()


CONVERTER_OUTPUTS = ("datalist.json", "splits", "images", "labels", "conversion_report.json", "overlaps.csv")


def _converter_leftovers(out: str) -> tuple[str, ...]:
    return (out,)  # OUT did not exist before: a failed run must not even leave the folder


def _ingest(*extra: str, source: str = "in") -> list[str]:
    return ["data_prep.ingest", source, "out", "--secret-file", "key", "--no-progress", *extra]


def _dicom_input(tmp: Path) -> None:
    (tmp / "in").mkdir()
    (tmp / "in" / "a.dcm").write_bytes(_jpeg_cine(2))


CASES = {
    # -- ingestion: numbers that would silently switch a check off --------------------------------------
    **{
        f"ingest_dedup_{value}": Case(
            _ingest(f"--dedup-threshold={value}"),
            2,
            rf"^error: --dedup-threshold must be a finite number <= 255 .*got {re.escape(expected)}$",
            _dicom_input,
            ("out",),
        )
        for value, expected in (("nan", "nan"), ("inf", "inf"), ("-inf", "-inf"), ("300", "300.0"))
    },
    "ingest_doppler_nan": Case(
        _ingest("--doppler-fraction", "nan"),
        2,
        r"^error: --doppler-fraction must be in \(0, 1\]",
        _dicom_input,
        ("out",),
    ),
    "ingest_empty_input": Case(
        _ingest(), 2, r"^error: INPUT holds no files: .*--allow-empty", lambda tmp: (tmp / "in").mkdir(), ("out",)
    ),
    # -- converters: checks that fail half-way or after the datalist ------------------------------------
    "fass_too_small_for_splits": Case(
        ["data_prep.fass", "raw", "out", "--no-count-check"],
        2,
        r"^error: few-shot needs 20 training images but the non-test pool only offers \d+",
        lambda tmp: _fass_tree(tmp / "raw", patients=3),
        _converter_leftovers("out"),
    ),
    "fass_corrupt_image_mid_way": Case(
        ["data_prep.fass", "raw", "out", "--no-count-check", "--no-splits"],
        2,
        r"^error: FASS/IMAGES/P4_IMG1\.png: cannot decode image",
        lambda tmp: _fass_tree(tmp / "raw", patients=8, corrupt="P4_IMG1"),
        _converter_leftovers("out"),
    ),
    "fass_bad_patient_regex": Case(
        ["data_prep.fass", "raw", "out", "--no-count-check", "--patient-regex", "(P"],
        2,
        r"^error: --patient-regex '\(P' is not a regular expression",
        lambda tmp: _fass_tree(tmp / "raw", patients=2),
        _converter_leftovers("out"),
    ),
    "jnu_corrupt_image_mid_way": Case(
        ["data_prep.jnu_ifm", "raw", "out", "--no-count-check", "--no-splits"],
        2,
        r"^error: 20190915T090000/image/20190915T090000_0001\.png: cannot decode image",
        lambda tmp: _jnu_tree(tmp / "raw", videos=10, corrupt_frame=11),
        _converter_leftovers("out"),
    ),
    "jnu_too_small_for_splits": Case(
        ["data_prep.jnu_ifm", "raw", "out", "--no-count-check"],
        2,
        r"^error: .*patient",
        lambda tmp: _jnu_tree(tmp / "raw", videos=2),
        _converter_leftovers("out"),
    ),
    "jnu_max_gap_nan": Case(
        ["data_prep.jnu_ifm", "raw", "out", "--no-count-check", "--max-gap-minutes", "nan"],
        2,
        r"^error: --max-gap-minutes must be a finite number >= 0, got nan$",
        lambda tmp: _jnu_tree(tmp / "raw", videos=2),
        _converter_leftovers("out"),
    ),
    "fetal_planes_workers_0": Case(
        ["data_prep.fetal_planes", "raw", "out", "--workers", "0"],
        2,
        r"^error: --workers must be an integer >= 1, got 0$",
        lambda tmp: (tmp / "raw").mkdir(),
        _converter_leftovers("out"),
    ),
    # -- experiment runner ------------------------------------------------------------------------------
    **{
        f"experiments_workers_{value}": Case(
            ["ultradino_monai.experiments", "run", str(REPO / "experiments" / "demo.yaml"), "--workers", value],
            2,
            rf"argument --workers: must be >= 1, got {value}$",
        )
        for value in ("0", "-2")
    },
    "experiments_gpus_empty_id": Case(
        ["ultradino_monai.experiments", "run", str(REPO / "experiments" / "demo.yaml"), "--gpus", "0,,1"],
        2,
        r"argument --gpus: expected comma-separated GPU ids such as 0,1, got '0,,1'$",
    ),
    "experiments_gpus_malformed": Case(
        ["ultradino_monai.experiments", "run", str(REPO / "experiments" / "demo.yaml"), "--gpus", "cuda:0"],
        2,
        r"argument --gpus: GPU id 'cuda:0' is neither an index >= 0 nor a GPU-/MIG- UUID$",
    ),
}


def _run(tmp_path: Path, command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_env()
    )


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_line_and_leaves_nothing(tmp_path, name):
    case = CASES[name]
    (tmp_path / "key").write_bytes(KEY)
    case.prepare(tmp_path)
    result = _run(tmp_path, case.command)
    output = result.stdout + result.stderr
    assert result.returncode == case.code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert re.search(case.message, result.stderr, flags=re.MULTILINE), result.stderr[-3000:]
    for relative in case.absent:
        assert not (tmp_path / relative).exists(), f"{relative} left behind by a failed run"
    assert not list(tmp_path.glob("**/.converting-*")), "staging folder left behind"


def test_a_failed_conversion_leaves_an_earlier_good_output_untouched(tmp_path):
    """FASS converted once; the same OUT given another release (other pixels) with a corrupt sixth patient keeps
    every byte of the first run: the five patients before the corrupt image are not written over."""
    options = ["--no-count-check", "--fewshot-images", "2"]
    good = _run(tmp_path, ["data_prep.fass", str(_fass_tree(tmp_path / "good", 8)), "out", *options])
    assert good.returncode == 0, good.stderr[-3000:]
    before = _tree(tmp_path / "out")
    assert {"datalist.json", "conversion_report.json", "splits/index.json", "images/P4_IMG1.png"} <= set(before)
    bad_tree = _fass_tree(tmp_path / "bad", 8, corrupt="P6_IMG2", seed=1)
    bad = _run(tmp_path, ["data_prep.fass", str(bad_tree), "out", *options])
    assert bad.returncode == 2 and "P6_IMG2.png: cannot decode image" in bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    assert _tree(tmp_path / "out") == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        name for name in ("conversion_report.json", "datalist.json", "images", "labels", "overlaps.csv", "splits")
    )


def test_jnu_good_tree_converts(tmp_path):
    """The JNU inputs of the table fail for the reason they name: the same tree without the fault converts."""
    result = _run(
        tmp_path, ["data_prep.jnu_ifm", str(_jnu_tree(tmp_path / "raw", videos=10)), "out", "--no-count-check"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(json.loads((tmp_path / "out" / "datalist.json").read_text())["training"]) == 20


def test_empty_input_with_allow_empty_warns_and_writes_an_empty_run(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "key").write_bytes(KEY)
    result = _run(tmp_path, _ingest("--allow-empty"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert "holds no files" in result.stderr  # the warning
    assert json.loads((tmp_path / "out" / "datalist.json").read_text())["training"] == []
    assert json.loads((tmp_path / "out" / "report.json").read_text())["files"]["found"] == 0


def test_truncated_dicom_frames_are_counted_as_rejected_without_names(tmp_path):
    """A cine cut inside its last JPEG frame (its first frames decode, then pydicom fails), one cut just after
    the start of its encapsulated pixel data, and one cut inside an item tag (pydicom raises struct.error,
    which used to end as internal_error) are quarantined with a reason code and named only by position;
    the frames decoded before the failure are removed again; the intact file is converted and the run
    exits 0 with its summary line."""
    (tmp_path / "key").write_bytes(KEY)
    source = tmp_path / "in"
    source.mkdir()
    data = _jpeg_cine(4)
    pixel_data = data.find(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data, little endian
    last_frame = data.rfind(b"\xff\xd8\xff")  # JPEG start-of-image marker of the last fragment
    assert 0 < pixel_data < last_frame
    (source / "a_intact.dcm").write_bytes(data)
    (source / f"b_{PHI_NAME}_last_frame_cut.dcm").write_bytes(data[: (last_frame + len(data)) // 2])
    (source / f"c_{PHI_NAME}_pixel_data_cut.dcm").write_bytes(data[: pixel_data + 30])
    plain = _jpeg_cine(4, plant_everything=False)
    (source / f"d_{PHI_NAME}_item_tag_cut.dcm").write_bytes(plain[: plain.find(b"\xe0\x7f\x10\x00") + 20])
    result = _run(tmp_path, _ingest("--workers", "0"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output and PHI_NAME not in output
    assert "4 inputs -> 1 converted, 3 quarantined, 0 skipped; 4 frames written" in result.stdout
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["files"] == {"found": 4, "converted": 1, "quarantined": 3, "skipped": 0}
    assert report["reasons"]["quarantined"] == {"decode_error": 2, "no_pixel_data": 1}
    rows = list(csv.DictReader((out / "quarantine.csv").open()))
    assert [(row["position"], row["frame"], row["reason"]) for row in rows] == [
        ("1", "", "decode_error"),
        ("2", "", "no_pixel_data"),
        ("3", "", "decode_error"),
    ]
    manifest = list(csv.DictReader((out / "manifest.csv").open()))
    assert {row["input_position"] for row in manifest} == {"0"} and len(manifest) == 4
    assert len(list((out / "images").rglob("*.png"))) == 4
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".csv", ".json", ".html"):
            assert PHI_NAME not in path.read_text(errors="replace"), path
