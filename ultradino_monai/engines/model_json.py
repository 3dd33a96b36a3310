"""``model.json``: the description stored next to a fine-tuned downstream model's ``model.pt``.

The segmentation and classification bundles save the trained network as a plain state dict and,
next to it, a JSON document tagged with a ``format`` string (``ultradino_monai.segmenter`` /
``ultradino_monai.classifier``) that holds what is needed to rebuild the network and feed it:
architecture, labels or classes, input size, normalisation, the starting backbone's provenance.
Evaluation, inference and export rebuild the model from that file alone. Each engine builds its
own document; these two functions are the one way to write and read one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ultradino_monai.utils.distributed import is_main_process
from ultradino_monai.utils.errors import MissingInputError
from ultradino_monai.utils.files import write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["write_model_json", "read_model_json"]


def write_model_json(path: str | os.PathLike, document: Mapping[str, Any]) -> Path:
    """Write ``document`` to ``path`` atomically, on the main process only; returns ``path``."""
    path = Path(path)
    if is_main_process():
        write_json_atomic(path, dict(document))
        logger.info("wrote the model description %s", path)
    return path


def read_model_json(path: str | os.PathLike, expected_format: str, what: str, missing_hint: str) -> dict[str, Any]:
    """Read a ``model.json`` and check its ``format`` tag.

    Raises:
        FileNotFoundError: ``path`` does not exist (``missing_hint`` says which run writes it).
        ValueError: the file's ``format`` is not ``expected_format`` (``what`` names the expected kind).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} not found: {missing_hint}")
    document = json.loads(path.read_text())
    if document.get("format") != expected_format:
        raise ValueError(f"{path} is not a {what} (format {document.get('format')!r})")
    return document
