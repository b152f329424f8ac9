"""JSON objects with duplicate keys refused, as Go's strict decoders in containers/image refuse them.

Python's json keeps the last value of a repeated key silently; a signature payload or a policy.json that
containers/image would reject must not be accepted (or rewritten) by us.
"""

from __future__ import annotations

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
