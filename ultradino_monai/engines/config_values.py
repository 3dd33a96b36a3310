"""Interpret values that reach a bundle config from the command line.

python-fire passes ``true`` / ``false`` as strings, and ``monai.bundle`` silently drops an
override whose value is Python ``None`` (``--x None`` or a JSON ``null`` in an args file), so
"switch this off" has to travel as a string such as ``none``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["as_bool", "optional_path"]

_TRUE = ("1", "true", "yes", "on", "applied")
_FALSE = ("0", "false", "no", "off", "none", "")
_NO_PATH = ("", "none", "null", "off", "false", "scratch", "random")


def as_bool(value: Any) -> bool:
    """``true/yes/on/1`` -> True, ``false/no/off/none/0/""`` -> False (any case); other strings raise."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false), got {value!r}")
    return bool(value)


def optional_path(value: Any) -> str | None:
    """A path that can be switched off: None, False or one of ``none/null/off/false/scratch/random/""``
    (any case) -> None; anything else -> the stripped path string."""
    if value is None or value is False:
        return None
    text = str(value).strip()
    return None if text.lower() in _NO_PATH else text
