"""Mirror signatures: copy every signature of a list of images from an upstream into a local sigstore (issue 15 #1).

Why it exists: fleets that mirror images (``skopeo sync``, ``oc-mirror``) leave lookaside signatures behind, because
the lookaside is a separate store with no listing. This reads the upstream exactly as containers/image does
(``signature-1``, ``2``, … until the first missing one, SPEC §3.2) from an HTTP(S) lookaside, a directory, or a
registry's signature extension API (SPEC §6.2), for each image digest a node may look up: the digest a reference
names or its tag resolves to, and for a manifest list also every instance (SPEC §2.2, §3.1 "which digest").

Trust before write: every signature goes through :meth:`atomicsig.ops.intake.Intake.offer` (size, format,
signature by a key the user named, payload digest equal to the digest it is stored under), the same checks ``sync``
applies; refused ones are counted by Intake's reason and never stored. Storage is by content (a re-run adds
nothing), gap-free and journaled, so sync followers receive mirrored signatures too. Nothing is re-signed: the
signatures keep the identity upstream signed, which is why nodes pulling from a mirror need ``remapIdentity`` or
``matchRepository`` (docs/mirror.md).

All or nothing per digest: the upstream list of a digest is read completely (bounded by the 128 c/image reads)
before any of it is offered, so a read that fails half way (5xx, a reset, a truncated body, a redirect to another
host, a timeout) stores nothing for that digest and is reported as "could not read" (exit 3), never as a
rejection (exit 1).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from atomicsig.errors import EXIT_NEGATIVE, EXIT_OK, EXIT_UNDECIDED, AtomicsigError, InputError, NotFound
from atomicsig.format import reference
from atomicsig.format.reference import Reference
from atomicsig.format.sigpath import MAX_LOOKASIDE_SIGNATURES, SigPath, repo_path
from atomicsig.ops.intake import Intake
from atomicsig.ops.resolve import Resolver, Target
from atomicsig.store.base import StoredSignature, TooManySignatures

__all__ = ["ImageResult", "PrefixMap", "Upstream", "exit_code", "mirror_many", "open_upstream", "parse_prefix_map"]

#: Default parallel workers: the work is waiting on the network and the journal lock, not the CPU.
DEFAULT_WORKERS = 8
#: Seconds one lookaside signature may take to arrive whole (the extension API: each read).
DEFAULT_TIMEOUT = 30.0

OK, REFUSED, ERROR = "ok", "refused", "error"


class Upstream(Protocol):
    """Where mirrored signatures come from: anything that lists a digest's signatures as c/image would read them."""

    def describe(self) -> str: ...

    def read(self, ref: Reference, digest: str) -> list[StoredSignature]: ...


class _RegistryExtension:
    """The signature extension API of each image's own registry (``--from-registry``), with its credentials.

    c/image uses the extension only when the registry advertises ``X-Registry-Supports-Signatures: 1`` (SPEC §6.1);
    a registry that does not is an error here rather than an empty list, so a wrong ``--from-registry`` is not
    mistaken for "upstream has no signatures".
    """

    def __init__(self, tls_verify: bool, cert_dir: str | None, authfile: str | None) -> None:
        self.tls_verify, self.cert_dir, self.authfile = tls_verify, cert_dir, authfile

    def describe(self) -> str:
        return "each image's registry (signature extension API)"

    def read(self, ref: Reference, digest: str) -> list[StoredSignature]:
        from atomicsig.errors import RegistryError
        from atomicsig.net.registry import client_for
        from atomicsig.store.extension import ExtensionStore

        client = client_for(ref.domain, tls_verify=self.tls_verify, cert_dir=self.cert_dir, authfile=self.authfile)
        if not client.supports_signatures:
            raise RegistryError(f"registry {ref.domain} does not advertise the signature extension API "
                                "(X-Registry-Supports-Signatures: 1)",
                                hint="read its lookaside with --from URL instead")
        return ExtensionStore(client).read(ref, digest)


def open_upstream(source: str | None, *, extension: str | None = None, from_registry: bool = False,
                  tls_verify: bool = True, cert_dir: str | None = None, authfile: str | None = None,
                  timeout: float = DEFAULT_TIMEOUT) -> Upstream:
    """The upstream the flags name: exactly one of a lookaside ``source`` (http(s) URL, ``file:`` URL or
    directory), an extension-API base URL (``atomicsig serve``), or each image's registry."""
    given = [x for x in (source, extension, from_registry or None) if x]
    if len(given) != 1:
        raise InputError("name exactly one upstream: --from URL|DIR, --from-extension URL or --from-registry")
    if from_registry:
        return _RegistryExtension(tls_verify, cert_dir, authfile)
    if extension:
        if not extension.startswith(("http://", "https://")):
            raise InputError(f"--from-extension needs an http(s):// URL, not {extension!r}")
        from atomicsig.store.extension import ExtensionStore, StaticTokenClient

        return ExtensionStore(StaticTokenClient(extension, None, verify=tls_verify, timeout=timeout))
    assert source is not None
    if source.startswith(("http://", "https://")):
        from atomicsig.store.http import HTTPLookaside

        return HTTPLookaside(source.rstrip("/"), verify=tls_verify, same_origin=True, deadline=timeout)
    if "://" in source and not source.startswith("file://"):
        raise InputError(f"unsupported upstream {source!r} (use a directory, file://, http:// or https://)")
    from atomicsig.store.select import open_store

    store = open_store(source)
    if not Path(store.describe()).is_dir():
        raise InputError(f"upstream directory {store.describe()} does not exist (or is not a directory)")
    return store  # a DirectoryStore: read_dir's confined, gap-free, bounded read


@dataclass(frozen=True)
class PrefixMap:
    """``--mirror-prefix UPSTREAM=MIRROR``: images of ``upstream`` are pulled from ``mirror``.

    A node pulling from the mirror looks signatures up under the *mirror's* repository path (the physical
    reference picks the lookaside path, SPEC §3.1), so that is where they are stored. Matching is c/image's
    ``remapIdentity`` prefix rule (SPEC §2.4): the name equals the prefix or continues it with ``/``.
    """

    upstream: str
    mirror: str

    def apply(self, ref: Reference) -> Reference | None:
        name = ref.name
        if name != self.upstream and not name.startswith(self.upstream + "/"):
            return None
        return reference.parse(self.mirror + name[len(self.upstream):])


def parse_prefix_map(text: str) -> PrefixMap:
    """One ``UPSTREAM=MIRROR`` value. Each side is what c/image accepts as a ``remapIdentity`` prefix (SPEC §2.4): a
    bare ``host[:port]``, or a repository name that starts with ``host/`` (so ``vendor`` alone is refused, not
    silently read as Docker Hub)."""
    up, sep, down = text.partition("=")
    sides = []
    for side in (up, down) if sep else ():
        host, slash, _ = side.partition("/")
        try:
            if not reference.is_valid_domain(host) or not ("." in host or ":" in host or host == "localhost"):
                raise InputError(f"{host!r} is not a registry host")
            name = reference.parse_repository(side).name if slash else host
        except InputError as exc:
            raise InputError(f"--mirror-prefix {text!r}: {side!r} is not a host[:port] or host/repository "
                             f"prefix ({exc.message})") from None
        sides.append(name)
    if len(sides) != 2:
        raise InputError(f"--mirror-prefix {text!r}: expected UPSTREAM=MIRROR (e.g. "
                         "vendor.example.com=mirror.example.com:5000/vendor)")
    return PrefixMap(sides[0], sides[1])


@dataclass
class ImageResult:
    """What happened to one digest: ``found`` upstream, ``stored`` new here, ``duplicates`` already here, and
    ``refused`` per Intake reason. ``status`` is ok, refused (a decided no: exit 1) or error (exit 3)."""

    input: str
    reference: str = ""  # the upstream reference, normalized
    digest: str = ""
    stored_as: str = ""  # the repository path the signatures are stored under
    note: str = ""  # e.g. "linux/arm64 of list sha256:…"
    found: int = 0
    stored: int = 0
    duplicates: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    status: str = OK
    reason: str = ""
    position: int = 0

    @property
    def exit_code(self) -> int:
        if self.status == ERROR:
            return EXIT_UNDECIDED
        if self.status == REFUSED or self.refused:
            return EXIT_NEGATIVE
        return EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {"input": self.input, "reference": self.reference, "digest": self.digest, "stored_as": self.stored_as,
                "note": self.note or None, "status": self.status, "found": self.found, "stored": self.stored,
                "duplicates": self.duplicates, "refused": dict(sorted(self.refused.items())),
                "reason": self.reason}


@dataclass
class _Plan:
    """One input, parsed before anything is read or written (a bad reference is exit 2 with nothing stored)."""

    text: str
    ref: Reference
    dest_path: str
    position: int


def plan(inputs: Sequence[str], prefixes: Sequence[PrefixMap], *, resolve: bool) -> list[_Plan]:
    """Parse every input and its destination path first: a path escape, a bad name or (without ``resolve``) a
    missing digest is an :class:`InputError` for the whole run, before the first byte is stored."""
    out = []
    for i, text in enumerate(inputs):
        ref = reference.parse(text.strip())
        if ref.name_only:
            ref = ref.with_tag_default()
        if not resolve and not ref.digest:
            raise InputError(f"{text.strip()}: --no-resolve needs references by digest (…@sha256:…)")
        dest = next((m for m in (p.apply(ref) for p in prefixes) if m is not None), ref)
        out.append(_Plan(text.strip(), ref, repo_path(dest.path), i))
    return out


def mirror_target(p: _Plan, target: Target, upstream: Upstream, intake: Intake) -> ImageResult:
    """Read every upstream signature of one digest, then offer each to Intake (module docstring: all or nothing).

    Offered without an origin: a mirrored signature is stored like a local one, which no sync peer may delete
    (atomicsig.store.origin).
    """
    res = ImageResult(p.text, str(p.ref), target.digest, p.dest_path, target.note, position=p.position)
    try:
        sigs = upstream.read(target.ref, target.digest)
        if len(sigs) >= MAX_LOOKASIDE_SIGNATURES:  # the extension API has no index limit of its own
            raise TooManySignatures(f"upstream lists {len(sigs)} signatures for {target.digest}")
    except TooManySignatures as exc:
        res.status = REFUSED
        res.reason = (f"{exc.message}; containers/image reads at most {MAX_LOOKASIDE_SIGNATURES - 1}, so none was "
                      "mirrored")
        res.refused["too-many"] = 1
        return res
    except AtomicsigError as exc:
        if exc.exit_code == 2:
            raise
        res.status, res.reason = ERROR, f"could not read upstream: {exc.message}"
        return res
    res.found = len(sigs)
    path = SigPath(p.dest_path, target.digest, 1)
    for sig in sigs:
        outcome = intake.offer(path, sig.blob, None)
        if outcome.status == "created":
            res.stored += 1
        elif outcome.status == "duplicate":
            res.duplicates += 1
        else:
            res.refused[outcome.reason] = res.refused.get(outcome.reason, 0) + 1
            if not res.reason:
                res.reason = f"signature-{sig.index} refused ({outcome.reason}): {outcome.detail}"
    if not sigs:
        res.status, res.reason = REFUSED, "upstream has no signature for this digest"
    elif not res.stored and not res.duplicates:
        res.status = REFUSED
        res.reason = "no signature accepted; " + res.reason
    return res


def mirror_one(p: _Plan, *, resolver: Resolver | None, upstream: Upstream, intake: Intake) -> list[ImageResult]:
    """Every result for one input: the digest it names or resolves to, and each instance of a manifest list."""
    if resolver is None:
        assert p.ref.digest
        targets = [Target(p.ref, p.ref.digest, p.ref.identity())]
    else:
        try:
            targets = resolver.resolve(p.text)
        except AtomicsigError as exc:
            if exc.exit_code == 2:
                raise
            negative = isinstance(exc, NotFound) or exc.exit_code == EXIT_NEGATIVE
            return [ImageResult(p.text, str(p.ref), p.ref.digest or "", p.dest_path, status=REFUSED if negative
                                else ERROR, reason=f"cannot resolve: {exc.message}", position=p.position)]
    return [mirror_target(p, t, upstream, intake) for t in targets]


def mirror_many(inputs: Sequence[str], *, upstream: Upstream, intake: Intake, resolver: Resolver | None,
                prefixes: Sequence[PrefixMap] = (), workers: int = DEFAULT_WORKERS,
                progress: Callable[[list[ImageResult]], None] | None = None) -> list[ImageResult]:
    """Mirror every input with ``workers`` threads; ``progress`` gets each input's results as they complete.

    ``resolver`` None (``--no-resolve``) takes each reference's digest as given, without asking a registry (and so
    without a list's instances). Inputs are all parsed first (:func:`plan`). Results come back in input order.
    """
    plans = plan(inputs, prefixes, resolve=resolver is not None)
    out: list[ImageResult] = []

    def done(results: list[ImageResult]) -> None:
        out.extend(results)
        if progress is not None:
            progress(results)

    if workers <= 1 or len(plans) <= 1:
        for p in plans:
            done(mirror_one(p, resolver=resolver, upstream=upstream, intake=intake))
    else:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(plans)))
        try:
            futures = [pool.submit(mirror_one, p, resolver=resolver, upstream=upstream, intake=intake)
                       for p in plans]
            for fut in concurrent.futures.as_completed(futures):
                done(fut.result())
        finally:
            # Normally all are done. On an input error, Ctrl-C or a closed stdout the ones not started are dropped;
            # every signature already stored is whole (Intake appends by exclusive create, journaled).
            pool.shutdown(wait=False, cancel_futures=True)
    out.sort(key=lambda r: r.position)
    return out


def exit_code(results: Sequence[ImageResult]) -> int:
    """3 if an upstream could not be read for some digest, else 1 if some digest had a refused signature or none
    acceptable, else 0 ("rejected" and "could not check" stay apart, as in ``verify``)."""
    codes = {r.exit_code for r in results}
    return EXIT_UNDECIDED if EXIT_UNDECIDED in codes else EXIT_NEGATIVE if EXIT_NEGATIVE in codes else EXIT_OK
