"""Interpret values that reach a bundle config from the command line.

python-fire passes ``true`` / ``false`` as strings, and ``monai.bundle`` silently drops an
override whose value is Python ``None`` (``--x None`` or a JSON ``null`` in an args file), so
"switch this off" has to travel as a string such as ``none``.
"""

from __future__ import annotations

from typing import Any

from ultradino_monai.utils.errors import UserInputError

__all__ = ["as_bool", "optional_path", "optional_int", "check_count", "require_dataset_dir"]

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


def optional_int(name: str, value: Any) -> int | None:
    """An integer option that can be switched off (``None`` or ``none/null/off/""``); ``2.5`` or ``"x"`` raise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NO_PATH):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserInputError(f"--{name} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise UserInputError(f"--{name} must be an integer, got {value!r}") from None


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (batch sizes, epochs, iterations); bools, floats and text raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserInputError(f"--{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise UserInputError(f"--{name} must be >= {minimum}, got {value}")
    return value


def require_dataset_dir(dataset_dir: Any) -> str:
    """A non-empty ``--dataset_dir`` value (``""`` would silently mean the current folder)."""
    if dataset_dir is None or not str(dataset_dir).strip():
        raise UserInputError(
            "--dataset_dir is empty", hint="pass the folder of a converted dataset (the one holding datalist.json)"
        )
    return str(dataset_dir)
