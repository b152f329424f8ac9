"""A read-only HTTP(S) lookaside, read exactly as containers/image reads one."""

from __future__ import annotations

import urllib.parse

from atomicsig.errors import InputError, RegistryError
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.format.reference import Reference
from atomicsig.format.sigpath import MAX_LOOKASIDE_SIGNATURES, signature_relpath
from atomicsig.net import fetch
from atomicsig.store.base import AppendResult, SignatureStore, StoredSignature


class HTTPLookaside(SignatureStore):
    """A read-only HTTP(S) lookaside, read exactly as containers/image does (404 ends the list, else error).

    c/image reads it with one plain ``GET`` per ``signature-N``, no retries, redirects followed, no registry
    credentials (SPEC §3.2): the fetcher's lookaside rules. The fetcher is shared per TLS setting, so reading
    ``signature-1..N`` of many images reuses the same keep-alive connection(s).
    """

    def __init__(self, base_url: str, fetcher: fetch.Fetcher | None = None, *, verify: bool | str = True) -> None:
        self.base_url = base_url
        self.verify = verify
        self.fetcher = fetcher or fetch.shared(verify=verify, retries=0, redirects=True)

    def describe(self) -> str:
        return self.base_url

    def url(self, ref: Reference, digest: str, n: int) -> str:
        u = urllib.parse.urlsplit(self.base_url)
        path = f"{u.path}/{signature_relpath(ref.path, digest, n)}"
        return urllib.parse.urlunsplit(u._replace(path=path))

    def read(self, ref: Reference, digest: str) -> list[StoredSignature]:
        out: list[StoredSignature] = []
        for n in range(1, MAX_LOOKASIDE_SIGNATURES + 1):
            url = self.url(ref, digest, n)
            try:
                with self.fetcher.exchange("GET", url, timeout=30) as resp:
                    if resp.status_code == 404:
                        break
                    if resp.status_code != 200:
                        raise RegistryError(f"reading {url}: HTTP {resp.status_code}", status=resp.status_code)
                    data = fetch.read_body(resp, MAX_SIGNATURE_SIZE, url)
            except fetch.NetError as exc:
                raise RegistryError(f"cannot read {url}: {exc.cause_name}") from exc
            if n == MAX_LOOKASIDE_SIGNATURES:
                raise RegistryError(f"{url}: server provided {n} signatures; containers/image refuses that many")
            out.append(StoredSignature(n, data, url))
        return out

    def append(self, ref: Reference, digest: str, blob: bytes) -> AppendResult:
        raise InputError(f"writing directly to an HTTP lookaside ({self.base_url}) is not supported; "
                         "use a file: sigstore or a registry with the signature extension")
