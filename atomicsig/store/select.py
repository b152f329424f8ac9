"""Which store ``--sigstore`` names: a path, ``file:``/``http(s):`` URL, an ``atomicsig serve`` URL, or ``auto``."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from atomicsig.errors import InputError, RegistryError
from atomicsig.format.reference import Reference
from atomicsig.net.registry import client_for
from atomicsig.store import registries_d
from atomicsig.store.base import AppendResult, SignatureStore, StoredSignature
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.extension import ExtensionStore, StaticTokenClient
from atomicsig.store.http import HTTPLookaside


def open_store(location: str, *, verify: bool | str = True) -> SignatureStore:
    """A store from ``--sigstore``: a path, ``file://`` URL, or ``http(s)://`` URL."""
    if location.startswith(("http://", "https://")):
        return HTTPLookaside(location.rstrip("/"), verify=verify)
    if location.startswith("file://"):
        path = urllib.parse.unquote(urllib.parse.urlsplit(location).path)
        if not path:
            raise InputError(f"invalid sigstore URL {location!r}")
        return DirectoryStore(path)
    if "://" in location:
        raise InputError(f"unsupported sigstore scheme in {location!r} (use a path, file://, http:// or https://)")
    return DirectoryStore(location)


class AutoStore(SignatureStore):
    """Choose per image like c/image: the extension API if the registry advertises it, else registries.d.

    The registries.d directory is the one c/image would use (``--registries.d`` or
    :func:`registries_d.effective_dir`); writes use the write-mode URL (``lookaside-staging`` preferred), which
    must be ``file:`` (SPEC §3.3); reads may be ``file:`` or ``http(s):``.
    """

    def __init__(self, *, registries_dir: str | os.PathLike[str] | None = None, tls_verify: bool = True,
                 cert_dir: str | None = None, authfile: str | None = None,
                 config: registries_d.RegistriesConfig | None = None) -> None:
        """``config``: registries.d already found and merged by the caller (``audit``: several drop-in
        directories in the Podman 6 lookup, :mod:`atomicsig.store.nodefiles`); ``registries_dir`` is then only
        named in :meth:`describe`."""
        directory = Path(registries_dir) if registries_dir else registries_d.effective_dir()
        self.config = config if config is not None else registries_d.load_dir(directory)
        self.registries_dir = directory
        self.tls_verify, self.cert_dir, self.authfile = tls_verify, cert_dir, authfile

    def describe(self) -> str:
        return f"auto (extension API or registries.d {self.registries_dir})"

    def store_for(self, ref: Reference, *, write: bool) -> SignatureStore:
        client = client_for(ref.domain, tls_verify=self.tls_verify, cert_dir=self.cert_dir, authfile=self.authfile)
        if client.supports_signatures:
            return ExtensionStore(client)
        url, _ = self.config.lookaside_for(ref, write=write)
        if write and not url.startswith("file://"):
            raise InputError(f"registries.d gives {url!r} for writing signatures of {ref.name}; only file: can "
                             "be written", hint="configure a lookaside-staging: file:///… location")
        return open_store(url, verify=self.tls_verify)

    def read(self, ref: Reference, digest: str) -> list[StoredSignature]:
        return self.store_for(ref, write=False).read(ref, digest)

    def append(self, ref: Reference, digest: str, blob: bytes) -> AppendResult:
        return self.store_for(ref, write=True).append(ref, digest, blob)


class ServerStore(SignatureStore):
    """An ``atomicsig serve`` instance: read as nodes do (lookaside GET), write through its extension PUT."""

    def __init__(self, base_url: str, token: str, *, verify: bool | str = True) -> None:
        self.reader = HTTPLookaside(base_url.rstrip("/"), verify=verify)
        self.writer = ExtensionStore(StaticTokenClient(base_url, token, verify=verify))

    def describe(self) -> str:
        return self.reader.describe()

    def read(self, ref: Reference, digest: str) -> list[StoredSignature]:
        return self.reader.read(ref, digest)

    def append(self, ref: Reference, digest: str, blob: bytes) -> AppendResult:
        # The server answers 404 for an empty list; that only means "nothing stored yet" here.
        try:
            return self.writer.append(ref, digest, blob)
        except RegistryError as exc:
            if exc.status == 409:
                return AppendResult(self.reader.url(ref, digest, 1), None, False)
            raise


def choose_store(location: str, *, registries_dir: str | None = None, tls_verify: bool = True,
                 cert_dir: str | None = None, authfile: str | None = None,
                 token_file: str | None = None) -> SignatureStore:
    """The store for ``--sigstore``: ``auto`` (extension API or registries.d, like c/image), an
    ``atomicsig serve`` URL with a write token, or a plain path/``file:``/``http(s):`` lookaside."""
    if location == "auto":
        return AutoStore(registries_dir=registries_dir, tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile)
    if token_file:
        if not location.startswith(("http://", "https://")):
            raise InputError("--sigstore-token-file needs an http(s):// --sigstore (an `atomicsig serve` URL)")
        from atomicsig.net.tokens import read_token_file

        return ServerStore(location, read_token_file(token_file), verify=tls_verify)
    return open_store(location, verify=tls_verify)
