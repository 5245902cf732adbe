"""The one family of user-facing errors.

Every error a user can cause or fix (a bad file, a missing engine, an impossible option)
derives from :class:`SegvladError`; the CLI prints those as one ``error:`` line (exit 1) and
treats anything else as a bug in segvlad-edge. Each module keeps its own subclass (named for
what went wrong, e.g. ``BundleError``, ``ImageError``); the subclasses also keep the builtin
base they always had (ValueError / RuntimeError), so ``except ValueError`` still catches them.
This module sits below every layer (apps -> export -> calib -> runtime -> engines -> here).
"""
from __future__ import annotations

import importlib
from types import ModuleType


class SegvladError(Exception):
    """A user-facing error; the message says what is wrong and where, in one line."""


class SourceError(SegvladError, RuntimeError):
    """A source cannot be opened or read: a frame source (camera, video, image folder) or a
    checkpoint to export; the message says which and why."""


class FileSafetyError(SegvladError, OSError):
    """An output that would replace an input or a special file, or an input that is not a
    regular file (FIFO, device, socket)."""


def require(module: str, extra: str | None, needed_by: str, error: type[SegvladError] = SegvladError,
            how: str | None = None) -> ModuleType:
    """The optional module ``module`` (dotted name), imported; else ``error`` in one line: what
    ``needed_by`` needs (the package that is missing) and how to get it, by default the
    setup.cfg ``extra`` to install (None: a core package, ``pip install <it>``); ``how`` replaces that
    advice where the package does not come from PyPI. An ImportError raised inside
    segvlad-edge itself is a bug and propagates."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = (e.name or module).split(".")[0]
        if missing == __package__:
            raise
        if how is None:
            how = (f"install the [{extra}] extra (`pip install 'segvlad-edge[{extra}]'`)" if extra
                   else f"`pip install {missing}`")
        raise error(f"{needed_by} needs {missing}: {how}") from None


def printable(text: str) -> str:
    """``text`` with control characters (newlines, escapes, NUL) written as Python escapes, so a
    file name cannot forge extra output lines; other characters (accents, CJK) are kept."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
