"""The one HTTP fetcher (atomicsig.net.fetch) as each client uses it, against real cheroot servers on 127.0.0.1:
the same User-Agent everywhere, keep-alive reuse by the HTTP lookaside, the retry and redirect rules per caller,
and one way of refusing an oversized body."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from atomicsig.errors import RegistryError
from atomicsig.format import manifest
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.format.extension_wire import MAX_SIGNATURE_LIST_SIZE, extension_path
from atomicsig.format.reference import parse
from atomicsig.format.sigpath import digest_dirname
from atomicsig.net import fetch
from atomicsig.net import registry as registry_mod
from atomicsig.net.registry import RegistryClient
from atomicsig.store.extension import ExtensionStore, StaticTokenClient
from atomicsig.store.http import HTTPLookaside
from atomicsig.sync.config import Endpoint
from atomicsig.sync.source import HTTPSource, SourceError
from tests.infra import run_wsgi
from tests.tokenserver import self_signed

DIG = "sha256:" + hashlib.sha256(b"fetch-test").hexdigest()
BLOB = b"\xa3\x01signature-bytes"
UA = fetch.USER_AGENT
Script = list[tuple[int, dict[str, str], bytes]]


class Recorder:
    """A WSGI app answering scripted responses per path (the last one repeats) and recording every request."""

    def __init__(self, routes: dict[str, Script]) -> None:
        self.routes = routes
        self.seen: list[dict[str, str]] = []

    def hits(self, path: str) -> int:
        return sum(1 for r in self.seen if r["path"] == path)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/healthz":
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        environ["wsgi.input"].read()
        self.seen.append({"path": path, "method": environ["REQUEST_METHOD"], "port": environ["REMOTE_PORT"],
                          "ua": environ.get("HTTP_USER_AGENT", ""), "auth": environ.get("HTTP_AUTHORIZATION", "")})
        script = self.routes.get(path) or [(404, {}, b"<html>404 page not found</html>")]
        status, headers, body = script[min(self.hits(path) - 1, len(script) - 1)]
        hdrs = [(k, v) for k, v in headers.items() if k != "X-No-Length"]
        if "X-No-Length" not in headers:
            hdrs.append(("Content-Length", str(len(body))))
        start_response(f"{status} X", hdrs)
        return [body]


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[Recorder, str]]]:
    """Start a Recorder on a free port; returns it with its base URL (http(s)://127.0.0.1:PORT)."""
    with ExitStack() as stack:
        def start(routes: dict[str, Script], tls: tuple[str, str] | None = None) -> tuple[Recorder, str]:
            app = Recorder(routes)
            return app, stack.enter_context(run_wsgi(app, tls=tls))
        registry_mod._clients.clear()
        yield start


def registry_client(host: str, **kw: Any) -> RegistryClient:
    """A client for a plain-http test registry, its scheme already chosen: the ping's https probe would hang on
    cheroot's 10 s idle timeout (cheroot waits for a request line inside the TLS hello). The UA test pings
    over TLS."""
    client = RegistryClient(host, tls_verify=False, **kw)
    client._scheme = "http"
    return client


def sig_path(repo: str, n: int) -> str:
    return f"/{digest_dirname(repo, DIG)}/signature-{n}"


def test_every_client_sends_the_same_user_agent(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Over TLS with a private CA, which every client is given its own way (--cert-dir, verify=CA file).
    cert, key, _ = self_signed(tmp_path / "tls")
    certs = tmp_path / "certs.d"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(cert.read_bytes())
    token = tmp_path / "token"
    token.write_text("t" * 20)
    app, base = serve({}, tls=(str(cert), str(key)))
    host = base.removeprefix("https://")
    app.routes.update({
        "/v2/": [(401, {"WWW-Authenticate": f'Bearer realm="{base}/token",service="x"'}, b"")],
        "/token": [(200, {}, b'{"token": "abc"}')],
        "/v2/a/manifests/1": [(401, {"WWW-Authenticate": f'Bearer realm="{base}/token",service="x"'}, b""),
                              (200, {"Content-Type": manifest.OCI_MANIFEST}, b'{"schemaVersion":2}')],
        sig_path("a", 1): [(200, {}, BLOB)],
        "/sync/signature-1": [(200, {}, BLOB)],
    })
    RegistryClient(host, cert_dir=str(certs)).get_manifest(parse(f"{host}/a:1"))  # ping, token, manifest
    assert HTTPLookaside(base, verify=str(cert)).read(parse(f"{host}/a:1"), DIG)[0].blob == BLOB
    assert ExtensionStore(StaticTokenClient(base, "t" * 20, verify=str(cert))).read(parse(f"{host}/a:1"), DIG) == []
    src = HTTPSource(Endpoint(base, token_file=str(token), tls_verify=str(cert)))
    assert src.signature("sync/signature-1") == BLOB
    assert {r["path"] for r in app.seen} >= {"/v2/", "/token", "/v2/a/manifests/1", sig_path("a", 1),
                                             extension_path("a", DIG), "/sync/signature-1"}
    assert {r["ua"] for r in app.seen} == {UA} and UA.startswith("atomicsig/")


def test_lookaside_reuses_one_connection_across_signatures_and_images(serve) -> None:  # type: ignore[no-untyped-def]
    # 404s carry a body (as nginx's do): reuse needs it drained, not the connection dropped.
    app, base = serve({sig_path("a", n): [(200, {}, BLOB + b"%d" % n)] for n in range(1, 6)}
                      | {sig_path("b", n): [(200, {}, BLOB)] for n in range(1, 3)})
    for repo, count in (("a", 5), ("b", 2), ("a", 5)):
        # a new store per image, as `--sigstore auto` opens one per image
        assert len(HTTPLookaside(base).read(parse(f"example.com/{repo}"), DIG)) == count
    assert len(app.seen) == 6 + 3 + 6
    assert len({r["port"] for r in app.seen}) == 1, app.seen


def test_retry_rules_per_caller(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    busy: Script = [(503, {}, b"busy"), (200, {}, BLOB)]
    ct = {"Content-Type": manifest.OCI_MANIFEST}
    app, base = serve({"/v2/": [(200, {}, b"{}")], "/v2/a/manifests/1": [(503, {}, b""), (200, ct, b"{}")],
                       sig_path("a", 1): busy, "/put": [(503, {}, b"")], extension_path("a", DIG): busy,
                       "/s/signature-1": busy})
    host = base.removeprefix("http://")
    client = registry_client(host, retries=2)
    client.get_manifest(parse(f"{host}/a:1"))  # registry GETs are retried...
    assert app.hits("/v2/a/manifests/1") == 2
    assert client.authed("PUT", f"{base}/put", "a", "pull,push", data=b"x").status_code == 503
    assert app.hits("/put") == 1  # ...its PUTs never (a signature must not be stored twice)
    # the lookaside, the extension client and the sync source answer with the failure at once (the node's
    # c/image does not retry a lookaside read; the sync daemon retries the whole pass)
    with pytest.raises(RegistryError, match="HTTP 503"):
        HTTPLookaside(base).read(parse(f"{host}/a"), DIG)
    with pytest.raises(RegistryError, match="HTTP 503"):
        ExtensionStore(StaticTokenClient(base, None)).read(parse(f"{host}/a"), DIG)
    with pytest.raises(SourceError, match="HTTP 503"):
        HTTPSource(Endpoint(base)).signature("s/signature-1")
    assert app.hits(sig_path("a", 1)) == app.hits(extension_path("a", DIG)) == app.hits("/s/signature-1") == 1


def test_retry_after_is_honoured_within_a_cap(serve) -> None:  # type: ignore[no-untyped-def]
    app, base = serve({"/v2/": [(200, {}, b"{}")],
                       "/v2/a/manifests/soon": [(429, {"Retry-After": "1"}, b""),
                                                (200, {"Content-Type": manifest.OCI_MANIFEST}, b"{}")],
                       "/v2/a/manifests/later": [(503, {"Retry-After": "3600"}, b"")]})
    host = base.removeprefix("http://")
    client = registry_client(host, retries=3)
    t0 = time.monotonic()
    client.get_manifest(parse(f"{host}/a:soon"))
    assert time.monotonic() - t0 >= 1.0 and app.hits("/v2/a/manifests/soon") == 2
    t0 = time.monotonic()
    with pytest.raises(RegistryError, match="HTTP 503"):
        client.get_manifest(parse(f"{host}/a:later"))
    assert time.monotonic() - t0 < 1.0 and app.hits("/v2/a/manifests/later") == 1
    assert fetch.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 0.5) == 0.0  # a date in the past: now
    assert fetch.retry_after("soon", 0.5) == 0.5 and fetch.retry_after(None, 0.3) == 0.3
    assert fetch.retry_after("99999999999999999999", 0.5) is None


def test_redirect_rules_per_caller(serve) -> None:  # type: ignore[no-untyped-def]
    other, other_base = serve({})
    moved = {"Location": f"{other_base}/moved"}
    other.routes.update({"/moved": [(200, {"Content-Type": manifest.OCI_MANIFEST}, BLOB)],
                         "/list": [(200, {}, b'{"signatures": []}')]})
    app, base = serve({"/v2/": [(200, {}, b"{}")], "/v2/a/manifests/1": [(307, moved, b"")],
                       sig_path("a", 1): [(302, moved, b"")], "/s/signature-1": [(302, moved, b"")],
                       extension_path("a", DIG): [(302, {"Location": f"{other_base}/list"}, b"")]})
    host = base.removeprefix("http://")
    # registry (blob/manifest storage redirects), lookaside and extension client (c/image's Go client) follow
    assert registry_client(host).get_manifest(parse(f"{host}/a:1")).data == BLOB
    assert HTTPLookaside(base).read(parse(f"{host}/a"), DIG)[0].blob == BLOB
    assert ExtensionStore(StaticTokenClient(base, "secret-token-123456")).read(parse(f"{host}/a"), DIG) == []
    assert [r["auth"] for r in app.seen if r["path"] == extension_path("a", DIG)] == ["Bearer secret-token-123456"]
    assert all(not r["auth"] for r in other.seen)  # the bearer token never follows a redirect to another origin
    # a sync source is one origin: a redirect is an answer it does not use
    with pytest.raises(SourceError, match="HTTP 302"):
        HTTPSource(Endpoint(base)).signature("s/signature-1")
    assert other.hits("/moved") == 2


def test_a_body_over_its_limit_is_refused_the_same_way_everywhere(serve) -> None:  # type: ignore[no-untyped-def]
    sig, lst, man = (b"\xa3" * (MAX_SIGNATURE_SIZE + 1), b"{" * (MAX_SIGNATURE_LIST_SIZE + 1),
                     b"{" * (manifest.MAX_MANIFEST_SIZE + 1))
    chunked = {"X-No-Length": "1"}  # no Content-Length: the limit must hold while reading
    _, base = serve({"/v2/": [(200, {}, b"{}")], "/v2/a/manifests/1": [(200, chunked, man)],
                       sig_path("a", 1): [(200, chunked, sig)], extension_path("a", DIG): [(200, chunked, lst)],
                       "/s/signature-1": [(200, chunked, sig)]})
    host = base.removeprefix("http://")
    calls: list[tuple[Callable[[], object], int]] = [
        (lambda: registry_client(host).get_manifest(parse(f"{host}/a:1")), manifest.MAX_MANIFEST_SIZE),
        (lambda: HTTPLookaside(base).read(parse(f"{host}/a"), DIG), MAX_SIGNATURE_SIZE),
        (lambda: ExtensionStore(StaticTokenClient(base, None)).read(parse(f"{host}/a"), DIG), MAX_SIGNATURE_LIST_SIZE),
        (lambda: HTTPSource(Endpoint(base)).signature("s/signature-1"), MAX_SIGNATURE_SIZE),
    ]
    for call, limit in calls:
        with pytest.raises(fetch.TooLarge, match=f"is larger than {limit} bytes") as err:
            call()
        assert err.value.exit_code == 3


def test_no_answer_is_a_net_error_with_the_callers_wording(serve) -> None:  # type: ignore[no-untyped-def]
    from tests.infra import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError, match=r"^cannot read .*signature-1: ConnectionError$"):
        HTTPLookaside(dead).read(parse("example.com/a"), DIG)
    with pytest.raises(RegistryError, match=r"^cannot reach http://127.0.0.1:\d+: ConnectionError$"):
        ExtensionStore(StaticTokenClient(dead, None)).read(parse("example.com/a"), DIG)
    with pytest.raises(SourceError, match=r"^cannot reach .*: ConnectionError$"):
        HTTPSource(Endpoint(dead)).signature("s/signature-1")


def test_proxy_environment_is_honoured_once_per_origin(serve, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """$HTTP_PROXY/$NO_PROXY apply as in containers/image (read once per origin, not per request)."""
    import http.server
    import threading

    asked: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            asked.append(self.path)  # a proxy gets the absolute URL
            self.send_response(200 if self.path.endswith("signature-1") else 404)
            body = BLOB if self.path.endswith("signature-1") else b""
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        direct, direct_base = serve({sig_path("a", 1): [(200, {}, BLOB)]})
        for name in ("http_proxy", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        fetcher = fetch.Fetcher()
        # example.invalid is never resolved: the request goes to the proxy, which answers it
        assert HTTPLookaside("http://example.invalid", fetcher).read(parse("example.com/a"), DIG)[0].blob == BLOB
        assert HTTPLookaside(direct_base, fetcher).read(parse("example.com/a"), DIG)[0].blob == BLOB  # NO_PROXY
        assert asked == [f"http://example.invalid{sig_path('a', n)}" for n in (1, 2)]
        assert direct.hits(sig_path("a", 1)) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_free_port_takes_turns_in_its_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process given ATOMICSIG_PORT_BLOCK stays inside it (parallel test workers never race for one port);
    without it, or with a value out of range, the kernel picks."""
    from atomicsig.demo import env

    monkeypatch.setenv(env.PORT_BLOCK_ENV, "23000")
    ports = {env.free_port() for _ in range(5)}
    assert len(ports) == 5 and all(23000 <= p < 23500 for p in ports)
    monkeypatch.setenv(env.PORT_BLOCK_ENV, "70000")
    assert 0 < env.free_port() < 65536


def test_deadline_bounds_every_request_of_the_thread() -> None:
    """fetch.deadline: a registry client built with 30 s timeouts and 3 retries, asking a peer that accepts the
    connection and never answers, gives up at the caller's bound (a webhook review's deadline), not after
    minutes; a request begun past the bound fails at once; outside the block the client's own timeouts apply."""
    import socket

    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)  # connections complete in the backlog; nothing is ever read or answered
    try:
        client = RegistryClient(f"127.0.0.1:{hang.getsockname()[1]}", tls_verify=False)
        assert client.timeout == 30.0 and client.retries == 3
        started = time.monotonic()
        with fetch.deadline(started + 0.6), pytest.raises(RegistryError, match="cannot reach registry"):
            client.get_manifest(parse(f"{client.host}/a/b:1"))
        assert time.monotonic() - started < 1.5
        with fetch.deadline(time.monotonic() - 1), pytest.raises(fetch.NetError) as info:
            client.fetcher.request("GET", f"http://{client.host}/v2/")
        assert info.value.timed_out
        with fetch.deadline(time.monotonic() + 5), fetch.deadline(time.monotonic() + 0.3):
            left = fetch.time_left()
            assert left is not None and left <= 0.3  # nested: the earlier bound wins
        assert fetch.time_left() is None
    finally:
        hang.close()
