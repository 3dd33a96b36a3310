"""Errors in what the user gave (a datalist, an argument, a file) and the one-line exit the bundles give them.

A run that fails on user input should say what is wrong in one line, not in a chain of tracebacks.
``python -m monai.bundle run`` gives no place to catch errors: python-fire lets exceptions through, and
MONAI's config parser wraps every failing expression in ``RuntimeError("Failed to evaluate ...") from error``.
So the bundles use the interpreter's own last word, :data:`sys.excepthook`: :func:`install_excepthook` (called
when a bundle config imports :mod:`ultradino_monai.engines`) finds a :class:`UserInputError` anywhere in the
``__cause__`` / ``__context__`` chain, prints ``error: <message>`` (and ``hint: <hint>`` when there is one) and
exits with status 2, the convention of argparse and of this project's command lines. Anything else keeps
Python's full traceback (exit 1). ``--debug`` on the command line or ``ULTRADINO_DEBUG=1`` shows the traceback
for user errors too.
"""

from __future__ import annotations

import atexit
import os
import sys
from types import TracebackType

__all__ = [
    "UserInputError",
    "MissingInputError",
    "find_user_error",
    "debug_requested",
    "install_excepthook",
    "USER_ERROR_EXIT_CODE",
]

#: exit status of a run stopped by bad input (argparse's usage-error status)
USER_ERROR_EXIT_CODE = 2
_FALSE_WORDS = ("0", "false", "no", "off", "none", "")


class UserInputError(ValueError):
    """Something the user passed is wrong: a datalist, a file it names, an argument value.

    Args:
        message: what is wrong, naming the file / entry / value (one line).
        hint: optional: what to do about it (printed on a second line by the bundle exit hook).
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __reduce__(self):
        # keep the hint when the error crosses a process boundary (DataLoader workers, multiprocessing)
        return type(self), (str(self), self.hint)


def find_user_error(error: BaseException | None) -> UserInputError | None:
    """The first :class:`UserInputError` in ``error`` or its ``__cause__`` / ``__context__`` chain (cycle-safe)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserInputError):
            return error
        seen.add(id(error))
        error = error.__cause__ if error.__cause__ is not None else error.__context__
    return None


def debug_requested(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> bool:
    """``ULTRADINO_DEBUG`` set to a true value, or ``--debug`` on the command line (``--debug false`` is off)."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if environ.get("ULTRADINO_DEBUG", "").strip().lower() not in _FALSE_WORDS:
        return True
    for index, argument in enumerate(argv):
        if argument == "--debug":
            following = argv[index + 1] if index + 1 < len(argv) else ""
            return following.strip().lower() not in ("0", "false", "no", "off")
        if argument.startswith("--debug="):
            return argument.split("=", 1)[1].strip().lower() not in _FALSE_WORDS
    return False


def _exit_hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    user_error = find_user_error(error)
    if user_error is None or debug_requested():
        _previous_hook(kind, error, trace)
        if user_error is None:
            return
        sys.stderr.flush()  # the traceback first, then the one line
    # sys.__stderr__: torch.distributed's elastic agent may have swapped sys.stderr by now
    stream = sys.__stderr__
    stream.write(f"error: {user_error}\n")
    if user_error.hint:
        stream.write(f"hint: {user_error.hint}\n")
    # The interpreter would exit with 1 after this hook; run the exit handlers (logging, multiprocessing)
    # ourselves, then leave with the user-error status.
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        os._exit(USER_ERROR_EXIT_CODE)


_previous_hook = sys.excepthook


def install_excepthook() -> None:
    """Make an uncaught :class:`UserInputError` (anywhere in the chain) end the process with one line and status 2.

    Idempotent; other exceptions go to the hook that was installed before (Python's traceback printer).
    """
    global _previous_hook
    if sys.excepthook is _exit_hook:
        return
    _previous_hook = sys.excepthook if sys.excepthook is not None else sys.__excepthook__
    sys.excepthook = _exit_hook


class MissingInputError(UserInputError, FileNotFoundError):
    """A file or folder the user named (or that a previous step should have written) does not exist.

    Both a :class:`UserInputError` (one-line exit) and a ``FileNotFoundError`` (for callers that catch that).
    """
