"""The lookaside path grammar, once: ``<repo path>@<algo>=<hex>/signature-<N>`` (SPEC §3.1, §3.2).

Every module that builds or reads such a path — the directory store, the HTTP lookaside, ``serve``'s routes, the
sync journal, ``prune``, the origin records — goes through this module, so they all accept and refuse the same
strings. Three parts, each defined here and nowhere else:

* the **repository path**: the reference path grammar (SPEC §7.2: lowercase components joined by ``/``), at most
  :data:`MAX_REPO_PATH` characters — the longest path any valid reference can have (a name is at most 255
  characters, and the shortest registry host, such as ``a.b``, takes 4 of them with its ``/``). A repository path
  therefore never holds ``..``, ``//``, a leading ``/``, ``@`` or whitespace.
* the **digest**: go-digest's algorithms with their exact lengths (:func:`reference.validate_digest`) for what a
  reader may *ask for*; ``sha256`` only for what a store *holds* (:data:`STORED_ALGORITHM`): nodes look
  signatures up and match them by the image's sha256 digest (SPEC §2.3, §3.1), so a signature under another
  algorithm is never read, and the journal cannot name one.
* the **name** ``signature-N``, decimal without leading zeros. A store holds ``signature-1`` … ``signature-127``;
  readers also open ``signature-128``, because that is how containers/image notices an overfull list (it fails
  once index 128 exists, SPEC §3.2, §8): one constant, :data:`MAX_LOOKASIDE_SIGNATURES`.

Builders validate what they build; parsers are exact inverses (``parse(build(x)) == x``), with ``\\Z`` anchors so a
trailing newline never slips through.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from atomicsig.errors import InputError
from atomicsig.format.reference import DIGEST_ALGORITHMS, NAME_TOTAL_LENGTH_MAX, is_valid_path, validate_digest

#: c/image fails a read that reaches this index, so at most 127 signatures are usable per image (SPEC §3.2).
MAX_LOOKASIDE_SIGNATURES = 128

#: The longest repository path of any valid reference: 255 minus the shortest host and its slash (``a.b/``).
MAX_REPO_PATH = NAME_TOTAL_LENGTH_MAX - len("a.b/")

#: The only digest algorithm a store holds (module docstring).
STORED_ALGORITHM = "sha256"

#: The characters a repository path is made of, to carve one out of a URL; :func:`repo_path` then validates it.
REPO_SHAPE = r"[a-z0-9._-]+(?:/[a-z0-9._-]+)*"

#: The shape of a digest in a URL (``<algo>:<hex>``); :func:`reference.validate_digest` then checks its length.
DIGEST_SHAPE = rf"(?:{'|'.join(DIGEST_ALGORITHMS)}):[a-f0-9]+"

_SIG_PREFIX = "signature-"
_INDEX = r"[1-9][0-9]{0,2}"
_SIG_NAME = re.compile(rf"^{_SIG_PREFIX}({_INDEX})\Z")
_DIRNAME = re.compile(rf"^(?P<repo>[^@\s]+)@(?P<algo>{'|'.join(DIGEST_ALGORITHMS)})=(?P<hex>[a-f0-9]+)\Z")
#: What :func:`parse_sigpath` accepts, in one expression (index 1–127); the repository part is checked apart.
_STORED_PATH = re.compile(rf"^({REPO_SHAPE})@{STORED_ALGORITHM}=[a-f0-9]{{64}}/{_SIG_PREFIX}"
                          r"(?:[1-9][0-9]?|1[01][0-9]|12[0-7])\Z")


@functools.lru_cache(maxsize=4096)
def _is_repo_path(text: str) -> bool:
    """Memoized: a store has few repositories and many digests, and every digest directory name built or parsed
    checks its repository again (a first sync of 100,000 signatures did it ~5 times per signature)."""
    return len(text) <= MAX_REPO_PATH and is_valid_path(text)


def repo_path(text: str) -> str:
    """Validate a repository path (module docstring); raises InputError."""
    if not isinstance(text, str) or not _is_repo_path(text):
        raise InputError(f"invalid repository path {str(text)[:200]!r}")
    return text


def stored_digest(digest: str) -> str:
    """A digest a store may hold: sha256 only (module docstring); raises InputError."""
    if not validate_digest(digest).startswith(STORED_ALGORITHM + ":"):
        raise InputError(f"cannot store a signature for {digest.split(':', 1)[0]} digest {digest[:23]}…: only "
                         "sha256 digests are stored, because containers/image looks signatures up and matches "
                         "them by the sha256 digest only (SPEC §2.3, §3.1)")
    return digest


def digest_dirname(repo: str, digest: str) -> str:
    """``<repo path>@<algo>=<hex>``, the digest directory (SPEC §3.1: ``=`` instead of ``:``), both parts validated."""
    algo, hexpart = validate_digest(digest).split(":", 1)
    return f"{repo_path(repo)}@{algo}={hexpart}"


def parse_digest_dirname(text: str) -> tuple[str, str]:
    """The inverse of :func:`digest_dirname`: ``(repo path, digest)``; raises InputError."""
    m = _DIRNAME.match(text) if isinstance(text, str) else None
    if not m:
        raise InputError(f"invalid digest directory {str(text)[:200]!r}")
    digest = f"{m['algo']}:{m['hex']}"
    try:
        validate_digest(digest)
    except InputError:
        raise InputError(f"invalid digest directory {text[:200]!r}") from None
    return repo_path(m["repo"]), digest


def signature_name(index: int) -> str:
    """``signature-N`` for 1 ≤ N ≤ :data:`MAX_LOOKASIDE_SIGNATURES` (128 only to detect an overfull list)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= MAX_LOOKASIDE_SIGNATURES:
        raise InputError(f"invalid signature index {index!r}")
    return f"{_SIG_PREFIX}{index}"


def signature_index(name: str) -> int:
    """The inverse of :func:`signature_name`; raises InputError."""
    m = _SIG_NAME.match(name) if isinstance(name, str) else None
    if not m or int(m.group(1)) > MAX_LOOKASIDE_SIGNATURES:
        raise InputError(f"invalid signature name {str(name)[:200]!r}")
    return int(m.group(1))


def signature_relpath(repo: str, digest: str, index: int) -> str:
    """``<repo path>@<algo>=<hex>/signature-N`` relative to a lookaside base, every part validated."""
    return f"{digest_dirname(repo, digest)}/{signature_name(index)}"


@dataclass(frozen=True)
class SigPath:
    """A validated ``<repo path>@<algo>=<hex>/signature-N`` path, relative to a sigstore root."""

    repo: str
    digest: str
    index: int

    @functools.cached_property
    def dirname(self) -> str:
        """Built (and validated) once per path: a synced signature's path is asked for it several times."""
        return digest_dirname(self.repo, self.digest)

    @property
    def name(self) -> str:
        return signature_name(self.index)

    def __str__(self) -> str:
        return f"{self.dirname}/{self.name}"


def parse_read_path(relpath: str) -> SigPath:
    """A path a lookaside reader may ask for: any go-digest algorithm, index up to 128 (what ``serve`` answers)."""
    if not isinstance(relpath, str):
        raise InputError("invalid signature path")
    dirname, sep, name = relpath.rpartition("/")
    try:
        if not sep:
            raise InputError("no directory")
        repo, digest = parse_digest_dirname(dirname)
        return SigPath(repo, digest, signature_index(name))
    except InputError:
        raise InputError(f"invalid signature path {relpath[:200]!r}") from None


def is_stored_path(relpath: str) -> bool:
    """Whether :func:`parse_sigpath` accepts ``relpath``, without building a :class:`SigPath`: for a writer that
    checks paths it built itself before they go into the journal (one per stored signature). False never means
    more than "not by this shortcut": a caller refusing on False must ask :func:`parse_sigpath` for the reason."""
    m = _STORED_PATH.match(relpath) if isinstance(relpath, str) else None
    return m is not None and _is_repo_path(m.group(1))


def parse_sigpath(relpath: str) -> SigPath:
    """A path a store holds and the sync journal names: :func:`parse_read_path` narrowed to sha256 and N < 128.

    Everything a peer names ends up as a local path, so anything that is not exactly this shape is refused (no
    ``..``, no absolute paths, no uppercase, no other algorithms, no index c/image would refuse to read).
    """
    sp = parse_read_path(relpath)
    if not sp.digest.startswith(STORED_ALGORITHM + ":") or sp.index >= MAX_LOOKASIDE_SIGNATURES:
        raise InputError(f"invalid signature path {relpath[:200]!r}")
    return sp


__all__ = ["DIGEST_SHAPE", "MAX_LOOKASIDE_SIGNATURES", "MAX_REPO_PATH", "REPO_SHAPE", "STORED_ALGORITHM", "SigPath",
           "digest_dirname", "is_stored_path", "parse_digest_dirname", "parse_read_path", "parse_sigpath", "repo_path",
           "signature_index", "signature_name", "signature_relpath", "stored_digest"]
