"""Bounded reads of HTTP response bodies: the one place that enforces containers/image's size limits.

c/image reads manifests, lookaside signatures and extension signature lists with ``iolimits.ReadAtMost`` (4 MiB
each, SPEC §8); a hostile server must not make us buffer more than that.
"""

from __future__ import annotations

from typing import Any

from atomicsig.errors import RegistryError

CHUNK = 65536


def read_at_most(resp: Any, limit: int, what: str) -> bytes:
    """The streamed body of ``resp`` (a requests.Response), or RegistryError once it exceeds ``limit`` bytes."""
    buf = bytearray()
    for chunk in resp.iter_content(CHUNK):
        buf += chunk
        if len(buf) > limit:
            raise RegistryError(f"{what} is larger than {limit} bytes")
    return bytes(buf)
