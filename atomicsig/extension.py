"""Signatures through a registry's signature extension API, and the store choice containers/image makes (SPEC §6).

A registry that answers ``X-Registry-Supports-Signatures: 1`` to ``GET /v2/`` keeps simple signatures itself
(OpenShift's integrated registry does); c/image then reads and writes them only through
``/extensions/v2/<repo path>/signatures/<digest>`` and ignores registries.d for that registry (SPEC §6.1).
Otherwise signatures live in the registries.d lookaside (SPEC §3, §4). :class:`AutoStore` makes that choice per
image so ``atomicsig sign/verify --sigstore auto`` writes where podman and CRI-O will read.

The list/entry JSON shape is shared with ``atomicsig serve`` (:func:`encode_entry`, :func:`decode_list`), so the
client and the server cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

import requests

from . import registries_d
from .blob import MAX_SIGNATURE_SIZE
from .errors import InputError, RegistryError
from .httpbody import read_at_most
from .lookaside import AppendResult, HTTPLookaside, SignatureStore, StoredSignature, open_store
from .reference import Reference, validate_digest
from .registry import client_for

#: c/image reads the signature list with ``MaxSignatureListBodySize`` (SPEC §6.2, §8).
MAX_SIGNATURE_LIST_SIZE = 4 * 1024 * 1024
SIGNATURE_TYPE = "atomic"
SCHEMA_VERSION = 2


def extension_path(repo_path: str, digest: str) -> str:
    """``/extensions/v2/<name>/signatures/<digest>``; the digest keeps its ``:`` (SPEC §6.2)."""
    return f"/extensions/v2/{repo_path}/signatures/{validate_digest(digest)}"


def new_signature_name(digest: str, taken: set[str] | None = None) -> str:
    """``<digest>@<32 hex>`` from 16 random bytes; regenerated on a (very unlikely) collision, as c/image does."""
    while True:
        name = f"{digest}@{secrets.token_hex(16)}"
        if not taken or name not in taken:
            return name


def encode_entry(name: str, blob: bytes) -> dict[str, Any]:
    """One signature object, field order as c/image's ``json.Marshal`` writes it."""
    return {"schemaVersion": SCHEMA_VERSION, "name": name, "type": SIGNATURE_TYPE,
            "content": base64.b64encode(blob).decode("ascii")}


def decode_list(body: bytes, where: str) -> list[tuple[str, bytes]]:
    """(name, blob) of every usable entry: only ``schemaVersion 2`` + ``type atomic`` count (SPEC §6.2)."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise RegistryError(f"{where}: signature list is not JSON") from exc
    sigs = doc.get("signatures") if isinstance(doc, dict) else None
    if sigs is None:
        return []
    if not isinstance(sigs, list):
        raise RegistryError(f"{where}: \"signatures\" is not a list")
    out: list[tuple[str, bytes]] = []
    for entry in sigs:
        if not isinstance(entry, dict) or entry.get("schemaVersion") != SCHEMA_VERSION \
                or entry.get("type") != SIGNATURE_TYPE:
            continue
        content = entry.get("content")
        if not isinstance(content, str):
            continue
        try:
            blob = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RegistryError(f"{where}: signature {entry.get('name')!r} has invalid base64 content") from exc
        out.append((str(entry.get("name", "")), blob))
    return out


class _Client(Protocol):
    """What :class:`ExtensionStore` needs from a registry client (RegistryClient, or a static-token client)."""

    host: str

    def base_url(self) -> str: ...

    def authed(self, method: str, url: str, repo_path: str, actions: str = "pull",
               **kw: Any) -> requests.Response: ...


class StaticTokenClient:
    """Talks to ``atomicsig serve`` directly: a fixed base URL and a fixed bearer token for writes."""

    def __init__(self, base_url: str, token: str | None, *, verify: bool | str = True, timeout: float = 30.0) -> None:
        self._base = base_url.rstrip("/")
        self.host = urllib.parse.urlsplit(self._base).netloc
        self.token, self.timeout = token, timeout
        self.session = requests.Session()
        self.session.verify = verify

    def base_url(self) -> str:
        return self._base

    def authed(self, method: str, url: str, repo_path: str, actions: str = "pull",
               **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            return self.session.request(method, url, headers=headers, timeout=self.timeout,
                                        verify=self.session.verify, **kw)
        except requests.RequestException as exc:
            raise RegistryError(f"cannot reach {self._base}: {exc.__class__.__name__}") from exc


class ExtensionStore(SignatureStore):
    """Simple signatures kept by the registry itself, spoken exactly as c/image does (SPEC §6.2).

    Reads authenticate for ``pull``; writes for ``pull,push``. A read succeeds on 200 (404 = no signatures);
    only 201 is a successful write.
    """

    def __init__(self, client: _Client) -> None:
        self.client = client

    def describe(self) -> str:
        return f"{self.client.host} (signature extension API)"

    def _list(self, ref: Reference, digest: str, actions: str) -> list[tuple[str, bytes]]:
        url = self.client.base_url() + extension_path(ref.path, digest)
        resp = self.client.authed("GET", url, ref.path, actions, stream=True)
        with resp:
            if resp.status_code == 404:
                # c/image fails on 404 too, but there it also means "nothing stored yet" (OpenShift: image not
                # in the stream; atomicsig serve: no signatures). A PUT to a truly absent image still fails.
                return []
            if resp.status_code != 200:
                raise RegistryError(f"reading signatures from {url}: HTTP {resp.status_code}",
                                    status=resp.status_code)
            body = read_at_most(resp, MAX_SIGNATURE_LIST_SIZE, f"{url}: signature list")
        return decode_list(body, url)

    def read(self, ref: Reference, digest: str) -> list[StoredSignature]:
        url = self.client.base_url() + extension_path(ref.path, digest)
        return [StoredSignature(i, blob, f"{url}#{name}", sniffed=False)
                for i, (name, blob) in enumerate(self._list(ref, digest, "pull"), start=1)]

    def append(self, ref: Reference, digest: str, blob: bytes) -> AppendResult:
        if len(blob) > MAX_SIGNATURE_SIZE:
            raise InputError(f"signature of {len(blob)} bytes is larger than {MAX_SIGNATURE_SIZE}")
        url = self.client.base_url() + extension_path(ref.path, digest)
        existing = self._list(ref, digest, "pull,push")
        for i, (name, old) in enumerate(existing, start=1):
            if old == blob:
                return AppendResult(f"{url}#{name}", i, False)
        name = new_signature_name(digest, {n for n, _ in existing})
        body = json.dumps(encode_entry(name, blob)).encode()
        resp = self.client.authed("PUT", url, ref.path, "pull,push", data=body, stream=True)
        with resp:
            if resp.status_code in (401, 403):
                raise upload_refused(resp, url, token_auth=isinstance(self.client, StaticTokenClient))
            if resp.status_code != 201:
                raise RegistryError(f"uploading signature to {url}: HTTP {resp.status_code}"
                                    f"{_server_says(resp)}", status=resp.status_code)
        return AppendResult(f"{url}#{name}", None, True)


class UploadRefused(InputError):
    """A signature upload refused with 401/403: retrying cannot help, the token, credentials or key must change.

    Exit 2, not the "could not decide" 3 of a transient failure (issue 11): a pipeline must not loop on it.
    """

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def _error_body(resp: requests.Response) -> tuple[str, str]:
    """(code, message) of the first entry of a registry-style ``{"errors": [...]}`` body, or ("", "")."""
    try:
        doc = json.loads(read_at_most(resp, 64 * 1024, "error body"))
        first = doc["errors"][0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (RegistryError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "", ""


def _server_says(resp: requests.Response) -> str:
    code, message = _error_body(resp)
    return f" ({code}: {message})" if message else ""


def upload_refused(resp: requests.Response, url: str, *, token_auth: bool) -> UploadRefused:
    """Why a PUT was refused, from the status and the body ``atomicsig serve`` (or a registry) sends."""
    status = resp.status_code
    code, message = _error_body(resp)
    said = f": {message}" if message else ""
    if status == 401:
        why = "the bearer token is missing or wrong" if token_auth else "the registry did not accept our credentials"
        hint = ("give the server's write token with --sigstore-token-file" if token_auth
                else "check the credentials for this registry (--authfile, podman login)")
    elif code.lower() in ("untrusted-signer", "untrusted_signer"):
        why = "the server refused the signer as untrusted"
        hint = "the server accepts only signatures by its trusted keys (serve --trusted-key); sign with one of them"
    else:
        why = "access denied"
        hint = "the token or credentials lack permission to store signatures here"
    return UploadRefused(f"uploading signature to {url} refused (HTTP {status}): {why}{said}", status=status,
                         hint=hint)


class AutoStore(SignatureStore):
    """Choose per image like c/image: the extension API if the registry advertises it, else registries.d.

    The registries.d directory is the one c/image would use (``--registries.d`` or
    :func:`registries_d.effective_dir`); writes use the write-mode URL (``lookaside-staging`` preferred), which
    must be ``file:`` (SPEC §3.3); reads may be ``file:`` or ``http(s):``.
    """

    def __init__(self, *, registries_dir: str | os.PathLike[str] | None = None, tls_verify: bool = True,
                 cert_dir: str | None = None, authfile: str | None = None) -> None:
        directory = Path(registries_dir) if registries_dir else registries_d.effective_dir()
        self.config = registries_d.load_dir(directory)
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
        from .server import read_token_file

        return ServerStore(location, read_token_file(token_file), verify=tls_verify)
    return open_store(location, verify=tls_verify)
