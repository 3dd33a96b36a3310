"""Argument types for the command lines: integers with a lower bound, refused with argparse's one-line error."""

from __future__ import annotations

import argparse

__all__ = ["non_negative_int", "positive_int"]


def _bounded_int(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"must be >= {lowest}, got {value}")
    return value


def positive_int(text: str) -> int:
    """``type=`` for an option that must be an integer >= 1 (workers, strides, limits)."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """``type=`` for an option that must be an integer >= 0 (0 meaning "in-process" or "none")."""
    return _bounded_int(text, 0)
