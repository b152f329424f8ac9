"""The air-gap bundle file: a strict tar (optionally gzip) whose first member is a sha256 manifest of all others.

Why this container. A bundle crosses an air gap on removable media and is opened by people as well as by
``atomicsig bundle import``: a plain ``.tar.gz`` opens with ``tar -xzf`` on any machine, and the manifest is in
``sha256sum`` format, so ``sha256sum -c MANIFEST.sha256`` checks an extracted bundle without atomicsig. gzip
because tar pads every small signature to 1.5 KiB (header + 512-byte blocks): compressed, a bundle of signatures
is a fraction of that. Written deterministically (members in a fixed order, mtime 0, uid/gid 0, no user names,
gzip header without time or name), so the same sigstore and filters give the same bytes — two exports can be
compared by their sha256.

Layout, in this order (each kind's rank; the manifest lists the members in archive order, and the reader refuses
any other order)::

    MANIFEST.sha256                 "<sha256>  <name>\\n" for every member below, in archive order
    bundle.json                     what the bundle holds (atomicsig.ops.bundle)
    keys/<FINGERPRINT>.gpg          public keys the exporter included, one binary key each (optional)
    policy.yaml                     the exporter's policy YAML (optional)
    journal                         the source journal's ``add`` records of the signatures, in journal order
    sigstore/<repo>@sha256=<hex>/signature-N   the signatures, in the journal's order, by their lookaside path

Why the manifest comes first: the reader knows the name and sum of every member before it reads any data, so an
unlisted member, a member out of order, a member larger than its kind may be (a tar bomb) or a ``../`` name is
refused at its 512-byte header, before its data is read or decompressed. The manifest covers every other member;
it is integrity against a damaged or truncated copy, not authenticity: anyone can rebuild a manifest. What is
trusted is decided per signature, against the keys the *importer* names (SECURITY.md, "Bundles").

What the reader accepts (everything else is a :class:`BundleError`, exit 2): regular-file members (type ``0``)
and pax extended headers (type ``x``, at most 64 KiB, with only the ``path`` record, which tarfile writes for
names over 100 characters); no links, devices, directories, FIFOs, global or GNU headers, sparse files. The
member after the last listed one must be the end-of-archive block, followed by zeros only. At most
:data:`MAX_TOTAL` bytes are read from the (decompressed) stream. No tarfile extraction code runs: headers are
decoded with :meth:`tarfile.TarInfo.frombuf` and the data is read here, so nothing is ever written to a path
taken from the archive.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from atomicsig.errors import InputError
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.format.sigpath import MAX_LOOKASIDE_SIGNATURES, parse_sigpath, stored_digest

MANIFEST = "MANIFEST.sha256"
INFO = "bundle.json"
KEYS_DIR = "keys/"
POLICY = "policy.yaml"
JOURNAL = "journal"
SIGSTORE_DIR = "sigstore/"

#: Signatures one bundle may carry: more than twice the 100,000 a large fleet's store holds (issue 15), low
#: enough that the manifest and the journal member, which are read into memory, stay near 100 MiB at most.
MAX_SIGNATURES = 250_000
#: Public keys one bundle may carry, each at most MAX_KEY (they are kept in memory for ``--show-keys``; a real
#: public key with its certifications is a few KiB).
MAX_KEYS = 100
#: The longest manifest or journal line: a 337-character lookaside path (atomicsig.format.sigpath.MAX_REPO_PATH
#: plus ``@sha256=<64 hex>/signature-127``) with its sum, a sequence number and separators needs at most 430.
MAX_LINE = 512
#: Per-kind size caps, checked at the member's header before its data is read; the journal's is tightened to the
#: number of signatures the manifest lists (:func:`members`).
MAX_INFO = 64 * 1024
MAX_KEY = 256 * 1024
MAX_POLICY = 1024 * 1024
MAX_JOURNAL = MAX_LINE * (MAX_SIGNATURES + 1)
MAX_MANIFEST = MAX_LINE * (MAX_SIGNATURES + MAX_KEYS + 4)
#: Everything read from the decompressed stream, headers and padding included.
MAX_TOTAL = 8 * 1024 * 1024 * 1024
MAX_PAX = 64 * 1024

BLOCK = 512
_GZIP_MAGIC = b"\x1f\x8b"
_HEX64 = re.compile(r"[a-f0-9]{64}")
_KEY_NAME = re.compile(r"keys/([A-F0-9]{40}|[A-F0-9]{64})\.gpg")
#: Kinds in the order they appear (module docstring).
_RANK = {"manifest": 0, "info": 1, "key": 2, "policy": 3, "journal": 4, "signature": 5}


class BundleError(InputError):
    """The bundle is damaged, truncated, or not one ``bundle export`` writes: nothing is imported (exit 2)."""


def kind(name: str) -> str:
    """What a member name is (``info``, ``key``, ``policy``, ``journal``, ``signature``), or BundleError.

    A signature's name must be a lookaside path a store holds (atomicsig.format.sigpath: no ``..``, no absolute
    path, sha256 only, ``signature-1`` … ``signature-127``), so no member name can leave the sigstore it is
    imported into."""
    if name == MANIFEST:
        return "manifest"
    if name == INFO:
        return "info"
    if name == POLICY:
        return "policy"
    if name == JOURNAL:
        return "journal"
    if _KEY_NAME.fullmatch(name):
        return "key"
    if name.startswith(SIGSTORE_DIR):
        try:
            sp = parse_sigpath(name[len(SIGSTORE_DIR):])
            stored_digest(sp.digest)
        except InputError as exc:
            raise BundleError(f"bundle member {name[:200]!r}: {exc.message}") from None
        if sp.index >= MAX_LOOKASIDE_SIGNATURES:
            raise BundleError(f"bundle member {name[:200]!r}: index beyond what containers/image reads")
        return "signature"
    raise BundleError(f"bundle member {name[:200]!r} is not part of the bundle format")


def limit(member_kind: str) -> int:
    """The largest size a member of this kind may have."""
    return {"manifest": MAX_MANIFEST, "info": MAX_INFO, "key": MAX_KEY, "policy": MAX_POLICY,
            "journal": MAX_JOURNAL, "signature": MAX_SIGNATURE_SIZE}[member_kind]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the manifest -----------------------------------------------------------------------------------------------


def build_manifest(entries: list[tuple[str, str]]) -> bytes:
    """``sha256sum`` lines for ``(name, sha256)`` in archive order."""
    return "".join(f"{sha}  {name}\n" for name, sha in entries).encode("ascii")


def parse_manifest(data: bytes) -> list[tuple[str, str]]:
    """``(name, sha256)`` in archive order; every name valid and once, kinds in order, one ``bundle.json`` and
    one ``journal``; BundleError otherwise."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise BundleError(f"{MANIFEST} is not ASCII") from None
    if text and not text.endswith("\n"):
        raise BundleError(f"{MANIFEST} does not end with a newline (truncated?)")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    counts = {k: 0 for k in _RANK}
    last = 0
    for n, line in enumerate(text.splitlines(), 1):
        sha, sep, name = line.partition("  ")
        if not sep or not _HEX64.fullmatch(sha):
            raise BundleError(f"{MANIFEST} line {n} is not '<sha256>  <name>'")
        k = kind(name)
        if k == "manifest" or name in seen:
            raise BundleError(f"{MANIFEST} line {n}: {name} listed twice")
        if _RANK[k] < last:
            raise BundleError(f"{MANIFEST} line {n}: {name} is out of order")
        last = _RANK[k]
        seen.add(name)
        counts[k] += 1
        out.append((name, sha))
    if counts["info"] != 1 or counts["journal"] != 1:
        raise BundleError(f"{MANIFEST} must list {INFO} and {JOURNAL} once each")
    if counts["signature"] > MAX_SIGNATURES or counts["key"] > MAX_KEYS:
        raise BundleError(f"{MANIFEST} lists more than {MAX_SIGNATURES} signatures or {MAX_KEYS} keys")
    return out


# ---- writing ----------------------------------------------------------------------------------------------------


class Writer:
    """Members into a (gzip) tar stream, deterministically (module docstring). The caller adds the manifest
    first and then exactly the members it lists, in its order; :meth:`close` ends the archive."""

    def __init__(self, out: BinaryIO, *, compress: bool = True) -> None:
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) if compress \
            else None
        self._tar = tarfile.open(fileobj=self._gz or out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = \
            len(data), 0, 0o644, 0, 0, "", ""
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
        if self._gz is not None:
            self._gz.close()


# ---- reading ----------------------------------------------------------------------------------------------------


class _Capped:
    """Reads from a (decompressed) stream, at most MAX_TOTAL bytes in all; stream errors become BundleError."""

    def __init__(self, raw: BinaryIO) -> None:
        head = raw.read(2)
        raw.seek(0)
        self.stream: BinaryIO | gzip.GzipFile = gzip.GzipFile(fileobj=raw, mode="rb") if head == _GZIP_MAGIC \
            else raw
        self.total = 0

    def read(self, n: int) -> bytes:
        if self.total + n > MAX_TOTAL:
            raise BundleError(f"bundle is larger than {MAX_TOTAL >> 30} GiB uncompressed")
        try:
            data = self.stream.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"bundle is not a valid gzip stream (truncated or damaged): {exc}") from None
        self.total += len(data)
        return data

    def exactly(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise BundleError(f"bundle ends inside {what} (truncated)")
        return data


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _pax_path(data: bytes) -> str:
    """The ``path`` of a pax extended header; any other record is refused (module docstring)."""
    path: str | None = None
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp == -1 or not data[pos:sp].isdigit():
            raise BundleError("bundle has a malformed pax header")
        length = int(data[pos:sp])
        record = data[sp + 1:pos + length]
        if length <= sp - pos or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise BundleError("bundle has a malformed pax header")
        key, _, value = record[:-1].partition(b"=")
        if key != b"path" or path is not None:
            raise BundleError(f"bundle has a pax header record {key[:40]!r}: only 'path' is accepted")
        try:
            path = value.decode("ascii")
        except UnicodeDecodeError:
            raise BundleError("bundle has a non-ASCII member name") from None
        pos += length
    if path is None:
        raise BundleError("bundle has an empty pax header")
    return path


def _header(stream: _Capped) -> tarfile.TarInfo | None:
    """The next member's header (pax path applied), or None at the end-of-archive block."""
    blk = stream.exactly(BLOCK, "a member header")
    if blk == bytes(BLOCK):
        return None
    path: str | None = None
    info = _decode(blk)
    if info.type == tarfile.XHDTYPE:
        if info.size > MAX_PAX:
            raise BundleError(f"bundle has a pax header of {info.size} bytes")
        path = _pax_path(stream.exactly(_padded(info.size), "a pax header")[:info.size])
        info = _decode(stream.exactly(BLOCK, "a member header"))
        if info.type == tarfile.XHDTYPE:
            raise BundleError("bundle has two pax headers in a row")
    if info.type != tarfile.REGTYPE:
        what = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.DIRTYPE: "a directory",
                tarfile.CHRTYPE: "a device", tarfile.BLKTYPE: "a device", tarfile.FIFOTYPE: "a FIFO"}
        raise BundleError(f"bundle member {info.name[:200]!r} is {what.get(info.type, f'of tar type {info.type!r}')}"
                          "; a bundle holds regular files only")
    if path is not None:
        info.name = path
    return info


def _decode(blk: bytes) -> tarfile.TarInfo:
    try:
        return tarfile.TarInfo.frombuf(blk, "ascii", "strict")
    except (tarfile.HeaderError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"bundle has a damaged tar header ({exc})") from None


def members(raw: BinaryIO) -> Iterator[tuple[Member, str]]:
    """Every member after the manifest as ``(member, sha256 listed for it)``, checked against the manifest as it
    streams (module docstring); the manifest itself is first yielded as ``(Member(MANIFEST, …), "")``. A member's
    data is read only after its header matched the next manifest entry and its kind's size cap. Raises
    BundleError; reading ends with the end-of-archive check, so a consumer that reaches the end has seen a
    complete, well-formed bundle."""
    stream = _Capped(raw)
    try:
        first = _header(stream)
    except BundleError as exc:
        raise BundleError(f"not an atomicsig bundle: {exc.message}") from None
    if first is None or first.name != MANIFEST:
        raise BundleError(f"not an atomicsig bundle: the first member must be {MANIFEST}")
    if first.size > MAX_MANIFEST:
        raise BundleError(f"{MANIFEST} is {first.size} bytes; at most {MAX_MANIFEST} are allowed")
    manifest = stream.exactly(_padded(first.size), MANIFEST)[:first.size]
    expected = parse_manifest(manifest)
    sigs = sum(1 for name, _ in expected if name.startswith(SIGSTORE_DIR))
    yield Member(MANIFEST, manifest), ""
    for name, sha in expected:
        info = _header(stream)
        if info is None:
            raise BundleError(f"bundle ends before {name}, which its manifest lists (truncated?)")
        if info.name != name:
            kind(info.name)  # a name outside the format says so; a valid one is out of place
            raise BundleError(f"bundle member {info.name!r} is not the next one its manifest lists ({name})")
        k = kind(name)
        cap = MAX_LINE * (sigs + 1) if k == "journal" else limit(k)
        if info.size > cap:
            raise BundleError(f"bundle member {name} is {info.size} bytes; at most {cap} are allowed")
        data = stream.exactly(_padded(info.size), name)[:info.size]
        if sha256_hex(data) != sha:
            raise BundleError(f"bundle member {name} does not match its sha256 in {MANIFEST}")
        yield Member(name, data), sha
    extra = _header(stream)
    if extra is not None:
        raise BundleError(f"bundle member {extra.name[:200]!r} is not in its manifest")
    if stream.exactly(BLOCK, "the end-of-archive marker") != bytes(BLOCK):
        raise BundleError("bundle has data after its end-of-archive block")
    while True:
        rest = stream.read(64 * 1024)
        if not rest:
            break
        if rest.count(0) != len(rest):
            raise BundleError("bundle has data after its end-of-archive block")
