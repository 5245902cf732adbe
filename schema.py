"""Declarative checks of JSON-like values: types, ranges and finiteness, in one place.

A spec checks one value and returns it (converted where that is lossless, e.g. a JSON list to
a tuple); a failure raises :class:`SchemaError` naming the field path, e.g. ``settings.order:
1000000000 is above 8``. Typed settings (``runtime/settings.py``), map-bundle headers
(``runtime/mapfiles/bundle.py``) and engine manifests (``engines/manifest.py``) are all checked with
these specs; a frozen dataclass whose fields carry a spec in ``metadata["spec"]`` (see
:func:`setting`) is parsed with :func:`parse`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from segvlad_edge.errors import SegvladError, printable

MAX_JSON_DEPTH = 8
MAX_JSON_ITEMS = 4096
MAX_STR = 4096


class SchemaError(SegvladError, ValueError):
    """A value does not fit its schema; the message names the field and the problem."""


def _fail(path: str, text: str):
    raise SchemaError(f"{path}: {text}" if path else text)


def _show(value) -> str:
    text = printable(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Int:
    """An integer (not a bool) in ``[lo, hi]``."""
    lo: int
    hi: int

    def check(self, v, path: str = ""):
        if isinstance(v, bool) or not isinstance(v, int):
            _fail(path, f"{_show(v)} is not an integer")
        if v < self.lo:
            _fail(path, f"{v} is below {self.lo}")
        if v > self.hi:
            _fail(path, f"{v} is above {self.hi}")
        return v


@dataclass(frozen=True)
class Float:
    """A finite number in ``[lo, hi]`` (integers accepted, returned as float)."""
    lo: float = -math.inf
    hi: float = math.inf

    def check(self, v, path: str = ""):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _fail(path, f"{_show(v)} is not a number")
        v = float(v)
        if not math.isfinite(v):
            _fail(path, f"{v} is not finite")
        if not self.lo <= v <= self.hi:
            _fail(path, f"{v} is outside [{self.lo}, {self.hi}]")
        return v


@dataclass(frozen=True)
class Bool:
    def check(self, v, path: str = ""):
        if not isinstance(v, bool):
            _fail(path, f"{_show(v)} is not true/false")
        return v


@dataclass(frozen=True)
class Str:
    """A string: one of ``choices``, or matching ``pattern`` (full match; ``what`` says what a
    mismatch is), at most ``max_len`` long."""
    choices: tuple = ()
    pattern: str | None = None
    max_len: int = MAX_STR
    what: str = "malformed"

    def check(self, v, path: str = ""):
        if not isinstance(v, str):
            _fail(path, f"{_show(v)} is not a string")
        if self.choices and v not in self.choices:
            _fail(path, f"{_show(v)} is not one of {', '.join(self.choices)}")
        if len(v) > self.max_len:
            _fail(path, f"longer than {self.max_len} characters")
        if self.pattern is not None and not re.fullmatch(self.pattern, v):
            _fail(path, f"{_show(v)} is {self.what}")
        return v


@dataclass(frozen=True)
class Optional:
    """``None`` or a value of ``spec``."""
    spec: Any

    def check(self, v, path: str = ""):
        return None if v is None else self.spec.check(v, path)


@dataclass(frozen=True)
class OneOf:
    """A value of the first of ``specs`` that accepts it (e.g. one count or a list of counts)."""
    specs: tuple

    def check(self, v, path: str = ""):
        for spec in self.specs[:-1]:
            try:
                return spec.check(v, path)
            except SchemaError:
                pass
        return self.specs[-1].check(v, path)


@dataclass(frozen=True)
class List:
    """A list (or tuple) of ``lo..hi`` items of ``item``; returned as a tuple."""
    item: Any
    lo: int = 0
    hi: int = MAX_JSON_ITEMS

    def check(self, v, path: str = ""):
        if not isinstance(v, (list, tuple)):
            _fail(path, f"{_show(v)} is not a list")
        if not self.lo <= len(v) <= self.hi:
            _fail(path, f"has {len(v)} items, expected {self.lo}..{self.hi}")
        return tuple(self.item.check(x, f"{path}[{i}]") for i, x in enumerate(v))


@dataclass(frozen=True)
class Obj:
    """A dict with the named ``fields`` (each a spec) and no others; the ``optional`` ones (or,
    with ``partial``, all: a segmenter's overrides of its defaults) may be missing."""
    fields: dict = field(default_factory=dict)
    partial: bool = False
    optional: tuple = ()

    def check(self, v, path: str = ""):
        if not isinstance(v, dict):
            _fail(path, f"{_show(v)} is not an object")
        unknown = sorted(set(v) - set(self.fields), key=str)
        if unknown:
            _fail(path, f"unknown field(s) {', '.join(map(_show, unknown))}")
        missing = [] if self.partial else [k for k in self.fields if k not in v and k not in self.optional]
        if missing:
            _fail(path, f"missing field(s) {', '.join(missing)}")
        return {k: self.fields[k].check(x, _join(path, k)) for k, x in v.items()}


@dataclass(frozen=True)
class Json:
    """Any JSON value with finite numbers, at most MAX_JSON_DEPTH deep and MAX_JSON_ITEMS wide
    per container (free-form metadata)."""

    def check(self, v, path: str = "", depth: int = 0):
        if depth > MAX_JSON_DEPTH:
            _fail(path, f"nested deeper than {MAX_JSON_DEPTH}")
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, float)):
            return v if isinstance(v, int) else Float().check(v, path)
        if isinstance(v, (list, tuple, dict)) and len(v) > MAX_JSON_ITEMS:
            _fail(path, f"has more than {MAX_JSON_ITEMS} items")
        if isinstance(v, (list, tuple)):
            return [self.check(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v)]
        if isinstance(v, dict):
            return {Str().check(k, path): self.check(x, _join(path, k), depth + 1) for k, x in v.items()}
        _fail(path, f"{_show(v)} is not a JSON value")


@dataclass(frozen=True)
class Record:
    """A nested frozen dataclass, parsed with :func:`parse`."""
    cls: Any

    def check(self, v, path: str = ""):
        return v if isinstance(v, self.cls) else parse(self.cls, v, path)


FILE_NAME = Str(pattern=r"(?!\.\.?$)[^/\\\x00-\x1f\x7f]+", max_len=255,
               what="unsafe: not a plain file name (no folder, backslash or control character)")


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def setting(default, spec):
    """A dataclass field with its default and its spec: one line per setting."""
    kw = {"default_factory": lambda: default} if isinstance(default, (dict, list)) else {"default": default}
    return field(metadata={"spec": spec}, **kw)


def check_fields(obj, path: str = "") -> None:
    """Check every field of the dataclass instance ``obj`` against its spec, storing the checked
    (converted) value; call from ``__post_init__``."""
    for f in dataclasses.fields(obj):
        spec = f.metadata.get("spec")
        if spec is not None:
            object.__setattr__(obj, f.name, spec.check(getattr(obj, f.name), _join(path, f.name)))


def parse(cls, data, path: str = ""):
    """``data`` (a dict from JSON) as the frozen dataclass ``cls``: every field present, no
    unknown ones, each value checked by its spec (and the class's own cross-field checks in
    ``__post_init__``). Raises SchemaError naming the field."""
    specs = {f.name: f.metadata.get("spec", _ANY) for f in dataclasses.fields(cls) if f.init}
    values = Obj(specs).check(data, path)
    try:
        return cls(**values)
    except SchemaError as e:
        raise SchemaError(f"{path}: {e}" if path else str(e)) from None


class _Unchecked:
    def check(self, v, path: str = ""):
        return v


_ANY = _Unchecked()
