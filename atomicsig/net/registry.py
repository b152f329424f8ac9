"""A Docker Registry HTTP API v2 client on the fetcher: manifests, digests, auth, and extension detection.

Enough of the protocol to sign what a registry really serves: fetch the raw manifest bytes (bounded at 4 MiB),
hash them ourselves (a ``Docker-Content-Digest`` header is only cross-checked, never trusted alone), and learn
whether the registry advertises the signature extension (``X-Registry-Supports-Signatures: 1``).

Auth follows the challenge flow: anonymous first; on 401 with ``Basic`` send credentials; with ``Bearer`` fetch
a token from the realm for ``repository:<name>:<actions>`` (with Basic credentials if we have any).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from atomicsig.errors import NotFound, RegistryAuthError, RegistryError
from atomicsig.format import manifest
from atomicsig.format.reference import Reference
from atomicsig.net import auth
from atomicsig.net.fetch import Fetcher, NetError, Response, TooLarge, read_body, release, tls_settings

#: containers/image caps error bodies and token answers at 1 MiB (SPEC §8).
MAX_TOKEN_SIZE = 1 << 20
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: str


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_RE.findall(rest))


class RegistryClient:
    """One registry host. Thread-safe enough for a thread pool (the fetcher keeps a Session per thread)."""

    def __init__(self, host: str, *, tls_verify: bool = True, cert_dir: str | None = None,
                 authfile: str | None = None, timeout: float = 30.0, retries: int = 3,
                 credentials: tuple[str, str] | None = None) -> None:
        self.host = host
        self.tls_verify = tls_verify
        self.cert_dir = cert_dir
        self.authfile = authfile
        self.timeout = timeout
        self.retries = retries
        self._explicit_creds = credentials
        verify, cert = tls_settings(host, tls_verify=tls_verify, cert_dir=cert_dir)
        # Registries redirect blob and manifest GETs to storage (followed), and flap behind load balancers
        # (GETs retried): the fetcher's rules for a registry (atomicsig.net.fetch).
        self.fetcher = Fetcher(verify=verify, cert=cert, timeout=timeout, retries=retries, redirects=True)
        self._tokens: dict[str, str] = {}
        self._scheme: str | None = None
        self._supports_signatures: bool | None = None

    # ---- transport ----------------------------------------------------------------------------------------

    def base_url(self) -> str:
        if self._scheme is None:
            self.ping()
        return f"{self._scheme}://{self.host}"

    def _request(self, method: str, url: str, **kw: Any) -> Response:
        """One request through the fetcher (retried there), its failures worded for this registry."""
        try:
            return self.fetcher.request(method, url, **kw)
        except NetError as exc:
            if exc.tls:
                raise RegistryError(f"TLS error talking to {self.host}: {exc.reason}",
                                    hint="use --tls-verify=false for a registry without valid TLS, "
                                         "or --cert-dir with its CA") from exc
            raise RegistryError(f"cannot reach registry {self.host}: {exc.reason}") from exc

    def ping(self) -> None:
        """``GET /v2/``: choose the scheme and record ``X-Registry-Supports-Signatures``."""
        schemes = ["https"] if self.tls_verify else ["https", "http"]
        last: Exception | None = None
        for scheme in schemes:
            try:
                resp = self._request("GET", f"{scheme}://{self.host}/v2/", allow_redirects=False)
            except RegistryError as exc:
                last = exc
                continue
            if resp.status_code in (200, 401):
                self._scheme = scheme
                self._supports_signatures = resp.headers.get("X-Registry-Supports-Signatures") == "1"
                return
            last = RegistryError(f"registry {self.host} answered HTTP {resp.status_code} to /v2/",
                                 status=resp.status_code)
        assert last is not None
        raise last

    @property
    def supports_signatures(self) -> bool:
        if self._supports_signatures is None:
            self.ping()
        return bool(self._supports_signatures)

    # ---- auth ---------------------------------------------------------------------------------------------

    def _credentials(self, repo_path: str) -> tuple[str, str] | None:
        return self._explicit_creds or auth.credentials(self.host, repo_path, self.authfile)

    def _token(self, params: dict[str, str], scope: str, repo_path: str) -> str:
        key = scope
        if key in self._tokens:
            return self._tokens[key]
        realm = params.get("realm")
        if not realm:
            raise RegistryError(f"registry {self.host} sent a Bearer challenge without a realm")
        query = {"scope": scope}
        if params.get("service"):
            query["service"] = params["service"]
        creds = self._credentials(repo_path)
        try:
            with self.fetcher.exchange("GET", realm, params=query, auth=creds) as resp:
                if resp.status_code in (401, 403):
                    raise RegistryAuthError(f"token server for {self.host} refused our credentials "
                                            f"(HTTP {resp.status_code})", status=resp.status_code)
                if resp.status_code != 200:
                    raise RegistryError(f"token server for {self.host} answered HTTP {resp.status_code}",
                                        status=resp.status_code)
                raw = read_body(resp, MAX_TOKEN_SIZE, f"token answer of {realm}")
        except NetError as exc:
            raise RegistryError(f"cannot reach token server {realm}: {exc.reason}") from exc
        try:
            body = json.loads(raw)
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server for {self.host} returned no token")
        self._tokens[key] = token
        return token

    def authed(self, method: str, url: str, repo_path: str, actions: str = "pull", **kw: Any) -> Response:
        """A request with the auth the registry asks for (anonymous, Basic or Bearer)."""
        scope = f"repository:{repo_path}:{actions}"
        headers = dict(kw.pop("headers", {}) or {})
        if scope in self._tokens:
            headers["Authorization"] = f"Bearer {self._tokens[scope]}"
        resp = self._request(method, url, headers=headers, **kw)
        if resp.status_code != 401:
            return resp
        challenge = resp.headers.get("WWW-Authenticate", "")
        release(resp)
        scheme, params = _parse_challenge(challenge)
        if scheme == "bearer":
            self._tokens.pop(scope, None)
            headers["Authorization"] = f"Bearer {self._token(params, scope, repo_path)}"
            resp = self._request(method, url, headers=headers, **kw)
        elif scheme == "basic":
            creds = self._credentials(repo_path)
            if creds is None:
                raise RegistryAuthError(f"registry {self.host} requires credentials; none found in auth files",
                                        status=401, hint="log in with `podman login` or pass --authfile")
            resp = self._request(method, url, headers=headers, auth=creds, **kw)
        if resp.status_code == 401:
            raise RegistryAuthError(f"registry {self.host} refused our credentials for {repo_path} (HTTP 401)",
                                    status=401)
        return resp

    # ---- manifests ----------------------------------------------------------------------------------------

    def get_manifest(self, ref: Reference, tag_or_digest: str | None = None) -> FetchedManifest:
        """Fetch a manifest by tag or digest; the digest is computed from the bytes received."""
        which = tag_or_digest or ref.digest or ref.tag or "latest"
        url = f"{self.base_url()}/v2/{ref.path}/manifests/{which}"
        resp = self.authed("GET", url, ref.path, headers={"Accept": ", ".join(manifest.ACCEPT_TYPES)})
        try:
            if resp.status_code == 404:
                # A decided "no such image" (the node's pull fails the same way), not an outage: verify reports it
                # as rejected, never as "could not check". The registry's error code says which part is unknown.
                what = "repository" if _error_code(resp) == "NAME_UNKNOWN" else "manifest"
                raise NotFound(f"manifest unknown: {what} {ref.name}{'@' if ':' in which else ':'}{which} "
                               f"not found on {self.host}", status=404)
            if resp.status_code == 403:
                raise RegistryAuthError(f"registry {self.host} denied access to {ref.path} (HTTP 403)", status=403)
            if resp.status_code != 200:
                raise RegistryError(f"registry {self.host} answered HTTP {resp.status_code} for {ref.name}:{which}",
                                    status=resp.status_code)
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > manifest.MAX_MANIFEST_SIZE:
                raise TooLarge(f"manifest of {ref.name}:{which} is larger than {manifest.MAX_MANIFEST_SIZE} bytes")
            data = read_body(resp, manifest.MAX_MANIFEST_SIZE, f"manifest of {ref.name}:{which}")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = resp.headers.get("Docker-Content-Digest")
        finally:
            release(resp)
        digest = manifest.digest(data)
        if which.startswith("sha256:") and digest != which:
            raise RegistryError(f"registry {self.host} served a manifest with digest {digest} for {which}")
        if header_digest and header_digest.startswith("sha256:") and header_digest != digest \
                and manifest.guess_media_type(data) != manifest.DOCKER_V2S1_SIGNED:
            raise RegistryError(f"registry {self.host}: Docker-Content-Digest {header_digest} does not match "
                                f"the manifest bytes ({digest})")
        return FetchedManifest(data, media_type or manifest.guess_media_type(data), digest)


def _error_code(resp: Response) -> str | None:
    """The first ``errors[].code`` of a registry error body (distribution spec), or None; reads at most 64 KiB."""
    try:
        body = read_body(resp, 65536, "registry error")
        errors = json.loads(body).get("errors")
        code = errors[0].get("code") if isinstance(errors, list) and errors else None
    except (ValueError, AttributeError, RegistryError):
        return None
    return code if isinstance(code, str) else None


_clients: dict[tuple[str, bool, str | None, str | None], RegistryClient] = {}


def client_for(host: str, *, tls_verify: bool = True, cert_dir: str | None = None,
               authfile: str | None = None) -> RegistryClient:
    """One client per (host, TLS settings) per process, so pings and tokens are reused across a batch."""
    key = (host, tls_verify, cert_dir, authfile)
    if key not in _clients:
        _clients[key] = RegistryClient(host, tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile)
    return _clients[key]
