"""``atomicsig sync`` end to end: real ``atomicsig serve``, real nginx, hostile peers, skopeo, kill -9.

Nodes are directories with their own sigstore and config on 127.0.0.1 ports. "Signing on a node" goes through
DirectoryStore.append, i.e. the same path ``atomicsig sign`` uses, which records the journal line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from atomicsig.format import payload
from atomicsig.format.reference import parse
from atomicsig.gnupg.keyring import Keyring
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.journal import Journal, sha256_hex
from tests.conftest import needs_registry
from tests.infra import (
    FakeServer,
    GpgHome,
    Reply,
    SyncNode,
    free_port,
    kill_group,
    nginx,
    push_image,
    registries_d,
    serve_sigstore,
    signed_by_policy,
    sigstore_contents,
    skopeo_pull,
    sync_nodes,
    sync_once,
)

pytestmark = pytest.mark.slow

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
HEX1 = "1" * 64
ATOMICSIG = [sys.executable, "-m", "atomicsig"]


contents = sigstore_contents  # the shared helper in tests/infra.py


def as_sets(c: dict[str, list[bytes]]) -> dict[str, set[bytes]]:
    return {k: set(v) for k, v in c.items()}


class Node(SyncNode):
    def add(self, blob: bytes, digest: str = D1, repo: str = "example.com/ns/app") -> None:
        DirectoryStore(self.sigstore).append(parse(repo), digest, blob)


@pytest.fixture
def node(tmp_path: Path, signer_pub: Path) -> Callable[[str], Node]:
    return sync_nodes(tmp_path, signer_pub, Node)


@pytest.fixture(scope="module")
def sigs(signer: GpgHome, other_signer: GpgHome) -> dict[str, bytes]:
    return {
        "x": signer.sign_image("example.com/ns/app:x", D1), "y": signer.sign_image("example.com/ns/app:y", D1),
        "z": signer.sign_image("example.com/ns/app:z", D2), "w": signer.sign_image("example.com/ns/app:w", D1),
        "other": other_signer.sign_image("example.com/ns/app:x", D1),
        "wrongdigest": signer.sign_image("example.com/ns/app:x", D2),
    }


serve = serve_sigstore  # the shared helper in tests/infra.py


# ---- the happy paths --------------------------------------------------------------------------------------------

def test_three_nodes_via_serve(cli: Any, node: Callable[[str], Node], sigs: dict[str, bytes],
                               other_signer: GpgHome) -> None:
    a, b, c = node("a"), node("b"), node("c")
    a.add(sigs["x"])
    with serve(a.sigstore) as url_a, serve(b.sigstore) as url_b:
        a.configure([url_b])
        b.configure([url_a], **{"propagate-deletes": True})
        c.configure([url_a])
        assert sync_once(cli, b)[0] == 0
        assert sync_once(cli, c)[0] == 0
        assert contents(b.sigstore) == contents(a.sigstore) == contents(c.sigstore)
        assert contents(c.sigstore)[f"ns/app@sha256={HEX1}"] == [sigs["x"]]

        # C is "down" while A and B sign the same digest concurrently, plus one for another digest.
        a.add(sigs["y"])
        b.add(sigs["w"])
        a.add(sigs["z"], D2)
        for n in (b, a, b):
            assert sync_once(cli, n)[0] == 0
        want = {f"ns/app@sha256={HEX1}": {sigs["x"], sigs["y"], sigs["w"]},
                f"ns/app@sha256={'2' * 64}": {sigs["z"]}}
        assert as_sets(contents(a.sigstore)) == as_sets(contents(b.sigstore)) == want
        # Identical bytes are never stored twice, even after both nodes synced from each other.
        assert all(len(v) == len(set(v)) for v in contents(a.sigstore).values())

        code, _logs = sync_once(cli, c)  # C comes back and catches up
        assert code == 0 and as_sets(contents(c.sigstore)) == want
        code, out, _ = cli("sync", "status", "--config", str(c.config), "--json")
        st = json.loads(out)["sources"][0]
        assert code == 0 and st["synced"] == 4 and st["lag_bytes"] == 0 and st["last_error"] is None

        # Deletions propagate only where configured: B yes, C no.
        a.add(sigs["other"])  # local writes on A are not trust-checked; then the key is retired
        code, out, _ = cli("prune", "--sigstore", str(a.sigstore), "--key", other_signer.fingerprint)
        assert code == 0 and "removed 1" in out
        code, out, _ = cli("prune", "--sigstore", str(a.sigstore), "--key", other_signer.fingerprint)
        assert "removed 0" in out
        assert sync_once(cli, b)[0] == 0 and sync_once(cli, c)[0] == 0
        assert as_sets(contents(b.sigstore)) == want == as_sets(contents(c.sigstore))
        rej = b.state()["sources"][url_a]["rejected"]
        assert rej.get("untrusted-key", 0) + rej.get("gone", 0) >= 1  # the other-key blob never got in


def test_delete_propagates_when_configured(cli: Any, node: Callable[[str], Node], sigs: dict[str, bytes],
                                           signer: GpgHome) -> None:
    a, b, c = node("a"), node("b"), node("c")
    for k in ("x", "y"):
        a.add(sigs[k])
    with serve(a.sigstore) as url_a:
        b.configure([url_a], **{"propagate-deletes": True})
        c.configure([url_a])
        assert sync_once(cli, b)[0] == 0 and sync_once(cli, c)[0] == 0
        code, out, _ = cli("prune", "--sigstore", str(a.sigstore), "--key", signer.fingerprint)
        assert code == 0 and "removed 2" in out
        assert sync_once(cli, b)[0] == 0 and sync_once(cli, c)[0] == 0
    assert contents(a.sigstore) == {f"ns/app@sha256={HEX1}": []}
    assert contents(b.sigstore) == {f"ns/app@sha256={HEX1}": []}
    assert as_sets(contents(c.sigstore)) == {f"ns/app@sha256={HEX1}": {sigs["x"], sigs["y"]}}


def test_static_nginx_source_range_etag_and_reindex(cli: Any, node: Callable[[str], Node], sigs: dict[str, bytes],
                                                    tmp_path: Path) -> None:
    a, d = node("a"), node("d")
    a.add(sigs["x"])
    a.add(sigs["z"], D2)
    with nginx(a.sigstore, tmp_path / "nginx") as (url, log):
        d.configure([url])
        assert sync_once(cli, d)[0] == 0
        assert contents(d.sigstore) == contents(a.sigstore)
        assert sync_once(cli, d)[0] == 0  # nothing new: a conditional range request answered 304
        journal_hits = [ln for ln in log.read_text().splitlines() if "/.atomicsig/journal" in ln]
        assert '" 304 ' in journal_hits[-1], journal_hits[-1]
        a.add(sigs["y"])
        assert sync_once(cli, d)[0] == 0
        assert '" 206 ' in [ln for ln in log.read_text().splitlines() if "/.atomicsig/journal" in ln][-2]
        # skopeo wrote a signature behind the journal's back; `atomicsig index` makes a new epoch.
        (a.sigstore / f"ns/app@sha256={HEX1}" / "signature-3").write_bytes(sigs["w"])
        code, out, _ = cli("index", str(a.sigstore))
        assert code == 0 and "indexed 4" in out
        code, logs = sync_once(cli, d)
        assert code == 0 and any(e.get("msg") == "journal restart" for e in logs)
    assert contents(d.sigstore) == contents(a.sigstore)  # restarted at 0, nothing duplicated
    assert d.state()["sources"][url]["duplicates"] >= 3


# ---- hostile and broken peers -------------------------------------------------------------------------------

class Peer(FakeServer):
    """A peer whose answers the test scripts: path → one reply (404 for any other path)."""

    def journal(self, lines: Iterable[str], epoch: str = "e" * 32) -> bytes:
        data = f"atomicsig-journal 1 {epoch}\n".encode() + "".join(f"{ln}\n" for ln in lines).encode()
        self.script("/.atomicsig/journal", Reply(200, data))  # ignores Range, like a dumb server
        return data

    def file(self, rel: str, body: bytes, status: int = 200, headers: list[tuple[str, str]] | None = None) -> None:
        self.script("/" + rel, Reply(status, body, headers or []))


def rel(n: int, digest_hex: str = HEX1, repo: str = "ns/app") -> str:
    return f"{repo}@sha256={digest_hex}/signature-{n}"


def test_hostile_peer_is_refused(cli: Any, node: Callable[[str], Node], sigs: dict[str, bytes],
                                 tmp_path: Path) -> None:
    peer = Peer()
    big = b"\xa3" + os.urandom(10 * 1024 * 1024)
    html = b"<html>error</html>"
    entries = [
        ("1 add " + rel(1) + " " + sha256_hex(sigs["other"]), rel(1), sigs["other"]),  # untrusted key
        ("2 add " + rel(2) + " " + sha256_hex(sigs["wrongdigest"]), rel(2), sigs["wrongdigest"]),  # other digest
        (f"3 add ../../../../tmp/evil@sha256={HEX1}/signature-1 " + sha256_hex(sigs["x"]), None, None),
        ("4 add " + rel(4) + " " + sha256_hex(big), rel(4), big),  # 10 MiB body
        ("5 add " + rel(5) + " " + sha256_hex(html), rel(5), html),  # HTML with 200
        ("6 add " + rel(6) + " " + "0" * 64, rel(6), sigs["y"]),  # bytes differ from the journal
        ("7 add " + rel(7) + " " + sha256_hex(sigs["x"]), rel(7), sigs["x"]),  # the one good signature
        ("8 add " + rel(8) + " " + sha256_hex(sigs["w"]), None, None),  # 404: pruned meanwhile
    ]
    peer.journal(e[0] for e in entries)
    for _, r, body in entries:
        if r:
            peer.file(r, body)
    n = node("victim")
    with peer:
        url = peer.url
        n.configure([url], quarantine=str(tmp_path / "quarantine"))
        code, logs = sync_once(cli, n)
    assert code == 0
    assert contents(n.sigstore) == {f"ns/app@sha256={HEX1}": [sigs["x"]]}
    assert not list(Path("/tmp").glob(f"evil@sha256={HEX1}"))
    rejected = n.state()["sources"][url]["rejected"]
    assert rejected == {"untrusted-key": 1, "digest-mismatch": 1, "path": 1, "too-large": 1, "format": 1,
                        "content-changed": 1, "gone": 1}
    reasons = {e.get("reason") for e in logs if e.get("msg") == "rejected"}
    assert reasons == set(rejected)
    assert len(list((tmp_path / "quarantine").glob("*.json"))) == 3  # untrusted, wrong digest, html


@pytest.mark.parametrize("case", ["unreachable", "500", "403", "html-journal", "truncated", "truncated-sig",
                                  "sig-500", "corrupt-line", "huge-line"])
def test_broken_upstreams_retry_without_loss(cli: Any, node: Callable[[str], Node], sigs: dict[str, bytes],
                                             case: str) -> None:
    peer = Peer()
    good = ["1 add " + rel(1) + " " + sha256_hex(sigs["x"]), "2 add " + rel(2) + " " + sha256_hex(sigs["y"])]
    healthy = peer.journal(good)
    peer.file(rel(1), sigs["x"])
    peer.file(rel(2), sigs["y"])
    n = node("n")
    with peer:
        url = target = peer.url
        if case == "unreachable":
            target = f"http://127.0.0.1:{free_port()}"
        elif case in ("500", "403"):
            peer.script("/.atomicsig/journal", Reply(int(case), b"nope"))
        elif case == "html-journal":
            peer.script("/.atomicsig/journal", Reply(200, b"<html>hi</html>\n" * 10, {"Content-Type": "text/html"}))
        elif case == "truncated":
            peer.script("/.atomicsig/journal", Reply(200, healthy, {"Content-Length": str(len(healthy) + 50)}))
        elif case == "truncated-sig":
            peer.file(rel(2), sigs["y"][:-10], headers=[("Content-Length", str(len(sigs["y"])))])
        elif case == "sig-500":
            peer.file(rel(2), b"oops", status=500)
        elif case == "corrupt-line":
            peer.journal([good[0], "2 add garbage", good[1].replace("2 add", "3 add", 1)])
        elif case == "huge-line":
            peer.journal([good[0], "2 add " + "a" * 5000])
        n.configure([target])
        code, logs = sync_once(cli, n)
        st = n.state()["sources"][target]
        if case in ("corrupt-line", "huge-line"):  # an unusable line is skipped and counted; the rest arrives
            assert code == 0 and st["rejected"] == {"journal-line": 1}
            want = [sigs["x"], sigs["y"]] if case == "corrupt-line" else [sigs["x"]]
            assert contents(n.sigstore) == {f"ns/app@sha256={HEX1}": want}
            return
        assert code == 3, logs
        assert st["last_error"] and st["errors"] == 1
        assert any(e.get("msg") == "pass failed" for e in logs)
        if case in ("truncated-sig", "sig-500"):  # the good part before the failure is kept
            assert contents(n.sigstore) == {f"ns/app@sha256={HEX1}": [sigs["x"]]}
        else:
            assert contents(n.sigstore) == {}
        # The peer recovers; the next pass completes and loses nothing.
        peer.journal(good)
        peer.file(rel(1), sigs["x"])
        peer.file(rel(2), sigs["y"])
        if case == "unreachable":
            n.configure([url])
        code, logs = sync_once(cli, n)
        assert code == 0, logs
    assert contents(n.sigstore) == {f"ns/app@sha256={HEX1}": [sigs["x"], sigs["y"]]}


def test_epoch_change_and_clock_skew(cli: Any, node: Callable[[str], Node], sigs: dict[str, bytes],
                                    tmp_path: Path) -> None:
    """A peer whose files carry mtimes far in the future (skewed clock) and that rebuilds its journal."""
    a, d = node("a"), node("d")
    a.add(sigs["x"])
    future = time.time() + 10 * 365 * 86400
    for p in a.sigstore.rglob("*"):
        os.utime(p, (future, future))
    with nginx(a.sigstore, tmp_path / "nginx") as (url, _log):
        d.configure([url])
        assert sync_once(cli, d)[0] == 0
        Journal(a.sigstore).rebuild()
        a.add(sigs["y"])
        assert sync_once(cli, d)[0] == 0
    assert contents(d.sigstore) == contents(a.sigstore)


# ---- the real node client -----------------------------------------------------------------------------------

@needs_registry
def test_skopeo_accepts_image_signed_on_a(cli: Any, node: Callable[[str], Node], registry: Any, signer: GpgHome,
                                          signer_pub: Path, tmp_path: Path) -> None:
    digest = push_image(registry.host, "sync/app:1", "sync-e2e", tmp_path)
    ref = f"{registry.host}/sync/app:1"
    a, c = node("a"), node("c")
    policy = signed_by_policy(tmp_path / "policy.json", signer_pub)
    regd = registries_d(tmp_path / "registries.d", f"file://{c.sigstore}")
    assert skopeo_pull(ref, policy, regd, tmp_path).returncode != 0  # nothing on C yet
    a.add(signer.sign_image(ref, digest), digest, ref)
    with serve(a.sigstore) as url:
        c.configure([url])
        assert sync_once(cli, c)[0] == 0
    pulled = skopeo_pull(ref, policy, regd, tmp_path)
    assert pulled.returncode == 0, pulled.stderr


# ---- the daemon process -------------------------------------------------------------------------------------

def test_daemon_notify_metrics_reload_and_term(node: Callable[[str], Node], sigs: dict[str, bytes],
                                               tmp_path: Path) -> None:
    a, b = node("a"), node("b")
    a.add(sigs["x"])
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    mport = free_port()
    with serve(a.sigstore) as url:
        b.configure([url], metrics=f"127.0.0.1:{mport}")
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"}
        proc = subprocess.Popen([*ATOMICSIG, "sync", "--config", str(b.config)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        env["WATCHDOG_PID"] = str(proc.pid)
        try:
            msgs = []
            while "READY=1" not in msgs:
                msgs.append(sock.recv(4096).decode())
            a.add(sigs["y"])
            deadline = time.monotonic() + 30
            while len(contents(b.sigstore).get(f"ns/app@sha256={HEX1}", [])) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert as_sets(contents(b.sigstore)) == {f"ns/app@sha256={HEX1}": {sigs["x"], sigs["y"]}}
            want = f'atomicsig_sync_synced_total{{source="{url}"}} 2.0'
            while True:  # counted when the pass ends, a moment after the file appears (the worker's thread)
                metrics = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
                if want in metrics or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert want in metrics
            while "WATCHDOG=1" not in msgs:
                msgs.append(sock.recv(4096).decode())
            os.kill(proc.pid, signal.SIGHUP)
            while "RELOADING=1" not in msgs:
                msgs.append(sock.recv(4096).decode())
            os.kill(proc.pid, signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            while "STOPPING=1" not in msgs:
                msgs.append(sock.recv(4096).decode())
        finally:
            if proc.poll() is None:
                kill_group(proc)  # type: ignore[arg-type]
            sock.close()
    assert proc.returncode == 0, err
    events = [json.loads(line)["msg"] for line in out.decode().splitlines()]
    assert events.count("config loaded") == 2 and events[-1] == "stopped"
    assert b.state()["sources"][url]["synced"] == 2


def test_kill9_follower_resumes_without_loss(node: Callable[[str], Node], signer: GpgHome) -> None:
    a, c = node("a"), node("c")
    kr = Keyring(str(signer.path))
    for i in range(24):
        digest = "sha256:" + hashlib.sha256(str(i % 6).encode()).hexdigest()
        a.add(kr.sign(payload.build(f"example.com/ns/app:v{i}", digest), signer.fingerprint, None), digest)
    want = as_sets(contents(a.sigstore))
    with serve(a.sigstore) as url:
        c.configure([url])
        for delay in (0.4, 0.8, 1.2, 1.6):
            proc = subprocess.Popen([*ATOMICSIG, "sync", "--once", "--config", str(c.config)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(delay)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            contents(c.sigstore)  # after every kill: no gap, no temp file, no partial signature
            for d, blobs in contents(c.sigstore).items():
                assert set(blobs) <= want[d]
        done = subprocess.run([*ATOMICSIG, "sync", "--once", "--config", str(c.config)], capture_output=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
    assert as_sets(contents(c.sigstore)) == want
    assert all(len(v) == len(set(v)) for v in contents(c.sigstore).values())


def test_push_mode_uploads_local_signatures(node: Callable[[str], Node], sigs: dict[str, bytes], signer_pub: Path,
                                            tmp_path: Path) -> None:
    up, b = node("upstream"), node("b")
    token = tmp_path / "token"
    token.write_text("t0k3n-" + "z" * 24)
    with serve(up.sigstore, "--token-file", str(token), "--trusted-key", str(signer_pub)) as url:
        b.configure([], push={"url": url, "token-file": str(token)})
        b.add(sigs["x"])
        b.add(sigs["x"])  # duplicate, not journaled twice
        b.add(sigs["z"], D2)
        proc = subprocess.Popen([*ATOMICSIG, "sync", "--config", str(b.config)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while len(contents(up.sigstore)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            b.add(sigs["y"])  # noticed by the inotify watch (or the next timer pass)
            while len(contents(up.sigstore).get(f"ns/app@sha256={HEX1}", [])) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=30)
    assert as_sets(contents(up.sigstore)) == {f"ns/app@sha256={HEX1}": {sigs["x"], sigs["y"]},
                                              f"ns/app@sha256={'2' * 64}": {sigs["z"]}}
    assert b.state()["push"]["synced"] == 3


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_and_read_only_sigstore(cli: Any, node: Callable[[str], Node], signer: GpgHome,
                                          tmp_path: Path) -> None:
    """A real full filesystem and a real read-only one under the follower: logged, retried, nothing half-written."""
    a = node("a")
    kr = Keyring(str(signer.path))
    for i in range(40):
        digest = "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()
        a.add(kr.sign(payload.build(f"example.com/ns/app:v{i}", digest), signer.fingerprint, None), digest)
    want = as_sets(contents(a.sigstore))
    with serve(a.sigstore) as url, tmpfs(tmp_path / "small", "96k") as mnt:
        n = Node(mnt, a.pub, "small")
        n.config.parent.mkdir(parents=True, exist_ok=True)
        n.configure([url], state=str(tmp_path / "state.json"))
        code, logs = sync_once(cli, n)
        assert code == 3 and any("No space left" in str(e.get("error")) for e in logs), logs
        partial = contents(n.sigstore)  # no gap, no temp file (an empty digest dir reads as "no signatures")
        assert partial and all(set(blobs) <= want[d] for d, blobs in partial.items())
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        code, logs = sync_once(cli, n)
        assert code == 3 and any("Read-only" in str(e.get("error")) for e in logs), logs
        subprocess.run(["mount", "-o", "remount,rw,size=8m", str(mnt)], check=True)
        code, logs = sync_once(cli, n)
        assert code == 0, logs
        assert as_sets(contents(n.sigstore)) == want
        # Every stored signature is in the follower's own journal (so nodes following it get them too).
        _, data = Journal(n.sigstore).read_from(0)
        journaled = {line.rsplit(b" ", 1)[1].decode() for line in data.splitlines()}
        assert {sha256_hex(b) for blobs in want.values() for b in blobs} <= journaled
        st = json.loads((tmp_path / "state.json").read_text())["sources"][url]
        assert st["errors"] == 2 and st["last_error"] is None
