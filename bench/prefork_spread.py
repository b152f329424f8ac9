"""How evenly pre-forked workers share keep-alive connections: one inherited socket vs SO_REUSEPORT (issue 17 #4).

    python bench/prefork_spread.py [--runs 5] [--connections 50] [--workers 2] [shared] [reuseport]

For each mode, ``--workers`` processes each run net/httpd's HardenedServer over TLS on the same port: ``shared``,
on the one listening socket the parent bound and they inherited (what ``atomicsig webhook --processes`` does);
``reuseport``, on a socket each binds itself with SO_REUSEPORT (the kernel hashes each connection onto one). The
application spends ~1 ms of CPU per request (a cached review's cost) and answers its pid. ``--connections``
clients connect at once (a barrier), as ab and a restarted API server do, and send 20 requests each over
keep-alive; printed per run: how many connections each worker got, smallest first (the requests follow them).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import os
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from atomicsig.net.httpd import HardenedServer, Limits, listen_socket, use_tls  # noqa: E402


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    t = time.process_time()
    while time.process_time() - t < 0.001:
        pass
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def _worker(sock: socket.socket, cert: str, key: str) -> None:
    srv = HardenedServer(("127.0.0.1", 0), _app, Limits(), tls=True, sock=sock)
    use_tls(srv, cert, key)
    srv.prepare()

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        srv.serve()
    signal.alarm(10)  # bounded shutdown
    srv.stop()
    os._exit(0)


def run(mode: str, args: argparse.Namespace, cert: str, key: str) -> list[int]:
    if mode == "shared":
        parent = listen_socket(("127.0.0.1", 0))
    else:
        parent = socket.socket()  # reserves the port; not listening, so it takes no connections
        parent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        parent.bind(("127.0.0.1", 0))
    port = parent.getsockname()[1]
    pids = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            sock = parent
            if mode == "reuseport":
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen(512)
            _worker(sock, cert, key)
        pids.append(pid)
    time.sleep(1.5)  # the workers are listening
    ctx = ssl.create_default_context(cafile=cert)
    got: collections.Counter[str] = collections.Counter()
    barrier = threading.Barrier(args.connections)
    lock = threading.Lock()

    def client() -> None:
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        barrier.wait()
        first = ""
        for _ in range(20):
            c.request("GET", "/")
            body = c.getresponse().read().decode()
            first = first or body
        with lock:
            got[first] += 1
        c.close()
    threads = [threading.Thread(target=client) for _ in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for pid in pids:
        os.waitpid(pid, 0)
    parent.close()
    return sorted([got.get(str(p), 0) for p in pids])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modes", nargs="*", help="shared and/or reuseport (default: both)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from tests.tokenserver import self_signed

    with tempfile.TemporaryDirectory(prefix="atomicsig-bench-spread-") as work:
        cert, key, _ = self_signed(Path(work))
        for mode in args.modes or ["shared", "reuseport"]:
            if mode not in ("shared", "reuseport"):
                ap.error(f"unknown mode {mode!r}")
            for _ in range(args.runs):
                print(mode, run(mode, args, str(cert), str(key)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
