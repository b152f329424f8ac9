"""Canonical S-expressions, the encoding gpg-agent uses for signature values (``(7:sig-val(3:rsa(1:s…)))``).

Only the canonical form is read: ``(`` list ``)`` and ``<decimal length>:<bytes>`` atoms, optionally preceded by
a ``[display hint]`` atom, which is dropped. That is all libgcrypt emits with GCRYSEXP_FMT_CANON; anything else
is rejected rather than guessed at, because the bytes become OpenPGP MPIs.
"""

from __future__ import annotations

from atomicsig.errors import GPGError

Sexp = bytes | list["Sexp"]

_MAX_DEPTH = 16


class SexpError(GPGError):
    """Bytes that are not a canonical S-expression."""


def parse(data: bytes) -> Sexp:
    """Parse exactly one canonical S-expression (trailing NULs, which gpg-agent may append, are ignored)."""
    value, end = _parse(data, 0, 0)
    if data[end:].strip(b"\x00"):
        raise SexpError("trailing bytes after the S-expression")
    return value


def _parse(data: bytes, i: int, depth: int) -> tuple[Sexp, int]:
    if depth > _MAX_DEPTH:
        raise SexpError("S-expression nested too deeply")
    if i >= len(data):
        raise SexpError("truncated S-expression")
    if data[i : i + 1] == b"(":
        items: list[Sexp] = []
        i += 1
        while True:
            if i >= len(data):
                raise SexpError("unterminated list in S-expression")
            if data[i : i + 1] == b")":
                return items, i + 1
            if data[i : i + 1] == b"[":  # display hint: [atom]atom — keep the atom only
                _, i = _atom(data, i + 1)
                if data[i : i + 1] != b"]":
                    raise SexpError("malformed display hint")
                i += 1
            item, i = _parse(data, i, depth + 1)
            items.append(item)
    return _atom(data, i)


def _atom(data: bytes, i: int) -> tuple[bytes, int]:
    colon = data.find(b":", i, i + 10)
    digits = data[i:colon] if colon != -1 else b""
    if not digits.isdigit() or (len(digits) > 1 and digits.startswith(b"0")):
        raise SexpError("malformed atom length in S-expression")
    n = int(digits)
    start = colon + 1
    if start + n > len(data):
        raise SexpError("truncated atom in S-expression")
    return data[start : start + n], start + n


def find(expr: Sexp, name: bytes) -> list[Sexp] | None:
    """The first list (depth-first) whose head atom is ``name``."""
    if isinstance(expr, list):
        if expr and expr[0] == name:
            return expr
        for item in expr:
            hit = find(item, name)
            if hit is not None:
                return hit
    return None


def value(expr: Sexp, name: bytes) -> bytes | None:
    """The atom in ``(name atom)`` anywhere inside ``expr``."""
    hit = find(expr, name)
    if hit is None or len(hit) != 2 or not isinstance(hit[1], bytes):
        return None
    return hit[1]
