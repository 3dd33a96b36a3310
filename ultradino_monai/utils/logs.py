"""One logging setup for the command-line entry points.

The bundles configure logging through their ``configs/logging.conf``, which MONAI's bundle
runner reads. Every ``python -m ...`` tool of this project calls :func:`setup_logging`
instead, with the same line format, so the logs of one pipeline (ingest, convert, pretrain,
evaluate) read alike.
"""

from __future__ import annotations

import logging

__all__ = ["LOG_FORMAT", "setup_logging"]

#: the bundles' ``logging.conf`` uses the same format
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Send log records at ``level`` and above to stderr in :data:`LOG_FORMAT`.

    Like :func:`logging.basicConfig`, it does nothing when the root logger already has a
    handler, so a tool called from another one (or from a test) keeps the caller's setup.
    """
    logging.basicConfig(level=level, format=LOG_FORMAT)
