"""One logging setup for every command-line entry point (ultradino_monai.utils.logs)."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

from ultradino_monai.utils.logs import LOG_FORMAT

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ultradino_monai", "data_prep", "nnunet_baselines", "benchmarks")


def test_setup_logging_filters_by_level_and_uses_the_shared_format():
    code = (
        "import logging; from ultradino_monai.utils.logs import setup_logging; "
        "setup_logging(logging.WARNING); log = logging.getLogger('probe'); "
        "log.info('quiet line'); log.warning('loud line')"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - probe - WARNING - loud line", lines[0]), lines[0]


def test_no_entry_point_configures_logging_on_its_own():
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "ultradino_monai" / "utils" / "logs.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Attribute) and node.attr in ("basicConfig", "fileConfig", "dictConfig"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"configure logging through ultradino_monai.utils.logs.setup_logging: {offenders}"


def test_bundles_log_in_the_same_format():
    for conf in sorted(ROOT.glob("bundles/*/configs/logging.conf")):
        parser = configparser.RawConfigParser()
        parser.read(conf)
        formats = [parser[section]["format"] for section in parser.sections() if section.startswith("formatter_")]
        assert formats == [LOG_FORMAT], conf
