"""``atomicsig serve`` under load and at its limits (issue #7 item 5), with real sockets on 127.0.0.1.

The load test runs bench/load_serve.py (real signatures from gpg, ``atomicsig serve`` as a child process) and
asserts only outcomes: no error, no lost PUT, /healthz always answered, slow clients cut. Latencies are printed by
the bench and reported, never asserted. The limit tests run the hardened cheroot server in-process with small
limits so each takes seconds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from atomicsig.net.httpd import Limits
from atomicsig.serve.server import ServerConfig, SignatureServer, make_server
from tests.infra import GpgHome, free_port, wait_http

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "load-limits-token-" + "z" * 16
AUTH = f"Authorization: Bearer {TOKEN}\r\n"
DIGEST = "sha256:" + "5a" * 32
EXT = f"/extensions/v2/lim/app/signatures/{DIGEST}"

#: The issue's size (50 clients, 100,000 GETs, 5,000 PUTs, 20 slowloris, 5 slow readers) takes ~2 min here
#: including signing 5,500 signatures (~15 s), so CI runs it as is (see docs/serve.md, "Limits", for the figures).
LOAD_ARGS = ["--clients", "50", "--gets", "100000", "--puts", "5000", "--slowloris", "20", "--slow-readers", "5",
             "--warmup", "3", "--server-arg=--header-timeout=2"]


def test_load_no_errors_no_lost_puts_healthz_answered(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "load_serve.py"), *LOAD_ARGS, "--json", str(out),
                           "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path)
    print(proc.stdout)  # the figures, for the CI log
    assert out.is_file(), proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["requests"] == 105_000
    assert r["errors"] == 0, r["errors_by_kind"]
    assert r["put_check"] == {"puts": 5000, "created": 5000, "lost": 0, "unknown": 0, "lost_examples": []}
    assert r["healthz"]["failures"] == 0, r["healthz"]
    assert r["healthz"]["count"] > 0
    # Slowloris connections are cut by the server (408 or close), none survives its head deadline.
    assert r["slowloris"]["never_cut"] == 0 and r["slowloris"]["connections_cut"] >= 20, r["slowloris"]
    assert r["slow_readers"]["ok"] > 0 and not r["slow_readers"]["errors"], r["slow_readers"]
    assert r["server"]["alive_after_load"] and r["server"]["peak_rss_kib"] > 0
    assert proc.returncode == 0


# ---- limits, in-process ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob(signer: GpgHome) -> bytes:
    return signer.sign_image("registry.example/lim/app:v1", DIGEST)


def serve(root: Path, limits: Limits) -> Iterator[tuple[int, object]]:
    app = SignatureServer(ServerConfig(sigstore=root, write_token=TOKEN, max_body=limits.max_body))
    port = free_port()
    httpd = make_server(app, f"127.0.0.1:{port}", limits=limits)
    httpd.prepare()
    t = threading.Thread(target=httpd.serve, daemon=True)
    t.start()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield port, httpd
    finally:
        httpd.stop()
        t.join(timeout=10)


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[int, object, Path]]:
    """Two workers, 1 MiB bodies, 1 s heads, 2 s exchanges, 8 connections."""
    root = tmp_path / "store"
    root.mkdir()
    limits = Limits(threads=2, max_body=1024 * 1024, header_timeout=1.0, request_timeout=2.0, max_connections=8)
    for port, httpd in serve(root, limits):
        yield port, httpd, root


def exchange(port: int, data: bytes, *, wait: float = 30.0) -> bytes:
    """Send raw bytes, then read until the server closes (or ``wait`` seconds of silence)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        with contextlib.suppress(OSError):  # the server may refuse and close before reading everything
            s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def nothing_stored(root: Path) -> bool:
    return not any(root.rglob("signature-*"))


def put_json(blob: bytes) -> bytes:
    return json.dumps({"schemaVersion": 2, "name": f"{DIGEST}@{'0' * 32}", "type": "atomic",
                       "content": base64.b64encode(blob).decode()}).encode()


def test_body_limits_lying_length_and_chunked(small: tuple[int, object, Path], blob: bytes) -> None:
    port, _, root = small
    head = f"PUT {EXT} HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/json\r\n"
    # Content-Length over the limit: refused before the body is read.
    assert status_of(exchange(port, f"{head}Content-Length: {2 * 1024 * 1024}\r\n\r\n".encode() + b"{}")) == 413
    # Chunked, 2 MiB in 64 KiB chunks: refused once the cap is crossed.
    chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
    assert status_of(exchange(port, f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunk * 32 + b"0\r\n\r\n")) \
        == 413
    # One chunk that *claims* 256 MiB: refused from the size line, nothing buffered.
    assert status_of(exchange(port, f"{head}Transfer-Encoding: chunked\r\n\r\n10000000\r\nabc".encode())) == 413
    # Content-Length lying low: only that many bytes are the body (invalid JSON, 400); the rest is not a request.
    body = put_json(blob)
    answer = exchange(port, f"{head}Content-Length: 10\r\n\r\n".encode() + body)
    assert status_of(answer) == 400 and b"201 Created" not in answer
    # Content-Length lying high: the body never completes, the exchange deadline ends it.
    answer = exchange(port, f"{head}Content-Length: {len(body) + 100}\r\n\r\n".encode() + body)
    assert b"201" not in answer.split(b"\r\n", 1)[0]
    assert nothing_stored(root)
    # And a correct PUT still works afterwards.
    answer = exchange(port, f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    assert status_of(answer) == 201, answer[:300]
    assert not nothing_stored(root)


def test_huge_headers_rejected(small: tuple[int, object, Path]) -> None:
    port, _, _ = small
    big = "X-Big: " + "b" * 20_000
    assert status_of(exchange(port, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{big}\r\n\r\n".encode())) == 431
    assert status_of(exchange(port, f"GET /{'a' * 20_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())) == 431
    # Many small headers adding up count too.
    many = "".join(f"X-H{i}: {'v' * 50}\r\n" for i in range(400))
    assert status_of(exchange(port, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())) == 431
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200


def test_connection_cap_refuses_then_recovers(tmp_path: Path) -> None:
    """Eight keep-alive connections that each completed a request fill the cap: nothing can be evicted (only
    connections still waiting for their head are), so a ninth gets 503. (Changed with issue 12 #5: the cap used to
    be filled with eight head-less connections, which are now evicted instead — next test.)"""
    limits = Limits(threads=2, max_connections=8, header_timeout=60.0)
    for port, httpd in serve(tmp_path, limits):
        # Each connection sends its request as soon as it is open: one opened early and left head-less while the
        # others are served could meet the head deadline on a loaded CI machine (408), which is not this test.
        held: list[socket.socket] = []
        try:
            for _ in range(8):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                held.append(s)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while not answer.endswith(b"ok\n"):
                    chunk = s.recv(4096)  # kept alive: the server does not close it
                    assert chunk, f"the server closed a kept-alive connection after {answer[:200]!r}"
                    answer += chunk
            deadline = time.monotonic() + 30
            while httpd.guard.open_connections < 8 and time.monotonic() < deadline:  # type: ignore[attr-defined]
                time.sleep(0.05)
            assert httpd.guard.open_connections == 8  # type: ignore[attr-defined]
            extra = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", wait=10)
            assert extra == b"" or status_of(extra) == 503, extra[:200]
            assert httpd.guard.refused >= 1  # type: ignore[attr-defined]
        finally:
            for s in held:
                s.close()
        # Closed connections free their slots; the server serves again.
        for _ in range(100):
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert r.status_code == 200 and r.content == b"ok\n"


def test_cap_evicts_the_oldest_headless_connection(tmp_path: Path) -> None:
    """At the cap, a new connection displaces the one that has waited longest for its head (408), not itself."""
    limits = Limits(threads=2, max_connections=8, header_timeout=60.0)
    for port, httpd in serve(tmp_path, limits):
        held = []
        for _ in range(8):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            time.sleep(0.02)  # distinct ages
        try:
            deadline = time.monotonic() + 30
            while httpd.guard.open_connections < 8 and time.monotonic() < deadline:  # type: ignore[attr-defined]
                time.sleep(0.05)
            answer = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", wait=10)
            assert status_of(answer) == 200, answer[:200]
            assert httpd.guard.evicted == 1 and httpd.guard.refused == 0  # type: ignore[attr-defined]
            held[0].settimeout(5)
            assert status_of(held[0].recv(4096)) == 408  # the oldest one
            held[-1].settimeout(0.5)
            with pytest.raises(TimeoutError):
                held[-1].recv(4096)  # the newest is still waiting for its head
        finally:
            for s in held:
                s.close()


def _trickle(port: int, stop: threading.Event, outcome: list[bytes]) -> None:
    """A slowloris client: one header byte every 0.2 s until the server answers or closes (or ``stop``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 600
        for i in range(len(head)):
            if stop.is_set():
                return
            try:
                s.send(head[i:i + 1])
            except OSError:
                outcome.append(b"closed")
                return
            s.settimeout(0.2)
            try:
                data = s.recv(4096)
                outcome.append(data or b"closed")
                return
            except TimeoutError:
                continue
            except OSError:
                outcome.append(b"closed")
                return
        outcome.append(b"never cut")


def test_slowloris_is_cut_after_head_timeout(small: tuple[int, object, Path]) -> None:
    port, _, _ = small
    outcome: list[bytes] = []
    _trickle(port, threading.Event(), outcome)  # 600+ bytes at 5/s would take 2 minutes; the head deadline is 1 s
    assert outcome and outcome[0] != b"never cut"
    assert outcome[0] == b"closed" or status_of(outcome[0]) == 408, outcome


def test_slow_clients_do_not_pin_workers(tmp_path: Path) -> None:
    """Six slowloris clients against two workers: /healthz is still answered while they trickle."""
    limits = Limits(threads=2, header_timeout=120.0)
    for port, _ in serve(tmp_path, limits):
        stop = threading.Event()
        outcome: list[bytes] = []
        lorises = [threading.Thread(target=_trickle, args=(port, stop, outcome), daemon=True) for _ in range(6)]
        for t in lorises:
            t.start()
        try:
            time.sleep(1.5)  # every slow client has sent bytes, so stock cheroot would have given each a worker
            for _ in range(5):
                r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=20)
                assert r.status_code == 200
            assert not outcome  # the slow clients were still connected and trickling meanwhile
        finally:
            stop.set()
            for t in lorises:
                t.join(timeout=30)


def test_slow_body_sender_cut_by_exchange_deadline(small: tuple[int, object, Path]) -> None:
    port, _, root = small
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"PUT {EXT} HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 1000\r\n\r\n{{".encode())
        data = b""
        try:
            while chunk := s.recv(4096):  # the server must end this, not the client
                data += chunk
        except ConnectionResetError:
            pass
    assert b"201" not in data
    assert nothing_stored(root)
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200


def test_config_file_accepts_limits(tmp_path: Path) -> None:
    from atomicsig.serve.config import load_file as load_config

    cfg = tmp_path / "serve.yaml"
    cfg.write_text("sigstore: /x\nmax-connections: 100\nheader-timeout: 5\nrequest-timeout: 12.5\nthreads: 4\n")
    assert load_config(str(cfg))["request-timeout"] == 12.5


# ---- health under a connection flood (issue 12 #5) --------------------------------------------------------------


def _flood(port: int, holding: int, stop: threading.Event, stats: dict[str, int]) -> None:
    """One client keeping ``holding`` connections open, each with a partial request head, and opening a new one
    whenever the server answers or closes one (the issue's flood: ~512 partial heads, reconnect after each 408)."""
    import selectors

    sel = selectors.DefaultSelector()
    partial = b"GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Never-Ending: "

    def open_one() -> None:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(partial)
        except OSError:
            stats["connect_errors"] += 1
            return
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        stats["opened"] += 1

    try:
        for _ in range(holding):
            open_one()
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                s = key.fileobj
                try:
                    data = s.recv(4096)  # type: ignore[union-attr]
                except OSError:
                    data = b""
                stats["cut_408" if b" 408 " in data[:16] else "cut_503" if b" 503 " in data[:16] else "cut_other"] += 1
                sel.unregister(s)
                s.close()  # type: ignore[union-attr]
                open_one()
            while len(sel.get_map()) < holding and not stop.is_set():
                open_one()
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()


def _probe(port: int, budget: float) -> tuple[bool, float, str]:
    """GET /healthz on a new connection; (answered 200 within ``budget`` seconds, seconds taken, what happened)."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=budget) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            data = b""
            while (time.monotonic() - started) < budget and (chunk := s.recv(4096)):
                data += chunk
    except OSError as exc:
        return False, time.monotonic() - started, repr(exc)
    took = time.monotonic() - started
    return data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"ok\n") and took < budget, took, data[:40].decode()


def test_healthz_answers_under_connection_flood(tmp_path: Path) -> None:
    """A client holding 512 partial heads (= the default connection cap) and reconnecting after each cut:
    every one of 20 /healthz probes, 0.5 s apart, must be answered 200 within 2 s (the issue's bar was 13 probes,
    12 of which failed). The server runs as its own process with the default limits but a 2 s head deadline,
    so the flood churns (408, reconnect) several times during the ~12 s it lasts."""
    from tests.infra import serve_sigstore

    with serve_sigstore(tmp_path, "--header-timeout", "2") as base:
        port = int(base.rsplit(":", 1)[1])
        stop = threading.Event()
        stats = {"opened": 0, "connect_errors": 0, "cut_408": 0, "cut_503": 0, "cut_other": 0}
        flooder = threading.Thread(target=_flood, args=(port, 512, stop, stats), daemon=True)
        flooder.start()
        try:
            deadline = time.monotonic() + 10
            while stats["opened"] < 512 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert stats["opened"] >= 512, stats
            results = []
            for _ in range(20):
                results.append(_probe(port, 2.0))
                time.sleep(0.5)
        finally:
            stop.set()
            flooder.join(timeout=10)
        print("flood", stats, "probes", [(ok, round(t, 3)) for ok, t, _ in results])
        failed = [r for r in results if not r[0]]
        assert not failed, (failed, stats)
        assert stats["cut_408"] > 0, stats  # the flood really churned through head deadlines meanwhile


# ---- broken bodies (issue 12 #5, #6) ----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"zz\r\nabc\r\n0\r\n\r\n",  # chunk size is not hex
    b"5\r\nabcdeXX3\r\nabc\r\n0\r\n\r\n",  # chunk data longer than its size (no CRLF after it)
    b"-5\r\nabcde\r\n0\r\n\r\n",  # negative size
    b"5\r\nab",  # truncated inside a chunk, then the client half-closes
    b"5\r\nabcde\r\n",  # truncated before the last chunk
])
def test_malformed_chunked_put_is_400_without_traceback(small: tuple[int, object, Path], blob: bytes,
                                                        capfd: pytest.CaptureFixture[str], body: bytes) -> None:
    """A broken chunked body on an authenticated PUT is the client's error: 400, no traceback, nothing stored."""
    port, _, root = small
    head = f"PUT {EXT} HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n".encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert status_of(answer) == 400, answer[:300]
    assert b'"incomplete-body"' in answer or b'"SIGNATURE_INVALID"' in answer  # "-5" reads as the last chunk
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # and the rest is never parsed as another request
    assert time.monotonic() - started < 1.5  # answered at once, not at the 2 s exchange deadline
    assert nothing_stored(root)
    assert "Traceback" not in capfd.readouterr().err


def test_lying_content_length_is_answered_and_frees_the_worker(small: tuple[int, object, Path], blob: bytes,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    """A Content-Length larger than the body sent: the exchange deadline (2 s here) ends the body, the client
    gets 400 (not a silently closed socket), and both workers serve again right after."""
    port, _, root = small
    body = put_json(blob)
    started = time.monotonic()
    answers: list[bytes] = []

    def lying() -> None:
        answers.append(exchange(port, f"PUT {EXT} HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: {len(body) + 100}"
                                      "\r\n\r\n".encode() + body, wait=20))

    liars = [threading.Thread(target=lying) for _ in range(2)]  # both workers
    for t in liars:
        t.start()
    for t in liars:
        t.join(timeout=30)
    took = time.monotonic() - started
    assert [status_of(a) for a in answers] == [400, 400], answers
    assert all(b"Content-Length" in a for a in answers)
    assert 1.5 < took < 5.0, took  # the deadline (2 s) plus little
    assert nothing_stored(root)
    # Both workers are free again: a request that needs a pool worker is served at once.
    r = requests.get(f"http://127.0.0.1:{port}/lim/app@sha256={'5a' * 32}/signature-1", timeout=2)
    assert r.status_code == 404
    assert "Traceback" not in capfd.readouterr().err


def test_healthz_answers_while_every_worker_is_held(tmp_path: Path) -> None:
    """Two workers held by PUTs whose bodies never arrive: /healthz is still answered at once (the reserved health
    thread), while an ordinary request has to wait for a worker — which shows the pool really is held."""
    limits = Limits(threads=2, request_timeout=30.0)
    root = tmp_path / "store"
    root.mkdir()
    for port, _ in serve(root, limits):
        held = []
        for _ in range(3):  # two in the workers, one queued
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(f"PUT {EXT} HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 1000\r\n\r\n{{".encode())
            held.append(s)
        try:
            time.sleep(0.5)
            with pytest.raises(requests.exceptions.Timeout):
                requests.get(f"http://127.0.0.1:{port}/nope", timeout=1.5)
            for _ in range(5):
                started = time.monotonic()
                r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                assert r.status_code == 200 and r.content == b"ok\n"
                assert time.monotonic() - started < 1.0
        finally:
            for s in held:
                s.close()


def test_silent_body_is_408_after_the_idle_timeout(tmp_path: Path, blob: bytes,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """A client that stops sending its body is answered 408 after the idle timeout (1 s here, 10 s by default),
    well before the exchange deadline (30 s): cheroot used to try to drain the unread body from the timed-out
    socket, log a traceback and answer nothing."""
    limits = Limits(threads=2, idle_timeout=1, request_timeout=30.0)
    root = tmp_path / "store"
    root.mkdir()
    for port, _ in serve(root, limits):
        body = put_json(blob)
        started = time.monotonic()
        answer = exchange(port, f"PUT {EXT} HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: {len(body) + 100}\r\n\r\n"
                                .encode() + body, wait=20)
        assert status_of(answer) == 408 and b'"body-timeout"' in answer, answer[:300]
        assert time.monotonic() - started < 5.0
        assert nothing_stored(root)
    assert "Traceback" not in capfd.readouterr().err
