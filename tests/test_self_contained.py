"""The repository stands alone: no tracked text points at files outside it.

Every tracked text file (``git ls-files``; binaries skipped) is scanned line by line for:

* paths into a workspace outside the clone (a shared reference folder next to the clone, an absolute
  workspace path) and bare names of reference notes kept outside the repository;
* capitalised Markdown file names (like the top-level README) that are not a tracked file;
* ``docs/<page>.md`` paths that do not exist;
* section citations (the section sign followed by a number) that are not preceded on the same line
  by a tracked Markdown path, or whose numbered heading does not exist in that file. Inside a
  Markdown file a citation without a path refers to the file itself.

A failure names ``file:line`` and the reason. The patterns are assembled at run time so that this
file does not match them itself.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SECTION = chr(0xA7)  # the section sign
JSON_ESCAPED_SECTION = "\\" + "u00a7"  # how json.dumps(ensure_ascii=True) writes it

#: Fragments that can only mean a location outside the repository.
FORBIDDEN = [
    (re.compile(r"\b" + "shared" + r"/reference\b"), "points into a shared reference folder outside the repository"),
    (re.compile(r"\.\./" + "shared" + r"\b"), "points at a shared folder next to the clone"),
    (re.compile("/" + "work" + "/"), "points at an absolute workspace path"),
    (re.compile(r"(?<![\w/.-])" + "reference" + r"/\w+\.md\b"), "names a reference note that is not in the repository"),
]

MD_PATH = re.compile(r"[\w./-]+\.md\b")
CAPITAL_MD = re.compile(r"(?<![\w/.-])([A-Z][A-Z0-9_]*\.md)\b")
DOCS_PATH = re.compile(r"(?<![\w/.-])((?:\.\./)*docs/[\w.-]+\.md)\b")
CITATION = re.compile(re.escape(SECTION) + r"\s?(\d+(?:\.\d+)*)?")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s")


def _tracked_files() -> list[str]:
    # the scan is defined over the tracked files: outside a git checkout it fails rather than passes empty
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    return [p for p in out.decode("utf-8").split("\0") if p]


def _read_text(rel: str) -> str | None:
    """The file's text, or ``None`` for binaries (NUL bytes or not UTF-8) and vanished files."""
    try:
        data = (ROOT / rel).read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@cache
def _sections(rel: str) -> frozenset[str]:
    """Numbers of the numbered Markdown headings of tracked file ``rel`` (``"2"``, ``"2.3"``, ...)."""
    text = _read_text(rel) or ""
    found = set()
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match:
            found.add(match.group(1))
    return frozenset(found)


def _resolve(token: str, rel: str, tracked: frozenset[str]) -> str | None:
    """The tracked path ``token`` names, relative to the repository root or to ``rel``'s folder."""
    for base in (Path(), Path(rel).parent):
        candidate = (base / token).as_posix()
        parts: list[str] = []
        for part in candidate.split("/"):
            if part == "..":
                if not parts:
                    break
                parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        else:
            normalised = "/".join(parts)
            if normalised in tracked:
                return normalised
    return None


def line_problems(rel: str, line: str, tracked: frozenset[str]) -> list[str]:
    """Reasons why ``line`` of tracked file ``rel`` points outside the repository (empty if it does not)."""
    line = line.replace(JSON_ESCAPED_SECTION, SECTION)
    problems = [reason for pattern, reason in FORBIDDEN if pattern.search(line)]
    basenames = {Path(p).name for p in tracked}
    for match in CAPITAL_MD.finditer(line):
        if match.group(1) not in basenames:
            problems.append(f"names {match.group(1)}, which is not a file in the repository")
    for match in DOCS_PATH.finditer(line):
        if _resolve(match.group(1), rel, tracked) is None:
            problems.append(f"names {match.group(1)}, which does not exist")
    for match in CITATION.finditer(line):
        number = match.group(1)
        if number is None:
            problems.append("section sign without a section number")
            continue
        paths = list(MD_PATH.finditer(line, 0, match.start()))
        if paths:
            token = paths[-1].group(0)
            target = _resolve(token, rel, tracked)
            if target is None:
                problems.append(f"cites {token} {SECTION}{number}, but {token} is not a file in the repository")
                continue
        elif rel.endswith(".md"):
            target = rel
        else:
            problems.append(f"bare {SECTION}{number} citation: name the repository document (e.g. docs/recipe.md)")
            continue
        if number not in _sections(target):
            problems.append(f"cites {target} {SECTION}{number}, which has no such numbered heading")
    return problems


def test_line_checker_flags_outside_pointers():
    """The checker itself: each kind of outside pointer is caught, repository citations pass."""
    tracked = frozenset(_tracked_files())
    sign = SECTION
    bad = {
        "x.py": [
            f"see {sign}2.3",
            "see " + "shared" + "/reference/notes.md",
            "see " + "reference" + "/notes.md",
            "see /" + "work" + "/main",
            "see " + "PAPER_RESULTS" + ".md",
            f"see docs/recipe.md {sign}99.9",
            "see docs/" + f"nonexistent_page.md {sign}1",
            "see docs/" + "nonexistent_page.md",
        ],
        "x.json": [f'"_comment": "recipe {JSON_ESCAPED_SECTION}1.4"'],
    }
    for rel, lines in bad.items():
        for line in lines:
            assert line_problems(rel, line, tracked), line
    good = [
        ("x.py", f"see docs/recipe.md {sign}2.3 and {sign}2.4"),
        ("x.py", f"(`docs/datasets.md` {sign}1.1)"),
        ("docs/recipe.md", f"as in {sign}2.4"),
        ("x.py", "see README.md and docs/design.md"),
    ]
    for rel, line in good:
        assert line_problems(rel, line, tracked) == [], line


def test_no_tracked_text_points_outside_the_repository():
    tracked = frozenset(_tracked_files())
    failures = []
    for rel in sorted(tracked):
        text = _read_text(rel)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            failures.extend(f"{rel}:{number}: {reason}" for reason in line_problems(rel, line, tracked))
    assert not failures, f"{len(failures)} pointer(s) outside the repository:\n" + "\n".join(failures)
