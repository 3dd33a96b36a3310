"""Shared fixtures.

``demo_backbone`` is the backbone export that the slow downstream tests compare against random init:
``$ULTRADINO_PRETRAINED_BACKBONE`` when set (for example an untrained export, to check that a test
fails on a backbone that learned nothing), else ``bundles/pretrain/models/backbone.pt`` when the
main command has been run in this checkout, else the main command is run once per test session
(about 8 minutes on 2 cores) and its export is shared by every test that asks for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_backbone(tmp_path_factory) -> Path:
    """Path of a ``backbone.pt`` export of the pretrain bundle's demo (its ``backbone.json`` beside it)."""
    configured = os.environ.get("ULTRADINO_PRETRAINED_BACKBONE")
    if configured:
        backbone = Path(configured)
        assert backbone.is_file(), f"ULTRADINO_PRETRAINED_BACKBONE={configured} is not a file"
        return backbone
    shipped = REPO / "bundles" / "pretrain" / "models" / "backbone.pt"
    if shipped.is_file():
        return shipped
    root = tmp_path_factory.mktemp("demo_pretrain")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "bundles/pretrain/configs/train.json",
            "--bundle_root",
            str(root),
            "--output_dir",
            str(root / "runs" / "demo"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    backbone = root / "models" / "backbone.pt"
    assert backbone.is_file() and backbone.with_suffix(".json").is_file()
    return backbone
