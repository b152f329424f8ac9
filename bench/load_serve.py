"""Load test of ``atomicsig serve`` on loopback (issue #7 item 5): mixed GETs and PUTs, slow clients, /healthz.

    python bench/load_serve.py [--clients 50] [--gets 100000] [--puts 5000] [--slowloris 20] [--slow-readers 5]
                               [--engine threads|asyncio] [--threads 16] [--json out.json] [--sig-cache DIR]

What it does, in order:

1. **Signatures.** ``--seeds`` + ``--puts`` distinct real signatures (one digest each, throwaway Ed25519 key) are
   made by ONE ``atomicsig sign --from-file`` process (its gpg-agent signer: 5,500 in ~15 s here, where one
   gpg process per signature costs several times that). ``--sig-cache DIR`` keeps them between runs.
2. **Server.** ``atomicsig serve`` as a child process on a free 127.0.0.1 port with a write token; its sigstore
   holds the seed signatures and a journal (``Journal.rebuild``).
3. **Load.** ``--clients`` keep-alive clients share ``--gets`` GETs — lookaside hits (bytes compared), lookaside
   404s, extension lists, journal Range reads — and ``--puts`` extension PUTs (each a distinct signature, expected
   201), interleaved. Meanwhile: ``--slowloris`` connections send a request head one byte per second (reconnecting
   when cut), ``--slow-readers`` fetch 64 KiB of journal through a 4 KiB receive buffer at ~10 KiB/s, and a
   prober opens a new connection for ``GET /healthz`` every 100 ms and samples the server's thread count.
4. **Checks.** Every PUT has a known result; every 201 is on disk as the ``signature-N`` its Location names, with
   the same bytes, and in the journal (``add <path> <sha256>``): otherwise it is a *lost PUT*.

Printed and written (``--json``): requests, errors by kind, GET/PUT p50/p90/p99/max latency, throughput, /healthz
p50/max and failures, slowloris cuts, slow-reader results, server peak RSS (VmHWM) and peak thread count.
The generator and the server share this machine's CPUs (and with anything else running), so absolute figures
are a floor for the server alone; the output says how many CPUs there were.

Engines: ``threads`` (http.client, one thread per client) and ``asyncio`` (raw streams, one loop). Measured here
on 2 shared cores at 20,000 GETs / 1,000 PUTs: 1,525 req/s (threads) vs 1,606 req/s (asyncio) — within noise,
because the server process is the bottleneck, not the generator. ``threads`` is the default because it drives the
server through the stdlib HTTP client rather than hand-written framing. Figures: docs/serve.md, "Limits".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import http.client
import json
import os
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from atomicsig.format.sigpath import digest_dirname  # noqa: E402
from atomicsig.store.journal import Journal  # noqa: E402

REPO = "bench/app"
IDENTITY = f"registry.example.com/{REPO}:v1"
TOKEN = "load-test-write-token-" + "t" * 16
JOURNAL = "/.atomicsig/journal"
MAGIC = b"atomicsig-journal 1 "


# ---- signatures and the served store ----------------------------------------------------------------------------


def _digests(count: int, salt: str) -> list[str]:
    return ["sha256:" + hashlib.sha256(f"{salt}-{i}".encode()).hexdigest() for i in range(count)]


def make_signatures(cache: Path, count: int) -> dict[str, bytes]:
    """``count`` distinct signatures (digest -> blob), signed in one ``atomicsig sign`` process; cached in ``cache``."""
    store = cache / "signed"
    digests = _digests(count, "load-serve")
    if all((store / digest_dirname(REPO, d) / "signature-1").is_file() for d in digests):
        return {d: (store / digest_dirname(REPO, d) / "signature-1").read_bytes() for d in digests}
    from atomicsig.gnupg.keyring import Keyring

    home = cache / "gnupg"
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(mode=0o700, parents=True)
    key = Keyring(str(home)).generate(name="Load Test", email="load@example.com", comment=None,
                                      algorithm="ed25519", expire="0", passphrase=None)
    refs = cache / "refs.txt"
    refs.write_text("".join(f"{IDENTITY}@{d}\n" for d in digests), encoding="utf-8")
    env = dict(os.environ, GNUPGHOME=str(home), LC_ALL="C.UTF-8")
    proc = subprocess.run([sys.executable, "-m", "atomicsig", "sign", "--from-file", str(refs), "--key",
                           key.fingerprint, "--sigstore", str(store)], env=env, capture_output=True, timeout=1800,
                          check=False)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"atomicsig sign failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    return {d: (store / digest_dirname(REPO, d) / "signature-1").read_bytes() for d in digests}


def build_store(root: Path, seeds: dict[str, bytes]) -> None:
    """The served sigstore: the seed signatures plus a journal, as an ``atomicsig index`` run would leave it."""
    for digest, blob in seeds.items():
        d = root / digest_dirname(REPO, digest)
        d.mkdir(parents=True, exist_ok=True)
        (d / "signature-1").write_bytes(blob)
    Journal(root).rebuild()


# ---- the server -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(root: Path, work: Path, threads: int, extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    token = work / "token"
    token.write_text(TOKEN + "\n", encoding="utf-8")
    port = free_port()
    argv = [sys.executable, "-m", "atomicsig", "serve", "--sigstore", str(root), "--listen", f"127.0.0.1:{port}",
            "--token-file", str(token), "--threads", str(threads), *extra]
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}: {(work / 'server.log').read_text()[-2000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                c.close()
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not answer /healthz within 30 s")


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS in KiB and Threads from /proc/<pid>/status (zeros once the process is gone)."""
    out = {"VmHWM": 0, "VmRSS": 0, "Threads": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in out:
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


# ---- the request plan -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    kind: str  # hit, miss, list, journal, put
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None
    expect: int
    digest: str = ""
    blob: bytes = b""


def plan(seeds: dict[str, bytes], puts: dict[str, bytes], clients: int, gets: int, seed: int = 7) -> list[list[Op]]:
    """Each client's ops in order: its share of GETs (55% hits, 15% 404s, 20% lists, 10% journal) and PUTs."""
    rnd = random.Random(seed)
    seed_items = list(seeds.items())
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    get_ops: list[Op] = []
    for _ in range(gets):
        r = rnd.random()
        digest, blob = rnd.choice(seed_items)
        hexd = digest.split(":")[1]
        if r < 0.55:
            get_ops.append(Op("hit", "GET", f"/{REPO}@sha256={hexd}/signature-1", {}, None, 200, digest, blob))
        elif r < 0.70:
            get_ops.append(Op("miss", "GET", f"/{REPO}@sha256={hexd}/signature-2", {}, None, 404, digest))
        elif r < 0.90:
            get_ops.append(Op("list", "GET", f"/extensions/v2/{REPO}/signatures/{digest}", {}, None, 200, digest,
                              blob))
        else:
            get_ops.append(Op("journal", "GET", JOURNAL, {"Range": "bytes=0-4095"}, None, 206))
    put_ops = []
    for digest, blob in puts.items():
        body = json.dumps({"schemaVersion": 2, "name": f"{digest}@{hashlib.sha256(blob).hexdigest()[:32]}",
                           "type": "atomic", "content": base64.b64encode(blob).decode()}).encode()
        put_ops.append(Op("put", "PUT", f"/extensions/v2/{REPO}/signatures/{digest}", auth, body, 201, digest, blob))
    per_client: list[list[Op]] = [[] for _ in range(clients)]
    for i, op in enumerate(get_ops):
        per_client[i % clients].append(op)
    for i, op in enumerate(put_ops):
        per_client[i % clients].append(op)
    for ops in per_client:
        rnd.shuffle(ops)
    return per_client


# ---- results ----------------------------------------------------------------------------------------------------


@dataclass
class Results:
    """Shared by all client threads: appends and Counter updates happen under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latency: dict[str, list[float]] = field(default_factory=lambda: {"get": [], "put": []})
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    put_results: dict[str, tuple[int, str] | str] = field(default_factory=dict)  # digest -> (status, Location) | error

    def record(self, op: Op, seconds: float, status: int | None, headers: dict[str, str], body: bytes,
               error: str | None) -> None:
        with self.lock:
            self.latency["put" if op.kind == "put" else "get"].append(seconds)
            if error is not None:
                self.errors[f"{op.kind}:{error}"] += 1
                if op.kind == "put":
                    self.put_results[op.digest] = error
                return
            self.statuses[f"{op.kind}:{status}"] += 1
            if op.kind == "put":
                self.put_results[op.digest] = (status or 0, headers.get("location", ""))
            problem = check_response(op, status or 0, body)
            if problem:
                self.errors[f"{op.kind}:{problem}"] += 1


def check_response(op: Op, status: int, body: bytes) -> str | None:
    """What is wrong with an answer, or None (status and, where cheap, content)."""
    if status != op.expect:
        return f"status-{status}"
    if op.kind == "hit" and body != op.blob:
        return "body-mismatch"
    if op.kind == "list":
        try:
            entries = json.loads(body)["signatures"]
        except (ValueError, KeyError, TypeError):
            return "bad-json"
        if base64.b64encode(op.blob).decode() not in [e.get("content") for e in entries]:
            return "list-missing-blob"
    if op.kind == "journal" and not body.startswith(MAGIC):
        return "bad-journal"
    return None


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    v = sorted(values)

    def at(q: float) -> float:
        return round(v[min(len(v) - 1, int(q * len(v)))] * 1000, 2)

    return {"count": len(v), "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99),
            "max_ms": round(v[-1] * 1000, 2), "mean_ms": round(statistics.fmean(v) * 1000, 2)}


# ---- engines ----------------------------------------------------------------------------------------------------


def run_threads(port: int, per_client: list[list[Op]], res: Results) -> None:
    """One thread and one keep-alive http.client connection per client; a broken connection is reopened."""

    def client(ops: list[Op]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for op in ops:
            t0 = time.perf_counter()
            try:
                conn.request(op.method, op.path, body=op.body, headers=op.headers)
                resp = conn.getresponse()
                body = resp.read()
                hdrs = {k.lower(): v for k, v in resp.getheaders()}
                res.record(op, time.perf_counter() - t0, resp.status, hdrs, body, None)
                if resp.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                res.record(op, time.perf_counter() - t0, None, {}, b"", type(exc).__name__)
                conn.close()
        conn.close()

    threads = [threading.Thread(target=client, args=(ops,), daemon=True) for ops in per_client]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_asyncio(port: int, per_client: list[list[Op]], res: Results) -> None:
    """One event loop, one raw keep-alive stream per client (HTTP/1.1 framing by Content-Length only)."""

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, op: Op,
                       ) -> tuple[int, dict[str, str], bytes]:
        head = [f"{op.method} {op.path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        head += [f"{k}: {v}" for k, v in op.headers.items()]
        head.append(f"Content-Length: {len(op.body or b'')}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (op.body or b""))
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs = {}
        for line in lines[1:]:
            if ":" in line:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
        body = await asyncio.wait_for(reader.readexactly(int(hdrs.get("content-length", "0"))), 60)
        return status, hdrs, body

    async def client(ops: list[Op]) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for op in ops:
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                status, hdrs, body = await exchange(*conn, op)
                res.record(op, time.perf_counter() - t0, status, hdrs, body, None)
                if hdrs.get("connection", "").lower() == "close":
                    conn[1].close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                    ValueError, IndexError) as exc:
                res.record(op, time.perf_counter() - t0, None, {}, b"", type(exc).__name__)
                if conn is not None:
                    conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    async def main() -> None:
        await asyncio.gather(*(client(ops) for ops in per_client))

    asyncio.run(main())


ENGINES: dict[str, Callable[[int, list[list[Op]], Results], None]] = {"threads": run_threads, "asyncio": run_asyncio}


# ---- side loads: /healthz prober, slowloris, slow readers -------------------------------------------------------


class Prober(threading.Thread):
    """``GET /healthz`` on a new connection every 100 ms (as a kubelet probe would), plus server thread samples."""

    def __init__(self, port: int, pid: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.pid, self.stop = port, pid, stop
        self.latency: list[float] = []
        self.failures: collections.Counter[str] = collections.Counter()
        self.peak_threads = 0

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                c.request("GET", "/healthz", headers={"Connection": "close"})
                r = c.getresponse()
                body = r.read()
                c.close()
                if r.status != 200 or body != b"ok\n":
                    self.failures[f"status-{r.status}"] += 1
                else:
                    self.latency.append(time.perf_counter() - t0)
            except (OSError, http.client.HTTPException) as exc:
                self.failures[type(exc).__name__] += 1
            self.peak_threads = max(self.peak_threads, proc_status(self.pid)["Threads"])
            self.stop.wait(max(0.0, 0.1 - (time.perf_counter() - t0)))


class Slowloris(threading.Thread):
    """Sends a request head one byte per second; records how (and after how long) the server cuts it off."""

    def __init__(self, port: int, stop: threading.Event, max_seconds: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.port, self.stop, self.max_seconds = port, stop, max_seconds
        self.cuts: list[tuple[float, str]] = []  # (seconds connected, first response line or "closed")
        self.never_cut = 0

    def run(self) -> None:
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4096
        while not self.stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except OSError:
                self.stop.wait(1)
                continue
            start = time.monotonic()
            outcome = None
            with s:
                for i in range(len(head)):
                    if self.stop.is_set() or time.monotonic() - start > self.max_seconds:
                        break
                    try:
                        s.send(head[i:i + 1])
                    except OSError:
                        outcome = "closed"
                        break
                    ready, _, _ = select.select([s], [], [], 1.0)
                    if ready:
                        try:
                            data = s.recv(4096)
                        except OSError:
                            data = b""
                        outcome = data.split(b"\r\n", 1)[0].decode("latin-1") if data else "closed"
                        break
            if outcome is not None:
                self.cuts.append((time.monotonic() - start, outcome))
            elif not self.stop.is_set():
                self.never_cut += 1


class SlowReader(threading.Thread):
    """Reads 64 KiB of journal through a 4 KiB receive buffer, 1 KiB every 100 ms; every read must be complete."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.ok = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.seconds: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                self.once()
                self.ok += 1
                self.seconds.append(time.monotonic() - t0)
            except (OSError, ValueError) as exc:
                self.errors[type(exc).__name__ + (f":{exc}" if isinstance(exc, ValueError) else "")] += 1

    def once(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(60)
        with s:
            s.connect(("127.0.0.1", self.port))
            s.sendall(f"GET {JOURNAL} HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes=0-65535\r\n"
                      "Connection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(1024)
                if not chunk:
                    break
                data += chunk
                time.sleep(0.1)
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head else b"?"
        length = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
        if status != b"206" or not length or len(body) != length[0] or not body.startswith(MAGIC):
            raise ValueError(f"status {status.decode()} body {len(body)} of {length}")


# ---- no lost PUT ------------------------------------------------------------------------------------------------


def check_puts(root: Path, puts: dict[str, bytes], results: dict[str, tuple[int, str] | str]) -> dict[str, Any]:
    """Every PUT has a result; every 201 is on disk (same bytes, the Location's file) and in the journal."""
    journal = (root / ".atomicsig" / "journal").read_text(encoding="utf-8").splitlines()
    added = {tuple(line.split(" ")[2:4]) for line in journal[1:] if line.split(" ")[1:2] == ["add"]}
    unknown = [d for d in puts if d not in results]
    created = lost = 0
    lost_examples: list[str] = []
    for digest, blob in puts.items():
        r = results.get(digest)
        if not isinstance(r, tuple) or r[0] != 201:
            continue
        created += 1
        rel = r[1].lstrip("/")
        path = root / rel
        ok = rel.startswith(digest_dirname(REPO, digest) + "/") and path.is_file() and path.read_bytes() == blob \
            and (rel, hashlib.sha256(blob).hexdigest()) in added
        if not ok:
            lost += 1
            lost_examples.append(rel or digest)
    return {"puts": len(puts), "created": created, "lost": lost, "unknown": len(unknown),
            "lost_examples": lost_examples[:5]}


# ---- main -------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="asig-load-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(args.sig_cache) if args.sig_cache else work / "sigs"
    t0 = time.monotonic()
    sigs = make_signatures(cache, args.seeds + args.puts)
    sign_seconds = time.monotonic() - t0
    items = list(sigs.items())
    seeds, puts = dict(items[:args.seeds]), dict(items[args.seeds:])
    root = work / "store"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    build_store(root, seeds)
    per_client = plan(seeds, puts, args.clients, args.gets)
    proc, port = start_server(root, work, args.threads, args.server_arg or [])
    stop = threading.Event()
    prober = Prober(port, proc.pid, stop)
    slow: list[threading.Thread] = [Slowloris(port, stop) for _ in range(args.slowloris)]
    slow += [SlowReader(port, stop) for _ in range(args.slow_readers)]
    res = Results()
    try:
        prober.start()
        for t in slow:
            t.start()
        time.sleep(args.warmup)  # let the slow clients take hold before the load starts
        started = time.perf_counter()
        ENGINES[args.engine](port, per_client, res)
        elapsed = time.perf_counter() - started
        stop.set()
        for t in [prober, *slow]:
            t.join(timeout=15)
        status = proc_status(proc.pid)
        alive = proc.poll() is None
    finally:
        stop.set()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    lorises = [t for t in slow if isinstance(t, Slowloris)]
    readers = [t for t in slow if isinstance(t, SlowReader)]
    cuts = [c for t in lorises for c in t.cuts]
    total = sum(len(v) for v in res.latency.values())
    report: dict[str, Any] = {
        "config": {"clients": args.clients, "gets": args.gets, "puts": args.puts, "seeds": args.seeds,
                   "slowloris": args.slowloris, "slow_readers": args.slow_readers, "engine": args.engine,
                   "server_threads": args.threads, "server_args": args.server_arg or [],
                   "cpus": os.cpu_count(), "note": "load generator and server share this machine's CPUs"},
        "sign_seconds": round(sign_seconds, 1),
        "requests": total, "seconds": round(elapsed, 2), "requests_per_s": round(total / elapsed, 1),
        "errors": sum(res.errors.values()), "errors_by_kind": dict(res.errors),
        "statuses": dict(res.statuses),
        "get": percentiles(res.latency["get"]), "put": percentiles(res.latency["put"]),
        "healthz": {**percentiles(prober.latency), "failures": sum(prober.failures.values()),
                    "failures_by_kind": dict(prober.failures)},
        "slowloris": {"connections_cut": len(cuts), "never_cut": sum(t.never_cut for t in lorises),
                      "max_seconds_before_cut": round(max((c[0] for c in cuts), default=0.0), 1),
                      "answers": dict(collections.Counter(c[1] for c in cuts))},
        "slow_readers": {"ok": sum(t.ok for t in readers),
                         "errors": dict(sum((t.errors for t in readers), collections.Counter())),
                         "max_seconds": round(max((s for t in readers for s in t.seconds), default=0.0), 1)},
        "server": {"peak_rss_kib": status["VmHWM"], "rss_kib_end": status["VmRSS"],
                   "peak_threads": prober.peak_threads, "alive_after_load": alive},
        "put_check": check_puts(root, puts, res.put_results),
    }
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return report


def render(r: dict[str, Any]) -> str:
    c = r["config"]
    g, p, h = r["get"], r["put"], r["healthz"]
    lines = [
        f"atomicsig serve load test: {c['clients']} clients ({c['engine']}), {c['gets']:,} GETs + {c['puts']:,} PUTs,"
        f" {c['slowloris']} slowloris + {c['slow_readers']} slow readers; server threads {c['server_threads']}",
        f"  NOTE: generator and server share the same {c['cpus']} CPUs",
        f"  requests {r['requests']:,} in {r['seconds']} s = {r['requests_per_s']:,} req/s; errors {r['errors']}"
        f" {r['errors_by_kind'] or ''}",
        f"  GET  p50 {g.get('p50_ms')} ms  p90 {g.get('p90_ms')}  p99 {g.get('p99_ms')}  max {g.get('max_ms')}",
        f"  PUT  p50 {p.get('p50_ms')} ms  p90 {p.get('p90_ms')}  p99 {p.get('p99_ms')}  max {p.get('max_ms')}",
        f"  /healthz (every 100 ms, new connection): {h.get('count', 0)} ok, p50 {h.get('p50_ms')} ms,"
        f" max {h.get('max_ms')} ms, failures {h['failures']} {h['failures_by_kind'] or ''}",
        f"  slowloris: {r['slowloris']['connections_cut']} cut (answers {r['slowloris']['answers']}), max"
        f" {r['slowloris']['max_seconds_before_cut']} s before cut, never cut {r['slowloris']['never_cut']}",
        f"  slow readers: {r['slow_readers']['ok']} complete reads (max {r['slow_readers']['max_seconds']} s),"
        f" errors {r['slow_readers']['errors'] or 0}",
        f"  server: peak RSS {r['server']['peak_rss_kib'] / 1024:.1f} MiB, peak threads"
        f" {r['server']['peak_threads']}, alive {r['server']['alive_after_load']}",
        f"  PUTs: {r['put_check']['created']} of {r['put_check']['puts']} created, lost {r['put_check']['lost']},"
        f" unknown {r['put_check']['unknown']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--gets", type=int, default=100_000)
    ap.add_argument("--puts", type=int, default=5_000)
    ap.add_argument("--seeds", type=int, default=500, help="signatures already in the store (GET targets)")
    ap.add_argument("--slowloris", type=int, default=20)
    ap.add_argument("--slow-readers", type=int, default=5)
    ap.add_argument("--engine", choices=sorted(ENGINES), default="threads")
    ap.add_argument("--threads", type=int, default=16, help="server worker threads")
    ap.add_argument("--server-arg", action="append", help="extra argument for atomicsig serve (repeatable)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds the slow clients run before the load")
    ap.add_argument("--sig-cache", help="directory keeping the generated signatures between runs")
    ap.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    report = run(args)
    print(render(report))
    if args.json:
        from atomicsig.fsutil import atomic_write

        atomic_write(Path(args.json), (json.dumps(report, indent=2) + "\n").encode())
    bad = report["errors"] or report["healthz"]["failures"] or report["put_check"]["lost"] \
        or report["put_check"]["unknown"] or not report["server"]["alive_after_load"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
