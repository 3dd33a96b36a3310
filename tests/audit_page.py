"""Test helper (not shipped): take the audit page ``qc/index.html`` apart for its tests and the leak scan.

:class:`Page` collects every text node, style sheet and attribute (entity references decoded), the
``data-metric`` / ``data-reason`` cells, the tag names, and each embedded ``data:`` image decoded.
:func:`image_metadata` returns the non-pixel part of an embedded PNG or JPEG (the chunks or segments a
leak could hide in) and fails on any chunk or segment type a clean thumbnail does not need.
:func:`assert_page_matches_outputs` checks the page's numbers against the files of the output folder.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import struct
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

from data_prep.ingest.report import REPORT_PATH

__all__ = ["Page", "assert_page_matches_outputs", "image_metadata"]

_DATA_URI = re.compile(r"^data:(image/[a-z+]+);base64,(.*)$", re.DOTALL)


class Page(HTMLParser):
    """Parse one HTML document; see the module docstring for what it keeps."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self.styles: list[str] = []
        self._in_style = False
        self.attributes: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()
        self.metrics: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        self.images: list[tuple[str, bytes]] = []
        self.external: list[str] = []
        self._cell: tuple[dict, str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            value = value or ""
            match = _DATA_URI.match(value)
            if match:
                self.images.append((match.group(1), base64.b64decode(match.group(2), validate=True)))
                value = f"data:{match.group(1)};base64,<{len(match.group(2))} characters>"
            elif name in ("src", "href", "srcset", "poster", "data", "action") and not value.startswith("#"):
                self.external.append(value)
            self.attributes.append((tag, name, value))
        found = dict(attrs)
        for key, store in (("data-metric", self.metrics), ("data-reason", self.reasons)):
            if key in found:
                self._cell = (store, found[key] or "")
                store[self._cell[1]] = ""

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False
        if tag in ("td", "span", "code"):
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)
            return
        self.texts.append(data)
        if self._cell is not None:
            store, key = self._cell
            store[key] += data

    def handle_comment(self, data: str) -> None:
        self.texts.append(data)

    def number(self, name: str, store: str = "metrics") -> int:
        """An integer cell, thousands separators removed."""
        return int(getattr(self, store)[name].replace(",", "").strip())


def image_metadata(mime: str, raw: bytes) -> bytes:
    """Every byte of an embedded image except its compressed pixels; asserts no text/EXIF/ICC parts exist."""
    if mime == "image/png":
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        position, kept = 8, [raw[:8]]
        while position < len(raw):
            length, kind = struct.unpack(">I4s", raw[position : position + 8])
            assert kind in (b"IHDR", b"IDAT", b"IEND"), f"unexpected PNG chunk {kind!r}"
            if kind != b"IDAT":
                kept.append(raw[position : position + 12 + length])
            position += 12 + length
        return b"".join(kept)
    assert mime == "image/jpeg", f"unexpected embedded image type {mime}"
    assert raw[:2] == b"\xff\xd8"
    position, kept = 2, [raw[:2]]
    while True:
        marker = raw[position + 1]
        length = struct.unpack(">H", raw[position + 2 : position + 4])[0]
        segment = raw[position : position + 2 + length]
        # APP0 must be the JFIF header; APP1-15 (EXIF, XMP, ICC, ...) and COM (0xFE) must not exist.
        assert marker in (0xE0, 0xDB, 0xC0, 0xC1, 0xC2, 0xC4, 0xDD, 0xDA), f"unexpected JPEG marker {marker:#x}"
        if marker == 0xE0:
            assert segment[4:9] == b"JFIF\0", "APP0 is not a JFIF header"
        kept.append(segment)
        if marker == 0xDA:  # start of scan: entropy-coded pixels follow until EOI
            return b"".join(kept)
        position += 2 + length


def _expected(output: Path) -> dict:
    """The numbers the page must show, read straight from report.json, manifest.csv and quarantine.csv."""
    report = json.loads((output / "report.json").read_text())
    rows = list(csv.DictReader((output / "manifest.csv").open()))
    quarantine = list(csv.DictReader((output / "quarantine.csv").open()))
    dates = sorted(r["study_date"] for r in rows if r["study_date"])
    return {
        "report": report,
        "rows": rows,
        "reasons": Counter(f"{r['outcome']}:{r['reason']}" for r in quarantine if r["frame"] == ""),
        "dates": f"{dates[0]} to {dates[-1]}" if dates else "no dates kept",
        "key_check": json.loads((output / ".ingest_state" / "key_check.json").read_text())["key_check"],
    }


def assert_page_matches_outputs(output: Path) -> Page:
    """Every summary and reason number on the page equals report.json and the CSV files."""
    page = Page((output / REPORT_PATH).read_text(encoding="utf-8"))
    expected = _expected(output)
    report, rows = expected["report"], expected["rows"]
    for outcome in ("found", "converted", "quarantined", "skipped"):
        assert page.number(f"files.{outcome}") == report["files"][outcome]
    assert page.number("frames.written") == report["frames"]["written"] == len(rows)
    assert page.number("frames.doppler") == report["frames"]["doppler"] == sum(r["doppler"] == "1" for r in rows)
    assert page.number("frames.quarantined") == sum(report["frames"]["quarantined"].values())
    assert page.number("frames.near_duplicates_removed") == report["frames"]["near_duplicates_removed"]
    assert page.number("frames.strided_out") == report["frames"]["strided_out"]
    for key, column in (("patients", "patient"), ("studies", "study"), ("instances", "instance")):
        assert page.number(key) == report[key] == len({r[column] for r in rows})
    assert page.metrics["dates"] == expected["dates"]
    assert page.metrics["key_fingerprint"] == expected["key_check"]
    assert {k: page.number(k, "reasons") for k in page.reasons if not k.startswith("frame:")} == expected["reasons"]
    for outcome, reasons in report["reasons"].items():
        for reason, count in reasons.items():
            assert page.number(f"{outcome}:{reason}", "reasons") == count
    return page
