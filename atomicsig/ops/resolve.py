"""From what the user typed to what gets signed or verified: a reference, its digest, and the instances of a list."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from atomicsig.errors import InputError, Rejected
from atomicsig.format import manifest, platforms, reference
from atomicsig.format.reference import Reference

__all__ = ["Resolver", "Target", "parse_reference_list", "read_reference_list"]


def parse_reference_list(text: str) -> list[str]:
    """The references of a ``--from-file`` list: one per line, blank lines and ``#`` comments ignored."""
    return [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]


def read_reference_list(path: str) -> list[str]:
    """:func:`parse_reference_list` of file ``path``; ``-`` reads standard input (``sign/verify --from-file -``)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_reference_list(text)


@dataclass(frozen=True)
class Target:
    """One thing to sign: the identity to claim and the manifest digest to bind it to."""

    ref: Reference  # as given (normalized)
    digest: str
    identity: str
    note: str = ""  # e.g. "linux/arm64 instance of …"
    #: For a manifest list resolved without ``all_instances``: the platforms of the instances left unsigned. Nodes
    #: evaluate the instance they pull, not the list (SPEC §2.2), so ``sign`` warns when this is not empty.
    unsigned_instances: tuple[str, ...] = ()


@dataclass
class Resolver:
    """Turns user references into targets, asking registries for digests when needed."""

    tls_verify: bool = True
    cert_dir: str | None = None
    authfile: str | None = None
    all_instances: bool = False
    manifest_file: str | None = None
    #: For :meth:`resolve_pulled`: the platform whose instance a node pulls (None: this machine's, as c/image).
    platform: platforms.Platform | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, text: str) -> list[Target]:
        """What ``sign`` signs for ``text``: the digest it names or the registry serves (and with ``all_instances``
        every instance of a list), each under the identity of :meth:`Reference.identity`."""
        ref, identity = self._parse(text)
        if ref.digest and not self.all_instances and not self.manifest_file:
            return [Target(ref, ref.digest, identity)]
        digest, data = self._fetch(ref)
        return self._with_instances(ref, identity, digest, data)

    def resolve_pulled(self, text: str) -> list[Target]:
        """What a node pulling ``text`` evaluates its policy on (SPEC §2.2): the per-platform instance of a manifest
        list (every instance with ``all_instances``), never the list itself, under the identity ``sign`` claims.

        A digest in ``text`` is taken as the image's own digest without asking the registry, so checks by digest
        work offline; with ``all_instances`` or an explicit ``platform`` the manifest is fetched (by that digest)
        to learn whether it is a list. Raises :class:`Rejected` if a list has no instance a node could pull.
        """
        ref, identity = self._parse(text)
        if ref.digest and not self.all_instances and self.platform is None and not self.manifest_file:
            return [Target(ref, ref.digest, identity)]
        digest, data = self._fetch(ref)
        instances = manifest.list_instances(data)
        if not instances:
            return [Target(ref, digest, identity)]
        if self.all_instances:
            return [_instance(ref, identity, digest, i) for i in instances]
        chosen = platforms.choose(instances, self.platform)
        if chosen is None:
            want = self.platform or platforms.current()
            have = ", ".join(i.platform or "(no platform)" for i in instances)
            raise Rejected(f"manifest list {digest} has no instance for {want} (it has {have}); "
                           "a node on that platform cannot pull it")
        return [_instance(ref, identity, digest, chosen)]

    @staticmethod
    def _parse(text: str) -> tuple[Reference, str]:
        ref = reference.parse(text.strip())
        if ref.name_only:
            ref = ref.with_tag_default()
        return ref, ref.identity()

    def _fetch(self, ref: Reference) -> tuple[str, bytes]:
        """The manifest digest and bytes: from --manifest, else from the registry (by digest if ``ref`` has one)."""
        if self.manifest_file:
            try:
                data = Path(self.manifest_file).read_bytes()
            except OSError as exc:
                raise InputError(f"cannot read manifest {self.manifest_file}: {exc.strerror}") from exc
            digest = manifest.digest(data)
            if ref.digest and ref.digest != digest:
                raise InputError(f"{self.manifest_file} has digest {digest}, not {ref.digest}")
            return digest, data
        from atomicsig.net.registry import client_for

        client = client_for(ref.domain, tls_verify=self.tls_verify, cert_dir=self.cert_dir, authfile=self.authfile)
        fetched = client.get_manifest(ref)
        return fetched.digest, fetched.data

    def _with_instances(self, ref: Reference, identity: str, digest: str, data: bytes) -> list[Target]:
        instances = manifest.list_instances(data)
        unsigned = () if self.all_instances else tuple(i.platform or "instance" for i in instances)
        targets = [Target(ref, digest, identity, unsigned_instances=unsigned)]
        if instances and self.all_instances:
            targets += [_instance(ref, identity, digest, i) for i in instances]
        return targets


def _instance(ref: Reference, identity: str, list_digest: str, inst: manifest.Instance) -> Target:
    """The target for one instance of a manifest list, claiming the list's identity (what a node pulling the tag
    evaluates, SPEC §2.2); the note names the platform and the list, the same for ``sign`` and ``verify``."""
    return Target(ref, reference.validate_digest(inst.digest), identity,
                  f"{inst.platform or 'instance'} of list {list_digest[:19]}…")
