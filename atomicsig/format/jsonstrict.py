"""JSON objects with duplicate keys refused, as Go's strict decoders in containers/image refuse them.

Python's json keeps the last value of a repeated key silently; a signature payload or a policy.json that
containers/image would reject must not be accepted (or rewritten) by us.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any


class DuplicateKeyError(ValueError):
    """A JSON object repeats a key."""


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for json.loads that raises DuplicateKeyError on a repeated key."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKeyError(f"duplicate key {k!r}")
        out[k] = v
    return out


_WS = re.compile(r"[ \t\n\r]*")


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a character offset, the way editors count (Go's json errors give only the
    offset, Python's give both; a user needs ``file:line:col`` either way)."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


JsonPath = tuple[str | int, ...]


def _walk(text: str, on_value: Callable[[JsonPath, int, int], None] | None = None,
          on_duplicate: Callable[[int, int], None] | None = None) -> None:
    """The one walk over a JSON document's values that knows where each starts (``json`` gives no positions).

    ``on_value(path, key offset, value offset)`` for every value (path: object keys and array indexes; the key
    offset is the value's own in an array or at the top); ``on_duplicate(offset, first)`` for an object key
    repeating an earlier key of the same object (it may raise to stop the walk). On text that is not JSON it
    raises IndexError, ValueError or RecursionError; its callers treat that as "no position".
    """
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        m = _WS.match(text, i)
        return m.end() if m else i

    def value(i: int, path: JsonPath, key_at: int) -> int:
        i = skip(i)
        if on_value is not None:
            on_value(path, key_at if key_at >= 0 else i, i)
        if text[i] == "{":
            i = skip(i + 1)
            seen: dict[Any, int] = {}
            if text[i] == "}":
                return i + 1
            while True:
                start = i
                key, i = decoder.raw_decode(text, i)  # a JSON string: the key
                if on_duplicate is not None:
                    if key in seen:
                        on_duplicate(start, seen[key])
                    seen[key] = start
                i = value(skip(i) + 1, (*path, str(key)), start)  # past the ':'
                i = skip(i)
                if text[i] == ",":
                    i = skip(i + 1)
                    continue
                return i + 1
        if text[i] == "[":
            i = skip(i + 1)
            if text[i] == "]":
                return i + 1
            n = 0
            while True:
                i = skip(value(i, (*path, n), -1))
                n += 1
                if text[i] == ",":
                    i += 1
                    continue
                return i + 1
        return int(decoder.raw_decode(text, i)[1])

    value(0, (), -1)


def duplicate_key_offset(text: str) -> tuple[int, int] | None:
    """Offsets of the first object key that repeats an earlier key of the same object, and of that earlier key.

    :func:`no_duplicate_keys` knows *that* a key repeats, not *where* (``object_pairs_hook`` gets no positions);
    this walk finds it so the error can name the line. Anything unexpected (the text is not valid JSON after
    all) gives None: the caller then reports the duplicate without a position.
    """

    def found(offset: int, first: int) -> None:
        raise _Found(offset, first)

    try:
        _walk(text, on_duplicate=found)
    except _Found as stop:
        return stop.offset, stop.first
    except (IndexError, ValueError, RecursionError):
        return None
    return None


class _Found(Exception):
    def __init__(self, offset: int, first: int) -> None:
        super().__init__(offset)
        self.offset, self.first = offset, first


def value_offsets(text: str) -> dict[JsonPath, tuple[int, int]]:
    """Where each value of a valid JSON document starts: path (object keys and array indexes) → (offset of its
    key, or of the value itself in an array or at the top, offset of the value). Empty if the text does not
    parse (positions are a convenience for error messages, never a second parser's opinion of validity)."""
    out: dict[JsonPath, tuple[int, int]] = {}

    def record(path: JsonPath, key_at: int, at: int) -> None:
        out[path] = (key_at, at)

    try:
        _walk(text, on_value=record)
    except (IndexError, ValueError, RecursionError):
        return {}
    return out
