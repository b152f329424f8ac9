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

import json
import urllib.parse
from typing import Any, Protocol

from atomicsig.errors import InputError, RegistryError
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.format.extension_wire import (
    MAX_SIGNATURE_LIST_SIZE,
    decode_list,
    encode_entry,
    extension_path,
    new_signature_name,
)
from atomicsig.format.reference import Reference
from atomicsig.net.fetch import Fetcher, NetError, Response, read_body, release
from atomicsig.store.base import AppendResult, SignatureStore, StoredSignature


class _Client(Protocol):
    """What :class:`ExtensionStore` needs from a registry client (RegistryClient, or a static-token client)."""

    host: str

    def base_url(self) -> str: ...

    def authed(self, method: str, url: str, repo_path: str, actions: str = "pull",
               **kw: Any) -> Response: ...


class StaticTokenClient:
    """Talks to ``atomicsig serve`` directly: a fixed base URL and a fixed bearer token for writes.

    Fetcher rules as c/image's registry client for this API (SPEC §6.2): redirects followed, nothing retried
    (``sync push`` retries whole passes with backoff; a repeated PUT could store a signature twice).
    """

    def __init__(self, base_url: str, token: str | None, *, verify: bool | str = True, timeout: float = 30.0) -> None:
        self._base = base_url.rstrip("/")
        self.host = urllib.parse.urlsplit(self._base).netloc
        self.token, self.timeout = token, timeout
        self.fetcher = Fetcher(verify=verify, timeout=timeout, retries=0, redirects=True)

    def base_url(self) -> str:
        return self._base

    def authed(self, method: str, url: str, repo_path: str, actions: str = "pull", **kw: Any) -> Response:
        try:
            return self.fetcher.request(method, url, bearer=self.token, **kw)
        except NetError as exc:
            raise RegistryError(f"cannot reach {self._base}: {exc.cause_name}") from exc


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
        resp = self.client.authed("GET", url, ref.path, actions)
        try:
            if resp.status_code == 404:
                # c/image fails on 404 too, but there it also means "nothing stored yet" (OpenShift: image not
                # in the stream; atomicsig serve: no signatures). A PUT to a truly absent image still fails.
                return []
            if resp.status_code != 200:
                raise RegistryError(f"reading signatures from {url}: HTTP {resp.status_code}",
                                    status=resp.status_code)
            body = read_body(resp, MAX_SIGNATURE_LIST_SIZE, f"{url}: signature list")
        finally:
            release(resp)
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
        resp = self.client.authed("PUT", url, ref.path, "pull,push", data=body)
        try:
            if resp.status_code in (401, 403):
                raise upload_refused(resp, url, token_auth=isinstance(self.client, StaticTokenClient))
            if resp.status_code != 201:
                raise RegistryError(f"uploading signature to {url}: HTTP {resp.status_code}"
                                    f"{_server_says(resp)}", status=resp.status_code)
        finally:
            release(resp)
        return AppendResult(f"{url}#{name}", None, True)


class UploadRefused(InputError):
    """A signature upload refused with 401/403: retrying cannot help, the token, credentials or key must change.

    Exit 2, not the "could not decide" 3 of a transient failure (issue 11): a pipeline must not loop on it.
    """

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def _error_body(resp: Response) -> tuple[str, str]:
    """(code, message) of the first entry of a registry-style ``{"errors": [...]}`` body, or ("", "")."""
    try:
        doc = json.loads(read_body(resp, 64 * 1024, "error body"))
        first = doc["errors"][0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (RegistryError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "", ""


def _server_says(resp: Response) -> str:
    code, message = _error_body(resp)
    return f" ({code}: {message})" if message else ""


def upload_refused(resp: Response, url: str, *, token_auth: bool) -> UploadRefused:
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
