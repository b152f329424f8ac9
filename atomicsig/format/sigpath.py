"""The lookaside path grammar, once: ``<repo path>@sha256=<hex>/signature-<N>`` (SPEC §3)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from atomicsig.errors import InputError
from atomicsig.format import reference
from atomicsig.format.reference import parse as parse_reference
from atomicsig.format.reference import validate_digest

#: c/image fails a read that reaches this index, so at most 127 signatures are usable per image.
MAX_LOOKASIDE_SIGNATURES = 128


_SIG_NAME = re.compile(r"^signature-([1-9][0-9]*)$")


def digest_dirname(repo_path: str, digest: str) -> str:
    """``<repo path>@sha256=<hex>``, validated so it cannot contain ``..`` or a leading ``/``."""
    algo, hexpart = validate_digest(digest).split(":", 1)
    if not repo_path or repo_path.startswith("/") or ".." in repo_path.split("/") or "//" in repo_path \
            or os.path.normpath(repo_path) != repo_path:
        raise InputError(f"invalid repository path {repo_path!r}")
    return f"{repo_path}@{algo}={hexpart}"


def repo_path(text: str) -> str:
    """Validate a repository path with the one reference parser (SPEC §7.2); ``..`` and ``//`` cannot pass."""
    try:
        ref = reference.parse(f"registry.invalid/{text}")
    except InputError:
        raise InputError(f"invalid repository path {text[:200]!r}") from None
    if ref.path != text or not ref.name_only:
        raise InputError(f"invalid repository path {text[:200]!r}")
    return text


_RELPATH = re.compile(r"^(?P<repo>[^@\s]+)@sha256=(?P<hex>[a-f0-9]{64})/signature-(?P<n>[1-9][0-9]{0,2})$")


@dataclass(frozen=True)
class SigPath:
    """A validated ``<repo path>@sha256=<hex>/signature-N`` path, relative to a sigstore root."""

    repo: str
    digest: str
    index: int

    @property
    def dirname(self) -> str:
        return digest_dirname(self.repo, self.digest)

    def __str__(self) -> str:
        return f"{self.dirname}/signature-{self.index}"


def parse_sigpath(relpath: str) -> SigPath:
    """Validate a signature path from a peer strictly: repo grammar of reference.py, sha256 digest, N < 128.

    Everything a peer names ends up as a local path, so anything that is not exactly this shape is refused
    (no ``..``, no absolute paths, no uppercase, no other algorithms).
    """
    m = _RELPATH.match(relpath)
    if not m:
        raise InputError(f"invalid signature path {relpath[:200]!r}")
    repo, n = m.group("repo"), int(m.group("n"))
    try:
        ref = parse_reference(f"localhost/{repo}")
    except InputError as exc:
        raise InputError(f"invalid repository path in {relpath[:200]!r}") from exc
    if ref.domain != "localhost" or ref.path != repo or not ref.name_only or n >= MAX_LOOKASIDE_SIGNATURES:
        raise InputError(f"invalid signature path {relpath[:200]!r}")
    sp = SigPath(repo, "sha256:" + m.group("hex"), n)
    digest_dirname(sp.repo, sp.digest)  # the lookaside's own checks, once more
    return sp
