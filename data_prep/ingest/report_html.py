"""HTML of the de-identification audit page: summary, reasons, device models, OCR, plots, checklist.

One self-contained document: inline CSS, thumbnails as JPEG data URIs (no metadata segments), charts as
inline SVG, no scripts, and a Content-Security-Policy that forbids the browser any fetch, so the page
works offline and can be attached to a ticket.  Every value from the output folder is HTML-escaped
(manufacturer and model names are free text from the source header, kept by the allowlist).
"""

from __future__ import annotations

import base64
import io
import logging
import random
from collections import Counter
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

from PIL import Image

from .report import POSITIONS_SHOWN, SHEET_SIZE, THUMBNAIL_BUDGET, AuditData, Frame, ModelStats
from .report_plots import bar_chart_svg, histogram_bins
from .report_reasons import explain

logger = logging.getLogger(__name__)

__all__ = ["PAGE_CSS", "render", "thumbnail_data_uri"]

#: longest side of a thumbnail in pixels, and its JPEG quality
THUMBNAIL_SIDE = 176
THUMBNAIL_QUALITY = 80
#: device models listed in the table, at most (the rest is counted)
MODEL_ROWS = 100
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
#: the page's whole style sheet (a constant: no value from the output folder goes into CSS)
PAGE_CSS = """
body{font:14px/1.4 sans-serif;margin:0 auto;max-width:1180px;padding:12px 20px;color:#1b1b1b}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;border-bottom:2px solid #3a6ea5;margin-top:28px}
h3{font-size:15px;margin:16px 0 6px}nav a{margin-right:12px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:top}
th{background:#eef2f7;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.kpi{display:flex;flex-wrap:wrap;gap:10px}.kpi table{flex:1 1 340px}
.ok{color:#176c2d;font-weight:bold}.check{color:#a33b00;font-weight:bold}
.warn{background:#fff1e6;border-left:4px solid #a33b00;padding:6px 10px}
.note{color:#555}.sheet{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;width:180px;font-size:11px;color:#444}figure img{display:block;max-width:176px;max-height:176px;
background:#000}.missing{width:176px;height:60px;background:#eee;text-align:center}
.charts{display:flex;flex-wrap:wrap;gap:18px}.charts div{font-size:13px}
code{background:#f3f3f3;padding:0 3px}ul.checklist{list-style:none;padding-left:4px}
ul.checklist li{margin:8px 0}.box{font-size:18px;margin-right:6px}
"""


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else escape(str(value))


def thumbnail_data_uri(path: Path) -> str | None:
    """A JPEG data URI of a written frame, at most :data:`THUMBNAIL_SIDE` px; None when unreadable.

    Pillow writes only the JFIF header (no EXIF, ICC or comment segments) when none is passed.
    """
    try:
        with Image.open(path) as image:
            image.draft(None, (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            picture = image.convert("RGB" if image.mode in ("RGB", "RGBA", "P") else "L")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class _Thumbnails:
    """Encodes the chosen frames; counts the ones whose file is missing."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir, self.missing, self.shown = output_dir, 0, 0

    def sheet(self, frames: Iterable[Frame]) -> str:
        parts = ['<div class="sheet">']
        for frame in sorted(frames, key=lambda f: (f.position, f.frame)):
            caption = f"#{frame.position} frame {frame.frame}" + (" Doppler" if frame.doppler else "")
            uri = thumbnail_data_uri(self.output_dir / frame.image)
            if uri is None:
                self.missing += 1
                parts.append(f'<figure><div class="missing">frame file missing</div>{escape(caption)}</figure>')
                continue
            self.shown += 1
            parts.append(
                f'<figure><img src="{uri}" alt="{escape(frame.image)}" title="{escape(frame.image)}">'
                f"<figcaption>{escape(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
        return "".join(parts)


def _metric(name: str, value: Any) -> str:
    return f'<td class="n" data-metric="{escape(name)}">{_n(value)}</td>'


def _summary(data: AuditData) -> str:
    report, files, frames = data.report, data.report["files"], data.report.get("frames", {})
    quarantined_frames = sum(frames.get("quarantined", {}).values())
    duplicates = frames.get("near_duplicates_removed", 0)
    dates = "no dates kept" if data.date_range is None else f"{data.date_range[0]} to {data.date_range[1]}"
    options = report.get("options", {})
    option_rows = "".join(
        f"<tr><th>{escape(str(k))}</th><td>{escape(_option_text(v))}</td></tr>" for k, v in options.items()
    )
    fingerprint = escape(data.key_fingerprint or "not recorded (no .ingest_state/key_check.json)")
    return f"""<h2 id="summary">1. Summary</h2>
<div class="kpi"><table><tr><th colspan="2">Input files</th></tr>
<tr><th>found</th>{_metric("files.found", files["found"])}</tr>
<tr><th>converted</th>{_metric("files.converted", files["converted"])}</tr>
<tr><th>quarantined</th>{_metric("files.quarantined", files["quarantined"])}</tr>
<tr><th>skipped</th>{_metric("files.skipped", files["skipped"])}</tr></table>
<table><tr><th colspan="2">Frames</th></tr>
<tr><th>written</th>{_metric("frames.written", data.rows)}</tr>
<tr><th>Doppler (colour)</th>{_metric("frames.doppler", data.doppler)}</tr>
<tr><th>quarantined (OCR)</th>{_metric("frames.quarantined", quarantined_frames)}</tr>
<tr><th>near duplicates removed</th>{_metric("frames.near_duplicates_removed", duplicates)}</tr>
<tr><th>left out by --frame-stride</th>{_metric("frames.strided_out", frames.get("strided_out", 0))}</tr></table>
<table><tr><th colspan="2">Pseudonymised entities</th></tr>
<tr><th>patients</th>{_metric("patients", len(data.patients))}</tr>
<tr><th>studies</th>{_metric("studies", len(data.studies))}</tr>
<tr><th>instances</th>{_metric("instances", len(data.instances))}</tr>
<tr><th>shifted study dates</th><td data-metric="dates">{escape(dates)}</td></tr>
<tr><th>key fingerprint</th><td><code data-metric="key_fingerprint">{fingerprint}</code></td></tr></table></div>
<p class="note">The key fingerprint is a keyed hash (HMAC-SHA256 of a constant) that tells which secret key made
this output; it does not reveal the key. Found = converted + quarantined + skipped.</p>
<h3>Options of the run</h3><table>{option_rows}</table>"""


def _option_text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def _consistency(data: AuditData) -> list[str]:
    """Disagreements between report.json and manifest.csv, or violated invariants (empty when all agree)."""
    report, problems = data.report, []
    files, frames = report["files"], report.get("frames", {})
    if files["found"] != files["converted"] + files["quarantined"] + files["skipped"]:
        problems.append("report.json: found is not converted + quarantined + skipped")
    for name, mine, theirs in (
        ("frames written", data.rows, frames.get("written")),
        ("Doppler frames", data.doppler, frames.get("doppler")),
        ("patients", len(data.patients), report.get("patients")),
        ("studies", len(data.studies), report.get("studies")),
        ("instances", len(data.instances), report.get("instances")),
    ):
        if mine != theirs:
            problems.append(f"{name}: manifest.csv has {mine:,}, report.json says {theirs}")
    counted = sum(count for (outcome, _), (count, _) in data.file_reasons.items())
    if counted != files["quarantined"] + files["skipped"]:
        problems.append(
            f"quarantine.csv lists {counted:,} inputs, report.json {files['quarantined'] + files['skipped']:,}"
        )
    if data.non_pseudonyms:
        problems.append(f"{data.non_pseudonyms:,} patient/study/series/instance values are not keyed pseudonyms")
    if data.bad_paths:
        problems.append(f"{data.bad_paths:,} frame paths are not images/<patient>/<study>/<instance>_<frame>.png")
    return problems


def _reasons(data: AuditData) -> str:
    rows = []
    for (outcome, code), (count, positions) in sorted(data.file_reasons.items(), key=lambda kv: (kv[0][0], -kv[1][0])):
        what, action = explain(code)
        shown = ", ".join(f"#{p}" for p in positions) + (
            f" and {count - len(positions):,} more" if count > len(positions) else ""
        )
        rows.append(
            f"<tr><td>{escape(outcome)}</td><td><code>{escape(code)}</code></td>"
            f'<td class="n" data-reason="{escape(outcome)}:{escape(code)}">{count:,}</td>'
            f"<td>{escape(what)}</td><td>{escape(action)}</td><td>{shown}</td></tr>"
        )
    for code, count in sorted(data.frame_reasons.items()):
        what, action = explain(code)
        rows.append(
            f"<tr><td>frame quarantined</td><td><code>{escape(code)}</code></td>"
            f'<td class="n" data-reason="frame:{escape(code)}">{count:,}</td>'
            f"<td>{escape(what)}</td><td>{escape(action)}</td><td>see section 4</td></tr>"
        )
    if not rows:
        return '<h2 id="quarantine">2. Quarantine and skips</h2><p>Every input was converted.</p>'
    return f"""<h2 id="quarantine">2. Quarantine and skips</h2>
<p class="note">Inputs are named only by their position in the sorted input list (as in quarantine.csv);
at most {POSITIONS_SHOWN} positions are listed per reason. Skipped files are not ultrasound images and need
nothing; quarantined files were held back (fail closed) and may be recoverable.</p>
<table><tr><th>outcome</th><th>reason code</th><th>inputs</th><th>what it means</th><th>what you can do</th>
<th>positions</th></tr>{"".join(rows)}</table>"""


def _top(counter, limit: int, fmt) -> str:
    items = counter.most_common()
    text = ", ".join(f"{fmt(k)} ({v:,})" for k, v in items[:limit])
    return text + (f", {len(items) - limit:,} more" if len(items) > limit else "")


def _crop(box: tuple[str, str, str, str]) -> str:
    x0, y0, x1, y1 = (int(v) for v in box)
    return f"{x1 - x0 + 1}x{y1 - y0 + 1} at ({x0},{y0})"


def _model_row(stats: ModelStats) -> str:
    spacing = "none" if stats.spacing[0] == float("inf") else f"{stats.spacing[0]:.3g} to {stats.spacing[1]:.3g} mm"
    if stats.spacing_missing and stats.spacing[0] != float("inf"):
        spacing += f" ({stats.spacing_missing:,} frames without)"
    return (
        f"<tr><td>{escape(stats.manufacturer or '(empty)')}</td><td>{escape(stats.model or '(empty)')}</td>"
        f'<td class="n">{stats.frames:,}</td><td class="n">{stats.doppler:,}</td>'
        f'<td class="n">{len(stats.devices):,}</td>'
        f"<td>{escape(_top(stats.policies, 2, str))}</td><td>{escape(_top(stats.region_types, 3, str))}</td>"
        f"<td>{escape(_top(stats.crop_sizes, 3, _crop))}</td><td>{escape(spacing)}</td>"
        f"<td>{escape(_top(stats.transfer_syntaxes, 3, str))}</td></tr>"
    )


def _models(data: AuditData, thumbs: _Thumbnails, budget: int, seed: int) -> str:
    models = sorted(data.models.values(), key=lambda m: (-m.frames, m.manufacturer, m.model))
    if not models:
        return '<h2 id="devices">3. Device models</h2><p>No frames were written.</p>'
    rows = "".join(_model_row(m) for m in models[:MODEL_ROWS])
    if len(models) > MODEL_ROWS:
        rest = models[MODEL_ROWS:]
        rows += f'<tr><td colspan="10">{len(rest):,} more models, {sum(m.frames for m in rest):,} frames</td></tr>'
    per_model = max(4, min(SHEET_SIZE, budget // len(models)))
    sheets = []
    for stats in models[: max(budget // per_model, 0)]:
        sample = stats.sample
        if len(sample) > per_model:
            sample = random.Random(f"{seed}|{stats.manufacturer}|{stats.model}").sample(sample, per_model)
        sheets.append(
            f"<h3>{escape(stats.manufacturer or '(empty)')} / {escape(stats.model or '(empty)')}: {len(sample)} of "
            f"{stats.frames:,} frames</h3>{thumbs.sheet(sample)}"
        )
    skipped = len(models) - len(sheets)
    note = (
        f"<p class='note'>{skipped:,} smaller models have no contact sheet (page size budget).</p>" if skipped else ""
    )
    return f"""<h2 id="devices">3. Device models</h2>
<table><tr><th>manufacturer</th><th>model</th><th>frames</th><th>Doppler</th><th>devices</th><th>crop policy</th>
<th>region type</th><th>crop (most common)</th><th>pixel spacing</th><th>transfer syntax</th></tr>{rows}</table>
<h3>Contact sheets</h3>
<p class="note">A seeded uniform sample of written frames per model (at most {per_model}). Look for text, names,
dates or IDs that survived the crop, especially on models with unusual geometry or a mask-top policy. The
tooltip names the frame file; captions give the input position and frame index.</p>{"".join(sheets)}{note}"""


def _ocr(data: AuditData, thumbs: _Thumbnails) -> str:
    options = data.report.get("options", {})
    if not options.get("ocr_check"):
        return """<h2 id="ocr">4. OCR check</h2><p><span class="check">Not run.</span> The run did not use
<code>--ocr-check</code>, so written frames were not read for burned-in text; the contact sheets are the only
visual check. Masked frames (<code>--banner-policy mask-top-N</code>) count as verified only with it.</p>"""
    rows = "".join(
        f'<tr><td><code>{escape(code)}</code></td><td class="n" data-ocr="{escape(code)}">{count:,}</td>'
        f'<td class="n">{len(data.ocr_inputs_by_reason.get(code, ())):,}</td><td>{escape(explain(code)[0])}</td></tr>'
        for code, count in sorted(data.frame_reasons.items())
        if code.startswith("ocr_")
    )
    whole = sum(count for (outcome, code), (count, _) in data.file_reasons.items() if code.startswith("ocr_"))
    flagged = sum(c for code, c in data.frame_reasons.items() if code.startswith("ocr_"))
    text = f"""<h2 id="ocr">4. OCR check</h2>
<p>Every frame that would be written was read by OCR. <span data-metric="ocr.flagged">{flagged:,}</span> frames were
flagged and not written; {whole:,} inputs lost all their frames and were quarantined. {data.ocr.get("clean", 0):,}
written frames read clean.</p>"""
    if rows:
        text += f"<table><tr><th>reason</th><th>frames flagged</th><th>inputs</th><th>meaning</th></tr>{rows}</table>"
    if data.ocr_sample:
        text += f"""<h3>Written frames of inputs with flagged frames</h3><p class="note">Flagged frames themselves
were never written, so the page cannot show them (it shows written output only). These are the frames of the same
inputs that passed OCR: check them for text the OCR missed ({min(len(data.ocr_sample), SHEET_SIZE)} of
{data.ocr_seen:,}).</p>{thumbs.sheet(data.ocr_sample)}"""
    return text


def _distributions(data: AuditData) -> str:
    per_patient = histogram_bins(Counter(data.patients.values()), _PATIENT_EDGES)
    ga = histogram_bins(dict(data.ga_days), list(range(0, 322, 14)))
    no_ga = data.rows - sum(data.ga_days.values())
    widths = histogram_bins({int(k): v for k, v in data.widths.items()}, _SIZE_EDGES)
    heights = histogram_bins({int(k): v for k, v in data.heights.items()}, _SIZE_EDGES)
    charts = [
        (f"Frames per patient ({len(data.patients):,} patients)", _PATIENT_LABELS, per_patient, "frames per patient"),
        (f"Gestational age ({no_ga:,} frames without)", _GA_LABELS, ga, "weeks (2-week bins)"),
        ("Image width (written frames)", _SIZE_LABELS, widths, "pixels (64-px bins)"),
        ("Image height (written frames)", _SIZE_LABELS, heights, "pixels (64-px bins)"),
    ]
    html = "".join(
        f"<div>{escape(title)}<br>{bar_chart_svg(labels, counts, title=title, x_label=x_label, label_every=2)}</div>"
        for title, labels, counts, x_label in charts
    )
    return f"""<h2 id="distributions">5. Distributions</h2><div class="charts">{html}</div>"""


_PATIENT_EDGES = [1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]
_GA_LABELS = [str(week) for week in range(0, 46, 2)]
_SIZE_EDGES = list(range(0, 1281, 64))
_SIZE_LABELS = [str(edge) for edge in _SIZE_EDGES[:-1]] + ["1280+"]
_PATIENT_LABELS = ["1", "2", "3-4", "5-9", "10-19", "20-49", "50-99", "100-199", "200-499", "500-999", "1k-5k", "5k+"]


def _checklist(data: AuditData) -> str:
    options, reasons = data.report.get("options", {}), data.report.get("reasons", {}).get("quarantined", {})
    failed = reasons.get("deid_check_failed", 0)
    bad = data.non_pseudonyms + data.bad_paths
    masked = data.policies.get("mask-top", 0)
    region = data.policies.get("region", 0)
    ocr_run = bool(options.get("ocr_check"))
    date_policy = options.get("date_policy", "shift")
    flagged = sum(c for k, c in data.frame_reasons.items() if k.startswith("ocr_"))

    def item(ok: bool, title: str, facts: str) -> str:
        status = '<span class="ok">OK</span>' if ok else '<span class="check">CHECK</span>'
        return f'<li><span class="box">&#9744;</span>{status} <b>{title}.</b> {facts}</li>'

    dicom = (
        "De-identified DICOM was written (--keep-dicom); each header is a new dataset built from an allowlist."
        if options.get("keep_dicom")
        else "No DICOM was written (--keep-dicom off): only PNG frames and the allowlisted manifest columns."
    )
    if date_policy == "drop":
        date_facts = f"--date-policy drop: no dates are kept; frames carrying a date: {data.dated_rows:,}."
        date_ok = data.dated_rows == 0
    else:
        span = "none" if data.date_range is None else f"{data.date_range[0]} to {data.date_range[1]}"
        date_facts = (
            "--date-policy shift: every date moved back by a per-patient keyed offset of 1 to 11 years; "
            f"shifted study dates {span}; times dropped."
        )
        date_ok = True
    items = [
        item(
            failed == 0,
            "Allowlist header",
            f"{dicom} Every header was checked against DICOM PS3.15 Table E.1-1; "
            f"inputs held back by that check: {failed:,}.",
        ),
        item(
            bad == 0 and bool(data.key_fingerprint),
            "Keyed pseudonyms",
            f"Key fingerprint <code>{escape(data.key_fingerprint or 'missing')}</code>. Patient, study, series and "
            f"instance values that are not HMAC pseudonyms: {data.non_pseudonyms:,}; frame paths built from "
            f"anything else: {data.bad_paths:,}.",
        ),
        item(date_ok, "Date policy", escape(date_facts)),
        item(
            data.verified == data.rows,
            "Pixel policy",
            f"{region:,} frames cropped to the ultrasound region; {masked:,} frames kept whole with the top rows "
            f"blacked out (--banner-policy {escape(str(options.get('banner_policy', '?')))}); "
            f"{data.verified:,} of {data.rows:,} frames count as verified clean.",
        ),
        item(
            ocr_run,
            "OCR check",
            (
                f"Run: {data.ocr.get('clean', 0):,} written frames read clean, "
                f"{flagged:,} frames flagged and not written."
            )
            if ocr_run
            else "Not run (--ocr-check off): burned-in text is checked only by the crop and by eye.",
        ),
        '<li><span class="box">&#9744;</span><b>Contact sheets reviewed.</b> I looked at every contact sheet in '
        "section 3 (and section 4) and saw no names, IDs, dates or other text that identifies a person.</li>",
    ]
    return f"""<h2 id="checklist">6. Reviewer checklist</h2>
<p class="note">CHECK marks a fact that needs a decision before release; OK means the fact is as expected.</p>
<ul class="checklist">{"".join(items)}</ul>
<table><tr><th>reviewer</th><td style="width:260px">&nbsp;</td><th>date</th><td style="width:140px">&nbsp;</td>
<th>signature</th><td style="width:220px">&nbsp;</td></tr></table>"""


def render(data: AuditData, output_dir: Path, seed: int = 0) -> str:
    """The whole page as a string (deterministic for the same folder and seed)."""
    thumbs = _Thumbnails(Path(output_dir))
    ocr_count = min(len(data.ocr_sample), SHEET_SIZE)
    body = [_summary(data), _reasons(data), _models(data, thumbs, THUMBNAIL_BUDGET - ocr_count, seed)]
    body += [_ocr(data, thumbs), _distributions(data), _checklist(data)]
    problems = _consistency(data)
    if thumbs.missing:
        problems.append(f"{thumbs.missing:,} sampled frame files are missing from images/")
    if problems:
        banner = '<div class="warn"><b>Inconsistencies:</b><ul>' + "".join(f"<li>{escape(p)}</li>" for p in problems)
        banner += "</ul></div>"
    else:
        banner = (
            f'<p class="ok" id="consistency">report.json, manifest.csv and quarantine.csv agree '
            f"({data.rows:,} frames, {data.report['files']['found']:,} inputs).</p>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>De-identification audit: ingest output</title><style>{PAGE_CSS}</style></head>
<body><h1>De-identification audit of an ingest output</h1>
<p class="note">Written by <code>python -m data_prep.ingest.report</code> (contact-sheet seed {seed}) from the output
folder only: counts, reason codes, input positions, keyed pseudonyms, shifted dates and thumbnails of written,
cropped frames. No source file, name or original value is read or shown. {thumbs.shown:,} thumbnails.</p>
<nav><a href="#summary">Summary</a><a href="#quarantine">Quarantine</a><a href="#devices">Device models</a>
<a href="#ocr">OCR</a><a href="#distributions">Distributions</a><a href="#checklist">Checklist</a></nav>
{banner}
{"".join(body)}
</body></html>
"""
