"""Sync availability against hostile or broken peers (issue 12 #4, #6), and the sync config's strictness.

Hostile peers are FakeServers (tests/infra.py) scripted in this file (an endless journal, a lying
Content-Length, garbage at an offset, a journal that is not one); the honest peer is a real ``atomicsig serve``
of a store holding real gpg signatures. The daemon and ``sync --once`` run as real processes; the systemd
watchdog is a unix datagram socket the test reads (``NOTIFY_SOCKET``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atomicsig.errors import InputError
from atomicsig.format.reference import parse
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.journal import sha256_hex
from tests.infra import FakeRequest, FakeServer, GpgHome, Reply, SyncNode, free_port, kill_group, serve_sigstore

ATOMICSIG = [sys.executable, "-m", "atomicsig"]
HEX1, HEX2, HEX3 = "1" * 64, "2" * 64, "3" * 64
D1, D2, D3 = (f"sha256:{h}" for h in (HEX1, HEX2, HEX3))
EPOCH = "e" * 32
HEADER = f"atomicsig-journal 1 {EPOCH}\n".encode()


@pytest.fixture(scope="module")
def sigs(signer: GpgHome) -> dict[str, bytes]:
    return {"x": signer.sign_image("example.com/ns/app:x", D1), "y": signer.sign_image("example.com/ns/app:y", D1),
            "honest1": signer.sign_image("example.com/ns/honest:1", D2),
            "honest2": signer.sign_image("example.com/ns/honest:2", D3)}


def line(seq: int, rel: str, blob: bytes) -> bytes:
    return f"{seq} add {rel} {sha256_hex(blob)}\n".encode()


# ---- the hostile peer ---------------------------------------------------------------------------------------

class Hostile(FakeServer):
    """A scripted peer of one ``kind``; ``hits`` records every request (with its Range)."""

    def __init__(self, kind: str, sigs: dict[str, bytes]) -> None:
        super().__init__()
        self.kind = kind  # endless | liar | slow-headers | garbage | not-a-journal
        self.sigs = sigs
        self.garbage_at = 0

    # endless: fixed-length records, all naming the same (valid) signature, and always "more" past any offset
    def endless_line(self, seq: int) -> bytes:
        return f"{seq:012d} add ns/endless@sha256={HEX1}/signature-1 {sha256_hex(self.sigs['x'])}\n".encode()

    def garbage_journal(self) -> bytes:
        head = HEADER + line(1, f"ns/app@sha256={HEX1}/signature-1", self.sigs["x"])
        self.garbage_at = len(head)
        return head + b"\x00garbage" * 700 + b"\n" + line(2, f"ns/app@sha256={HEX1}/signature-2", self.sigs["y"])

    def files(self) -> dict[str, bytes]:
        return {f"/ns/endless@sha256={HEX1}/signature-1": self.sigs["x"],
                f"/ns/app@sha256={HEX1}/signature-1": self.sigs["x"],
                f"/ns/app@sha256={HEX1}/signature-2": self.sigs["y"]}

    def handle(self, req: FakeRequest) -> Reply | None:
        if self.kind == "slow-headers":
            # A status line, then one header byte every 0.2 s: every read returns something, none completes.
            req.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not self.release.wait(0.2):
                try:
                    req.wfile.write(b"a")
                    req.wfile.flush()
                except OSError:
                    break
            req.close_connection = True
            return None
        if self.kind == "liar":
            # Promise 1000 bytes more than we send, then hold the connection open.
            req.send_response(200)
            req.send_header("Content-Length", str(len(HEADER) + 1000))
            req.end_headers()
            req.wfile.write(HEADER)
            req.wfile.flush()
            self.release.wait(120)
            req.close_connection = True
            return None
        if req.route != "/.atomicsig/journal":
            blob = self.files().get(req.route)
            return Reply(200, blob) if blob is not None else Reply(404, b"no")
        if self.kind == "not-a-journal":
            return Reply(200, b"<html>maintenance</html>\n" * 3)
        if self.kind == "garbage":
            return Reply(200, self.garbage_journal())  # ignores Range, like a dumb server
        # endless: answer any range with 200 more records and claim 1000 more after them
        rng = req.headers.get("Range", "")
        m = re.fullmatch(r"bytes=([0-9]+)-([0-9]*)", rng)
        start = int(m.group(1)) if m else 0
        size = len(self.endless_line(1))
        if start < len(HEADER):
            first, data = 1, HEADER
        else:
            first, data = (start - len(HEADER)) // size + 1, b""
        data += b"".join(self.endless_line(first + i) for i in range(200))
        if m and m.group(2) and int(m.group(2)) == len(HEADER) - 1:
            data = HEADER
        base = 0 if start < len(HEADER) else start
        total = base + len(data) + 1000 * size
        return Reply(206, data, {"Content-Range": f"bytes {base}-{base + len(data) - 1}/{total}"})


@contextlib.contextmanager
def hostile(kind: str, sigs: dict[str, bytes]) -> Iterator[tuple[str, Hostile]]:
    with Hostile(kind, sigs) as peer:
        yield peer.url, peer


# ---- nodes ----------------------------------------------------------------------------------------------------

class Node(SyncNode):
    def blobs(self, digest_hex: str, repo: str = "ns/honest") -> list[bytes]:
        return super().blobs(digest_hex, repo)


@pytest.fixture
def honest(tmp_path: Path, sigs: dict[str, bytes]) -> Iterator[str]:
    """A real ``atomicsig serve`` of a store holding two real signatures under ns/honest."""
    root = tmp_path / "honest"
    store = DirectoryStore(root)
    store.append(parse("example.com/ns/honest"), D2, sigs["honest1"])
    store.append(parse("example.com/ns/honest"), D3, sigs["honest2"])
    with serve_sigstore(root) as url:
        yield url


@pytest.fixture
def node(tmp_path: Path, signer_pub: Path) -> Node:
    return Node(tmp_path / "follower", signer_pub)


def honest_arrived(n: Node, sigs: dict[str, bytes]) -> bool:
    return n.blobs(HEX2) == [sigs["honest1"]] and n.blobs(HEX3) == [sigs["honest2"]]


def wait_for(cond: Callable[[], bool], seconds: float) -> float | None:
    """Seconds until ``cond()`` held, or None if it did not within ``seconds``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def logs_of(out: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]


@contextlib.contextmanager
def daemon(n: Node, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([*ATOMICSIG, "sync", "--config", str(n.config)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            kill_group(proc)  # type: ignore[arg-type]


def stop(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    sys.stderr.write(out.decode() + err.decode())  # shown when a test fails
    return logs_of(out.decode())


# ---- one peer cannot starve the others (issue 12 #4) -----------------------------------------------------------

def test_daemon_endless_journal_does_not_starve_honest_source(node: Node, honest: str,
                                                              sigs: dict[str, bytes]) -> None:
    """The endless peer is listed first; before per-source workers the honest one got 0 requests."""
    with hostile("endless", sigs) as (bad, peer):
        node.configure([bad, honest])
        with daemon(node) as proc:
            took = wait_for(lambda: honest_arrived(node, sigs), 20)
            assert took is not None, "the honest source's signatures never arrived"
            assert len(peer.hits) > 1  # the endless peer is being read meanwhile
            time.sleep(1)
            logs = stop(proc)
    assert proc.returncode == 0
    limited = [e for e in logs if e.get("msg") == "pass done" and e.get("source") == bad and e.get("limit")]
    assert not limited or limited[0]["limit"] in ("records", "bytes", "time")
    assert node.blobs(HEX1, "ns/endless") == [sigs["x"]]


def test_once_endless_journal_is_bounded_per_pass(node: Node, honest: str, sigs: dict[str, bytes]) -> None:
    """``--once`` ends although one journal never does: each pass stops at its pass-limit."""
    with hostile("endless", sigs) as (bad, _):
        node.configure([bad, honest], **{"pass-limit": {"records": 300, "time": "3s"}, "timeout": "2s"})
        proc = subprocess.Popen([*ATOMICSIG, "sync", "--config", str(node.config), "--once", "--passes", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            took = wait_for(lambda: honest_arrived(node, sigs), 15)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                kill_group(proc)  # type: ignore[arg-type]
        sys.stderr.write(out.decode() + err.decode())
    assert took is not None and took < 10, took
    assert proc.returncode == 0
    logs = logs_of(out.decode())
    limited = [e for e in logs if e.get("msg") == "pass done" and e.get("source") == bad]
    assert len(limited) == 2 and all(e["limit"] in ("records", "time") for e in limited), limited
    st = node.state()["sources"][bad]
    assert st["remote_size"] > st["offset"] and st["last_error"] is None  # more to read next time


# ---- a lying or broken source costs bounded time and is reported (issue 12 #6) ----------------------------------

@pytest.mark.parametrize("kind", ["liar", "slow-headers"])
def test_once_lying_or_trickling_peer_is_bounded_and_reported(node: Node, honest: str, sigs: dict[str, bytes],
                                                              kind: str) -> None:
    """A Content-Length larger than the body, or headers trickled a byte at a time (each read succeeds, so no
    read timeout fires): the pass is cut at its hard bound (pass-limit time + timeout), reported, exit 3."""
    with hostile(kind, sigs) as (bad, _):
        node.configure([bad, honest], timeout="1s", **{"pass-limit": {"time": "2s"}})
        t0 = time.monotonic()
        proc = subprocess.run([*ATOMICSIG, "sync", "--config", str(node.config), "--once"], capture_output=True,
                              timeout=60)
        took = time.monotonic() - t0
        sys.stderr.write(proc.stdout.decode() + proc.stderr.decode())
    assert proc.returncode == 3  # the liar's pass failed
    assert took < 15, took
    assert honest_arrived(node, sigs)
    failed = [e for e in logs_of(proc.stdout.decode()) if e.get("msg") == "pass failed"]
    assert len(failed) == 1 and failed[0]["source"] == bad, failed
    reason = "Content-Length" if kind == "liar" else "cut at this pass's time limit"
    assert reason in failed[0]["error"]
    st = node.state()["sources"][bad]
    assert st["errors"] == 1 and reason in st["last_error"]
    status = subprocess.run([*ATOMICSIG, "sync", "status", "--config", str(node.config), "--json"],
                            capture_output=True, timeout=60)
    assert status.returncode == 3


def test_daemon_hostile_peers_present_honest_arrives_and_watchdog_fed(node: Node, honest: str,
                                                                      sigs: dict[str, bytes],
                                                                      tmp_path: Path) -> None:
    """Endless, lying and garbage peers at once, before the honest one: it still syncs within seconds, the
    failing peers are reported and backed off, and the watchdog keeps being fed (every source is handled)."""
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    with hostile("endless", sigs) as (endless, _), hostile("liar", sigs) as (liar, liar_peer), \
            hostile("not-a-journal", sigs) as (broken, broken_peer):
        node.configure([endless, liar, broken, honest], timeout="2s")
        with daemon(node, {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}) as proc:
            took = wait_for(lambda: honest_arrived(node, sigs), 20)
            msgs: list[tuple[float, str]] = []
            t_end = time.monotonic() + 8
            while time.monotonic() < t_end:
                with contextlib.suppress(TimeoutError):
                    msgs.append((time.monotonic(), sock.recv(4096).decode()))
            logs = stop(proc)
    sock.close()
    assert took is not None and took < 10, took
    feeds = [t for t, m in msgs if m == "WATCHDOG=1"]
    assert len(feeds) >= 8, msgs  # fed every 0.5 s while the liar blocks for its timeout and backs off
    # Reported once each (identical repeats go to debug), and backed off: few attempts in ~10 s.
    for url, peer in ((liar, liar_peer), (broken, broken_peer)):
        failed = [e for e in logs if e.get("msg") == "pass failed" and e.get("source") == url]
        assert len(failed) == 1, failed
        assert 1 <= len(peer.hits) <= 6, (url, len(peer.hits))
    assert proc.returncode == 0


def test_garbage_at_an_offset_is_skipped_and_reported_once(node: Node, sigs: dict[str, bytes]) -> None:
    """5,600 bytes without a newline mid-journal: before, every pass failed at that offset for ever and the
    record after it never arrived. Now it is reported once, with its offset, and skipped to the next newline."""
    with hostile("garbage", sigs) as (bad, peer):
        node.configure([bad])
        first = subprocess.run([*ATOMICSIG, "sync", "--config", str(node.config), "--once"], capture_output=True,
                               timeout=60)
        second = subprocess.run([*ATOMICSIG, "sync", "--config", str(node.config), "--once"], capture_output=True,
                                timeout=60)
    sys.stderr.write((first.stdout + first.stderr + second.stdout + second.stderr).decode())
    assert first.returncode == 0 and second.returncode == 0
    assert node.blobs(HEX1, "ns/app") == [sigs["x"], sigs["y"]]
    rejected = [e for e in logs_of(first.stdout.decode()) if e.get("msg") == "rejected"]
    assert len(rejected) == 1 and rejected[0]["reason"] == "journal-line", rejected
    assert rejected[0]["path"] == f"offset {peer.garbage_at}"
    assert "skipped" in rejected[0]["detail"]
    assert not [e for e in logs_of(second.stdout.decode()) if e.get("msg") in ("rejected", "pass failed")]
    assert node.state()["sources"][bad]["rejected"] == {"journal-line": 1}


# ---- the watchdog (issue 12 #4) ---------------------------------------------------------------------------------

def test_watchdog_not_fed_while_a_source_hangs(node: Node, honest: str, sigs: dict[str, bytes],
                                               tmp_path: Path) -> None:
    """A pass stuck past its hard bound (here: the store's journal lock never comes) must stop WATCHDOG=1, so that
    systemd restarts the daemon; before, it was fed for another ``interval`` + WatchdogSec whatever happened.
    Bound: pass-limit time 1 s + timeout 1 s, then WatchdogSec (1 s) of slack: no keep-alive after ~3 s."""
    node.configure([honest], interval=30, timeout="1s", **{"pass-limit": {"time": "1s"}})
    meta = node.sigstore / ".atomicsig"
    meta.mkdir(parents=True)
    lock_fd = os.open(meta / "journal.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    released = False
    try:
        with daemon(node, {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}) as proc:
            msgs: list[tuple[float, str]] = []
            sock.settimeout(30)
            assert sock.recv(4096).decode() == "READY=1"
            sock.settimeout(0.2)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 7:
                with contextlib.suppress(TimeoutError):
                    msgs.append((time.monotonic() - t0, sock.recv(4096).decode()))
            late = [t for t, m in msgs if m == "WATCHDOG=1" and t > 4]
            assert not late, msgs
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            released = True
            assert wait_for(lambda: honest_arrived(node, sigs), 20) is not None
            resumed = []
            t1 = time.monotonic()
            while time.monotonic() - t1 < 3 and not resumed:
                with contextlib.suppress(TimeoutError):
                    if sock.recv(4096).decode() == "WATCHDOG=1":
                        resumed.append(1)
            assert resumed, "the watchdog is fed again once the source moves"
            logs = stop(proc)
    finally:
        if not released:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
        sock.close()
    assert any(e.get("msg") == "source stalled, watchdog not fed" for e in logs)


# ---- config: one duration grammar, file:line, duplicates refused (issue 11 "Consistency") ----------------------

def test_durations_one_grammar() -> None:
    from atomicsig.format.durations import format_duration, gpg_expire, parse_duration

    assert [parse_duration(t) for t in ("30", "30s", "0.2", "1.5s", "5min", "2h", "1d", "2w", "6m", "1y")] == \
        [30, 30, 0.2, 1.5, 300, 7200, 86400, 14 * 86400, 180 * 86400, 365 * 86400]
    assert parse_duration(30) == 30 and parse_duration("365", bare_unit="d") == 365 * 86400
    for bad in ("", "5 min", "-1s", "1e3", "5mins", "s", "1.s", "1x", "P1D", True):
        with pytest.raises(InputError):
            parse_duration(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="minutes are 'min'"):
        parse_duration("5m", "interval", maximum=86400)
    assert format_duration(300) == "5min" and format_duration(0.05) == "0.05s" and format_duration(86400) == "1d"
    assert [gpg_expire(t) for t in ("0", "never", "2y", "365", "6m", "2027-01-01", "36h", "90min")] == \
        ["0", "0", "2y", "365", "6m", "2027-01-01", "seconds=129600", "seconds=5400"]
    with pytest.raises(InputError):
        gpg_expire("0", allow_never=False)


def test_sync_config_durations_lines_duplicates_and_did_you_mean(tmp_path: Path, signer_pub: Path) -> None:
    from atomicsig.sync import config as sync_config

    base = f"sigstore: {tmp_path}\nsources:\n  - url: http://127.0.0.1:9\ntrusted-keys: [{signer_pub}]\n"
    cfg = tmp_path / "sync.yaml"

    def load(extra: str) -> Any:
        cfg.write_text(base + extra)
        return sync_config.load(cfg)

    assert load("interval: 2s\n").interval == 2.0  # refused before: "interval must be seconds"
    assert load("interval: 5min\n").interval == 300 and load("interval: 0.5\n").interval == 0.5
    c = load("timeout: 3s\npass-limit: {records: 50, bytes: 2MiB, time: 1min}\nlog-format: text\n")
    assert (c.timeout, c.limits.records, c.limits.bytes, c.limits.seconds, c.log_format) == \
        (3.0, 50, 2 * 1024 * 1024, 60.0, "text")
    cases = [
        ("sigstore: /elsewhere\n", f"{cfg}:5: duplicate key 'sigstore' (first defined at line 1)"),
        ("intervall: 2s\n", f"{cfg}:5: unknown key 'intervall' in the sync config; did you mean 'interval'?"),
        ("interval: 5m\n", f"{cfg}:5: interval '5m' must be between 0.05s and 1d ('m' is months; minutes are 'min')"),
        ("interval: soon\n", f"{cfg}:5: interval 'soon' is not a duration"),
        ("pass-limit: {record: 5}\n", f"{cfg}:5: unknown key 'record' in pass-limit; did you mean 'records'?"),
        ("log-format: jsno\n", f"{cfg}:5: log-format must be json or text; did you mean 'json'?"),
        ("sources:\n  - {url: 'http://a', token-fil: x}\n",
         f"{cfg}:5: duplicate key 'sources' (first defined at line 2)"),
    ]
    for extra, want in cases:
        with pytest.raises(InputError) as info:
            load(extra)
        assert info.value.message.startswith(want), (extra, info.value.message)
    cfg.write_text(f"sigstore: {tmp_path}\nsources:\n  - url: http://a\n    token-fil: x\n")
    with pytest.raises(InputError, match=rf"^{re.escape(str(cfg))}:4: unknown key 'token-fil' in sources\[0\]; "
                                         "did you mean 'token-file'"):
        sync_config.load(cfg)
    cfg.write_text(f"sigstore: {tmp_path}\nsources:\n  - url: http://a\n    url: http://b\n")
    with pytest.raises(InputError, match=rf"^{re.escape(str(cfg))}:4: .*duplicate key 'url'"):
        sync_config.load(cfg)


def test_cli_sync_config_error_exit_2(cli: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "sync.yaml"
    cfg.write_text(f"sigstore: {tmp_path}/a\nsigstore: {tmp_path}/b\n")
    code, _, err = cli("sync", "--config", str(cfg), "--once")
    assert code == 2 and f"{cfg}:2:" in err and "duplicate key 'sigstore'" in err


def test_signers_file_strict(tmp_path: Path) -> None:
    from atomicsig.ops.keys import load_specs

    ok = load_specs("keys:\n  - name: A\n    email: a@example.com\n    expire: 36h\n", "s.yaml")
    assert ok[0].expire == "seconds=129600"
    assert load_specs("- {name: A, email: a@example.com, expire: 6m}\n", "s.yaml")[0].expire == "6m"
    cases = [
        ("keys:\n  - name: A\n    email: a@example.com\n    email: b@example.com\n",
         "s.yaml:4: duplicate key 'email' (first defined at line 3)"),
        ("keys:\n  - name: A\n    email: a@example.com\nkeys: []\n", "s.yaml:4: duplicate key 'keys'"),
        ("keys:\n  - name: A\n    email: a@example.com\n    expires: 2y\n",
         "s.yaml:2: unknown field 'expires'; did you mean 'expire'?"),
        ("key:\n  - name: A\n", "s.yaml: unknown top-level key 'key'; did you mean 'keys'?"),
        ("keys:\n  - name: A\n    email: a@example.com\n    expire: 2 years\n", "s.yaml:2: expire '2 years'"),
    ]
    for text, want in cases:
        with pytest.raises(InputError) as info:
            load_specs(text, "s.yaml")
        assert info.value.message.startswith(want), (text, info.value.message)


# ---- one log format for serve and sync (issue 11 "Consistency") ----------------------------------------------

def test_log_format_json_and_text_for_sync_and_serve(node: Node, honest: str, sigs: dict[str, bytes],
                                                     tmp_path: Path) -> None:
    node.configure([honest])
    as_json = subprocess.run([*ATOMICSIG, "sync", "--config", str(node.config), "--once", "--log-format", "json"],
                             capture_output=True, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    lines = as_json.stdout.decode().splitlines()
    assert lines and all(isinstance(json.loads(ln), dict) for ln in lines)
    recs = [json.loads(ln) for ln in lines]
    assert all({"ts", "level", "msg"} <= set(r) for r in recs)
    assert any(r["msg"] == "synced" and r["source"] == honest for r in recs)
    # text, chosen in the config file this time
    node.configure([honest], **{"log-format": "text"})
    (node.sigstore / ".atomicsig" / "sync-state.json").unlink()
    as_text = subprocess.run([*ATOMICSIG, "sync", "--config", str(node.config), "--once"], capture_output=True,
                             timeout=60)
    assert as_text.returncode == 0, as_text.stderr
    text_re = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ((DEBUG|WARNING|ERROR) )?[a-z][^=]*?"
                         r"( [a-z_]+=(\"([^\"\\]|\\.)*\"|\S+))*$")
    text_lines = as_text.stdout.decode().splitlines()
    assert text_lines and all(text_re.match(ln) for ln in text_lines), text_lines
    assert any(re.match(r"^\S+ \S+ config loaded config=", ln) for ln in text_lines)
    # serve: JSON lines on stderr, access log included
    port = free_port()
    proc = subprocess.Popen([*ATOMICSIG, "serve", "--sigstore", str(node.sigstore), "--listen",
                             f"127.0.0.1:{port}", "--log-format", "json", "--access-log", "-"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        from tests.infra import wait_http

        wait_http(f"http://127.0.0.1:{port}/healthz", ok=(200,))
        import requests

        requests.get(f"http://127.0.0.1:{port}/.atomicsig/journal", timeout=5)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    logged = [ln for ln in err.decode().splitlines() if ln.startswith("{")]
    assert logged and all({"ts", "level", "msg"} <= set(json.loads(ln)) for ln in logged)
    assert any("/.atomicsig/journal" in json.loads(ln)["msg"] for ln in logged)
