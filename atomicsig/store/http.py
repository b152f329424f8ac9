"""A read-only HTTP(S) lookaside, read exactly as containers/image reads one."""

from __future__ import annotations

import urllib.parse

from atomicsig.errors import InputError
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.format.reference import Reference
from atomicsig.format.sigpath import MAX_LOOKASIDE_SIGNATURES, signature_relpath
from atomicsig.store.base import AppendResult, SignatureStore, StoredSignature


class HTTPLookaside(SignatureStore):
    """A read-only HTTP(S) lookaside, read exactly as containers/image does (404 ends the list, else error)."""

    def __init__(self, base_url: str, session: object | None = None, *, verify: bool | str = True) -> None:
        self.base_url = base_url
        self._session = session
        self.verify = verify

    def describe(self) -> str:
        return self.base_url

    def url(self, ref: Reference, digest: str, n: int) -> str:
        u = urllib.parse.urlsplit(self.base_url)
        path = f"{u.path}/{signature_relpath(ref.path, digest, n)}"
        return urllib.parse.urlunsplit(u._replace(path=path))

    def read(self, ref: Reference, digest: str) -> list[StoredSignature]:
        import requests

        from atomicsig.errors import RegistryError
        from atomicsig.net.body import read_at_most

        session = self._session or requests.Session()
        out: list[StoredSignature] = []
        for n in range(1, MAX_LOOKASIDE_SIGNATURES + 1):
            url = self.url(ref, digest, n)
            try:
                resp = session.get(url, stream=True, timeout=30, verify=self.verify)  # type: ignore[attr-defined]
            except requests.RequestException as exc:
                raise RegistryError(f"cannot read {url}: {exc.__class__.__name__}") from exc
            with resp:
                if resp.status_code == 404:
                    break
                if resp.status_code != 200:
                    raise RegistryError(f"reading {url}: HTTP {resp.status_code}", status=resp.status_code)
                data = read_at_most(resp, MAX_SIGNATURE_SIZE, url)
            if n == MAX_LOOKASIDE_SIGNATURES:
                raise RegistryError(f"{url}: server provided {n} signatures; containers/image refuses that many")
            out.append(StoredSignature(n, data, url))
        return out

    def append(self, ref: Reference, digest: str, blob: bytes) -> AppendResult:
        raise InputError(f"writing directly to an HTTP lookaside ({self.base_url}) is not supported; "
                         "use a file: sigstore or a registry with the signature extension")
