"""Audit page ``OUTPUT/qc/index.html``: its numbers, sample, bounds, escaping, CLI, and a real headless browser.

The ingest fixture is the tiny demo archive (``data_prep.dicom_synth``) plus inputs that are skipped
(a text file, an identical duplicate) and quarantined (a US image without a region, a truncated file).
The size and sampling checks use the benchmark's synthetic output folder (``benchmarks/ingest_report.py``).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from audit_page import Page, assert_page_matches_outputs, image_metadata
from phi_fixtures import SyntheticStudy, make_us_dataset
from PIL import Image

from data_prep.demo import SCALES
from data_prep.dicom_synth import write_archive, write_dataset
from data_prep.ingest import run_ingest
from data_prep.ingest.report import REPORT_PATH, SHEET_SIZE, THUMBNAIL_BUDGET, collect, write_report
from data_prep.ingest.report_reasons import REASONS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
KEY = b"report-test-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("ingest_report_benchmark", ROOT / "benchmarks" / "ingest_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ingest_folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("audit")
    source, output = root / "input", root / "output"
    write_archive(source / "demo" / "archive", 0, SCALES["tiny"].archive, relative_to=source / "demo")
    (source / "notes.txt").write_text("not a DICOM file\n")
    regionless, _ = make_us_dataset(SyntheticStudy("RQ"), rows=120, columns=160, region=None, plant_everything=False)
    write_dataset(source / "regionless.dcm", regionless)
    first = sorted((source / "demo" / "archive").rglob("*.dcm"))[0]
    shutil.copyfile(first, source / "zz_duplicate.dcm")
    (source / "zz_truncated.dcm").write_bytes(first.read_bytes()[:700])
    run_ingest(source, output, KEY, workers=0, progress=False)
    return source, output


@pytest.fixture(scope="module")
def audited(ingest_folders) -> Path:
    return ingest_folders[1]


def test_page_numbers_equal_report_and_manifest(audited):
    page = assert_page_matches_outputs(audited)
    report = json.loads((audited / "report.json").read_text())
    # The fixture has both kinds of rejected inputs, so the reason table is exercised.
    assert report["files"]["skipped"] >= 2 and report["files"]["quarantined"] >= 2
    assert {"skipped:not_dicom", "skipped:duplicate_instance", "quarantined:no_tissue_region"} <= set(page.reasons)
    assert "report.json, manifest.csv and quarantine.csv agree" in " ".join(page.texts)
    # One thumbnail per written frame here (fewer than SHEET_SIZE per model), each a decodable JPEG.
    assert len(page.images) == min(report["frames"]["written"], SHEET_SIZE)
    for mime, raw in page.images:
        image_metadata(mime, raw)
        assert Image.open(io.BytesIO(raw)).size[0] > 0


def test_page_is_self_contained_and_script_free(audited):
    text = (audited / REPORT_PATH).read_text(encoding="utf-8")
    page = Page(text)
    assert not {"script", "link", "iframe", "object", "embed", "base"} & page.tags
    assert page.external == []  # only data: URIs and in-page anchors
    assert not [a for a in page.attributes if a[1].startswith("on")]
    assert "url(" not in text and "@import" not in text and "@font-face" not in text
    assert "default-src 'none'; img-src data:" in text  # the browser refuses any fetch, too


def test_explanations_cover_every_documented_reason_code():
    readme = (ROOT / "data_prep" / "ingest" / "README.md").read_text()
    section = readme[readme.index("### Reason codes") :].split("\n## ")[0]
    documented = set(re.findall(r"`([a-z_]+)`", section))
    assert len(documented) > 50
    assert documented == set(REASONS)
    assert all(len(what) > 15 and action for what, action in REASONS.values())


def test_resume_rewrites_the_same_page_and_cli_regenerates_it(ingest_folders, tmp_path):
    source, audited = ingest_folders
    output = tmp_path / "copy"
    shutil.copytree(audited, output)
    page = output / REPORT_PATH
    original = page.read_bytes()
    page.unlink()
    run_ingest(source, output, KEY, workers=0, progress=False)  # a resume: every input is already done
    assert page.read_bytes() == original
    page.unlink()
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.ingest.report", str(output)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert page.read_bytes() == original  # from the output folder alone, byte for byte
    assert "RuntimeWarning" not in result.stderr


def test_cli_errors_are_one_line_with_status_2(tmp_path):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "missing", tmp_path / "empty"):
        result = subprocess.run(
            [sys.executable, "-m", "data_prep.ingest.report", str(target)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
        assert not (target / "qc").exists()


def test_inconsistent_outputs_are_flagged_on_the_page(audited, tmp_path):
    output = tmp_path / "tampered"
    shutil.copytree(audited, output)
    report = json.loads((output / "report.json").read_text())
    report["frames"]["written"] += 1
    (output / "report.json").write_text(json.dumps(report))
    removed = sorted((output / "images").rglob("*.png"))[0]
    removed.unlink()
    rows = list(csv.DictReader((output / "manifest.csv").open()))
    rows[-1]["patient"] = "DOE^JANE"  # a name where a pseudonym belongs
    with open(output / "manifest.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    text = " ".join("".join(Page(write_report(output).read_text()).texts).split())
    assert "Inconsistencies" in text and "frames written: manifest.csv has" in text
    assert "1 sampled frame files are missing" in text
    assert "1 patient/study/series/instance values are not keyed pseudonyms" in text
    assert "1 frame paths are not images/<patient>/<study>/<instance>_<frame>.png" in text
    assert "CHECK Keyed pseudonyms." in text


def test_sample_is_seeded_and_uniform(tmp_path):
    bench = _benchmark()
    bench.write_synthetic_output(tmp_path / "out", rows=480, models=2, frames_per_instance=4)
    hits = Counter()
    for seed in range(150):
        data = collect(tmp_path / "out", seed)
        assert [len(m.sample) for m in data.models.values()] == [SHEET_SIZE, SHEET_SIZE]
        hits.update(f.image for m in data.models.values() for f in m.sample)

    def sample(seed: int) -> list[str]:
        return [f.image for f in collect(tmp_path / "out", seed).models[("Vendor 0", "Model-00")].sample]

    assert sample(7) == sample(7) and sample(7) != sample(8)
    # 240 frames per model, 24 drawn: each frame is expected 150 * 24 / 240 = 15 times.
    # A sample biased to the start or end of the stream leaves many frames at 0 or far above.
    assert len(hits) == 480
    counts = list(hits.values())
    assert min(counts) >= 2 and max(counts) <= 35


def test_page_size_is_bounded_with_many_models_and_escapes_free_text(tmp_path):
    bench = _benchmark()
    models = [(f"Vendor <script>alert({i})</script>", f'M{i}" onerror="x') for i in range(150)]
    output = tmp_path / "out"
    bench.write_synthetic_output(output, rows=3000, models=models, frames_per_instance=4)
    bench.write_sampled_frames(output)
    text = write_report(output).read_text(encoding="utf-8")
    page = Page(text)
    assert "script" not in page.tags and not [a for a in page.attributes if a[1].startswith("on")]
    assert "Vendor <script>alert(0)</script>" in page.texts  # shown as text, escaped in the source
    assert 0 < len(page.images) <= THUMBNAIL_BUDGET
    assert "50 more models" in " ".join(page.texts)
    assert len(text.encode()) < 5_000_000


def test_report_on_drop_dates_and_ocr_sections(tmp_path):
    bench = _benchmark()
    output = tmp_path / "out"
    bench.write_synthetic_output(output, rows=200, models=3)
    report = json.loads((output / "report.json").read_text())
    report["options"].update(ocr_check=True, date_policy="drop")
    report["frames"]["quarantined"] = {"ocr_digit_run": 3}
    (output / "report.json").write_text(json.dumps(report))
    with open(output / "quarantine.csv", "a") as stream:
        stream.write("4,2,quarantined,ocr_digit_run\n4,3,quarantined,ocr_digit_run\n9,0,quarantined,ocr_digit_run\n")
    bench.write_sampled_frames(output)
    page = Page(write_report(output).read_text())
    text = " ".join(page.texts)
    assert page.number("ocr.flagged") == 3 == page.number("frames.quarantined")
    # The written frames of inputs #4 and #9 (4 frames each) are shown, and only those.
    rows = [r for r in csv.DictReader((output / "manifest.csv").open()) if r["input_position"] in ("4", "9")]
    ocr_section = text[text.index("Written frames of inputs with flagged frames") :]
    assert ocr_section.count("#4 frame") + ocr_section.count("#9 frame") == len(rows) == 8
    # Dates are present in this synthetic manifest although the options say drop: the checklist says CHECK.
    assert "--date-policy drop: no dates are kept; frames carrying a date: 200." in text


# -- a real browser ---------------------------------------------------------------------------------
def _chromium():
    from chromium_cdp import CHROMIUM, Chromium

    if CHROMIUM is None:
        pytest.fail("chromium not installed: apt-get install -y chromium")
    return Chromium


def test_page_renders_in_headless_chromium(audited, tmp_path):
    Chromium = _chromium()
    page_file = audited / REPORT_PATH
    html = page_file.read_text(encoding="utf-8")
    static = Page(html)
    report = json.loads((audited / "report.json").read_text())
    # A copy that reaches outside: the same checks must see its requests and its broken image.
    leaky = tmp_path / "leaky.html"
    leaky.write_text(html.replace("<h1>", '<img src="http://198.51.100.7/x.png"><h1>', 1), encoding="utf-8")
    profile = tmp_path / "profile"
    profile.mkdir()
    with Chromium(profile, width=1280, height=900) as browser:
        load = browser.open(page_file.as_uri())
        widths = browser.evaluate("Array.from(document.images, i => i.naturalWidth)")
        metrics = browser.evaluate(
            "Object.fromEntries(Array.from(document.querySelectorAll('[data-metric]'), e => [e.dataset.metric,"
            " e.textContent]))"
        )
        shot = browser.screenshot(tmp_path / "report.png", height=1400)
        leaky_load = browser.open(leaky.as_uri())
        leaky_widths = browser.evaluate("Array.from(document.images, i => i.naturalWidth)")
    assert load.requests[0] == page_file.as_uri()
    assert load.external() == [] and load.failed == []
    assert len(widths) == len(static.images) > 0 and min(widths) > 0
    for outcome in ("found", "converted", "quarantined", "skipped"):
        assert int(metrics[f"files.{outcome}"].replace(",", "")) == report["files"][outcome]
    assert int(metrics["frames.written"].replace(",", "")) == report["frames"]["written"]
    assert leaky_load.external() == ["http://198.51.100.7/x.png"] and leaky_widths[0] == 0
    # The screenshot shows the page: white background, dark text and dark thumbnails.
    with Image.open(shot) as image:
        assert image.size == (1280, 1400)
        grey = image.convert("L")
        histogram = grey.histogram()
        assert sum(histogram[:60]) > 0.01 * 1280 * 1400 and sum(histogram[250:]) > 0.4 * 1280 * 1400
