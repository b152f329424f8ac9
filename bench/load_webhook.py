"""Load test of ``atomicsig webhook`` on loopback (issue 17): concurrent AdmissionReviews, beside skopeo.

    python bench/load_webhook.py [--client ab|python] [--concurrency 50] [--rounds 20] [--containers 10]
                                 [--cache-ttl 10,0] [--keepalive both|on|off] [--skopeo-rounds 2] [--processes 1]
                                 [--json out.json]

1. **World.** A docker-registry on 127.0.0.1 with ``--containers`` distinct images, each signed (throwaway
   Ed25519 key, one ``atomicsig sign`` process) into a lookaside directory on this machine; a policy YAML with one
   signed scope over them (``file://`` lookaside: signatures local).
2. **Webhook.** ``atomicsig webhook -f policy.yaml`` as a child process over TLS on a free port, once per
   ``--cache-ttl`` value (10: the decision cache on, the default; 0: every image evaluated at every review).
3. **Load.** ``--concurrency`` clients send ``--concurrency`` x ``--rounds`` reviews in all: a Pod with
   ``--containers`` containers whose images are pinned by digest (what ``--pin-digests`` leaves).
   ``--client ab`` (default when installed; apache2-utils): ApacheBench, one event-driven C process, so the load
   generator takes a small share of the cores the server needs (the Python generator's 50 threads took most of
   them); with keep-alive (``-k``: the kube-apiserver keeps its connections to a webhook alive) and without (a TLS
   handshake per review). ab does not check the certificate; the warm-up review does (http.client against the
   test certificate), and must be ``allowed: true``; ab then requires every answer to be 200 and of that same
   length with keep-alive (ab counts others as failed; the bench fails on any), and 200 without (ab's ``-l``: see
   run_ab). ``--client python``: the former generator
   (http.client threads, keep-alive, certificate verified, every answer's uid and ``allowed`` checked).
   Printed per run: latency p50/p95/p99/max, reviews/s, the server's CPU per review (its /proc stat over the
   run, summed over the whole process tree: with ``--processes N`` the supervisor and its workers), its memory
   (largest RSS of one process, PSS summed over the tree), the 1-minute load average at the end; with keep-alive
   also ``steady_*``: the same without each connection's first review, whose TLS handshake ab counts in it (ab's
   ``-g`` timeline: connect time > 0).
4. **Peer.** The only other way to learn the same answer on a node: ``skopeo copy`` of each image to ``dir:``
   under the policy.json and registries.d that ``policy apply`` writes from the same YAML (a pull decides the
   policy), ``--skopeo-rounds`` times over the images; per image and per pod (x containers), and the ratio of a
   pod's sequential skopeo checks to the webhook's p50 review (the first run's).

Client and server share this machine's CPUs (2 here), so the figures are a floor for the server alone.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from atomicsig.demo import env  # noqa: E402
from atomicsig.gnupg.keyring import Keyring  # noqa: E402


def _cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atomicsig", *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **kw.pop("env", {})}, **kw)


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 on (the command name, which may hold spaces, cut off)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of the server's whole process tree: the process itself (/proc/PID/stat fields 14
    and 15, in clock ticks), the children it has reaped (16 and 17: a ``--processes`` worker that was replaced),
    and its live children (the ``--processes`` workers)."""
    fields = _stat(pid)
    ticks = sum(int(f) for f in fields[11:15])
    for child in _children(pid):
        with contextlib.suppress(OSError):
            ticks += sum(int(f) for f in _stat(child)[11:13])
    return ticks / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of the server (MiB): each process's RSS, and the tree's PSS sum (shared pages counted once:
    what N forked workers cost together)."""
    def read(p: int) -> dict[str, int]:
        out = {}
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key] = int(rest.split()[0])
        return out
    procs = {p: read(p) for p in [pid, *_children(pid)]}
    return {"server_rss_mb_per_process": round(max(v["Rss"] for v in procs.values()) / 1024, 1),
            "server_pss_mb_total": round(sum(v["Pss"] for v in procs.values()) / 1024, 1)}


def _pod(images: list[str]) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "bench", "name": "p",
        "operation": "CREATE", "userInfo": {"username": "bench"}, "dryRun": False,
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "bench"},
                   "spec": {"containers": [{"name": f"c{i}", "image": img} for i, img in enumerate(images)]}}}}


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


class Webhook:
    """The webhook child process for one ``--cache-ttl``."""

    def __init__(self, work: Path, policy: Path, cert: Path, key: Path, cache_ttl: str, threads: int = 16,
                 processes: int = 1) -> None:
        self.port = env.free_port()
        self.log_path = work / f"webhook-{cache_ttl}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "atomicsig", "webhook", "-f", str(policy), "--listen", f"127.0.0.1:{self.port}",
             "--tls-cert", str(cert), "--tls-key", str(key), "--tls-verify=false", "--threads", str(threads),
             "--cache-ttl", cache_ttl, "--processes", str(processes)],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=log, cwd=work)
        log.close()  # the child has it; one line per review (a pipe nobody reads would fill and stall the server)
        self.base = f"https://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.base + "/healthz", verify=str(cert), timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("webhook did not start: " + self.log_path.read_text())
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _one_review(port: int, ca: str, images: list[str]) -> bytes:
    """One review over a verified connection; the answer must allow it (the warm-up, and ab's reference)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=ca), timeout=30)
    doc = _pod(images)
    conn.request("POST", "/validate", body=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    resp = json.loads(body).get("response", {}) if r.status == 200 else {}
    if resp.get("uid") != doc["request"]["uid"] or resp.get("allowed") is not True:
        raise SystemExit(f"warm-up review not allowed: {body[:300]!r}")
    return body


def run_ab(hook: Webhook, work: Path, images: list[str], args: argparse.Namespace, keepalive: bool
           ) -> dict[str, Any]:
    """ApacheBench over TLS: ``-c`` concurrent, ``-n`` reviews of one pod document; percentiles from ``-e``."""
    body = work / "review.json"
    body.write_text(json.dumps(_pod(images)))
    pct = work / "ab-percentiles.csv"
    n = args.concurrency * args.rounds
    cmd = ["ab", "-q", "-r", "-s", "30", "-c", str(args.concurrency), "-n", str(n), "-p", str(body), "-T",
           "application/json", "-e", str(pct), *(["-k"] if keepalive else ["-l"]),
           "-g", args.ab_timeline or str(work / "ab-timeline.tsv"), f"{hook.base}/validate"]
    # -l without keep-alive: ab then reads each TLS answer until the connection closes and takes the first read
    # (the head alone) as "the" length, so every later answer counted as a Length failure (an ab artefact; the
    # byte count it reports is right). Non-2xx answers still count.
    cpu0 = _cpu_seconds(hook.proc.pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    server_cpu = _cpu_seconds(hook.proc.pid) - cpu0
    if out.returncode != 0:
        raise SystemExit(f"ab failed: {out.stderr or out.stdout}")

    def field(label: str) -> str:
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith(label)), "")
        return line.split(":", 1)[1].split()[0] if line else "0"
    percent = {int(float(a)): float(b) for a, b in (ln.split(",") for ln in pct.read_text().splitlines()[1:])}
    done, failed, non2xx = int(field("Complete requests")), int(field("Failed requests")), int(
        field("Non-2xx responses"))
    if failed or non2xx:
        print(out.stdout, file=sys.stderr)
    # ab's timeline: ctime (connect, TLS handshake included) is > 0 only for each connection's first request. With
    # keep-alive those 50 of the run carry 50 handshakes at once (0.2-1 s each: half the run's 1 % tail); the
    # API server keeps its connections, so the "steady" figures leave them out (the others are unchanged).
    rows = [ln.split("\t") for ln in Path(args.ab_timeline or work / "ab-timeline.tsv").read_text().splitlines()[1:]]
    steady = sorted(float(r[4]) for r in rows if len(r) > 4 and r[2] == "0")
    return {"reviews": done, "failures": failed + non2xx + (n - done),
            **({"steady_reviews": len(steady), "steady_p50_ms": _pct(steady, 50), "steady_p95_ms": _pct(steady, 95),
                "steady_p99_ms": _pct(steady, 99), "steady_max_ms": steady[-1]} if keepalive and steady else {}),
            "p50_ms": percent[50], "p90_ms": percent[90], "p95_ms": percent[95], "p99_ms": percent[99],
            "max_ms": float(next(ln.split()[1] for ln in out.stdout.splitlines() if "(longest request)" in ln)),
            "reviews_per_s": float(field("Requests per second")),
            "server_cpu_ms_per_review": round(server_cpu / max(done, 1) * 1000, 2)}


def run_python(hook: Webhook, ca: str, images: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """http.client threads over keep-alive TLS connections, certificate verified, every answer checked."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    marks: list[float] = []
    cpu_marks: list[float] = []

    def release() -> None:  # every client connected and warmed (TLS handshake, first evaluation): measure now
        cpu_marks.append(_cpu_seconds(hook.proc.pid))
        marks.append(time.perf_counter())
    barrier = threading.Barrier(args.concurrency, action=release)

    def client() -> None:
        ctx = ssl.create_default_context(cafile=ca)
        conn = http.client.HTTPSConnection("127.0.0.1", hook.port, context=ctx, timeout=30)

        def one() -> tuple[dict[str, Any], int, bytes]:
            doc = _pod(images)
            conn.request("POST", "/validate", body=json.dumps(doc).encode(),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            return doc, r.status, r.read()

        one()  # warm: TLS handshake
        barrier.wait()
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            doc, status, body = one()
            took = time.perf_counter() - t0
            resp = json.loads(body).get("response", {}) if status == 200 else {}
            with lock:
                latencies.append(took)
                if resp.get("uid") != doc["request"]["uid"] or resp.get("allowed") is not True:
                    failures.append(body[:300].decode(errors="replace"))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server_cpu = _cpu_seconds(hook.proc.pid) - cpu_marks[0]
    wall = time.perf_counter() - marks[0]
    if failures:
        print("first failure:", failures[0], file=sys.stderr)
    return {"reviews": len(latencies), "failures": len(failures),
            "p50_ms": round(_pct(latencies, 50) * 1000, 1), "p90_ms": round(_pct(latencies, 90) * 1000, 1),
            "p95_ms": round(_pct(latencies, 95) * 1000, 1),
            "p99_ms": round(_pct(latencies, 99) * 1000, 1), "max_ms": round(max(latencies) * 1000, 1),
            "reviews_per_s": round(len(latencies) / wall, 1),
            "server_cpu_ms_per_review": round(server_cpu / len(latencies) * 1000, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--client", choices=["ab", "python"], default="ab" if shutil.which("ab") else "python")
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=20, help="reviews per client (ab: concurrency x rounds in all)")
    ap.add_argument("--containers", type=int, default=10)
    ap.add_argument("--skopeo-rounds", type=int, default=2)
    ap.add_argument("--cache-ttl", default="10,0", help="the webhook's --cache-ttl values to run, comma-separated "
                                                         "(0: every image evaluated at every review)")
    ap.add_argument("--keepalive", choices=["both", "on", "off"], default="both",
                    help="ab only: with keep-alive (-k), without (a TLS handshake per review), or both")
    ap.add_argument("--threads", type=int, default=16, help="the webhook's --threads (HTTP worker threads)")
    ap.add_argument("--processes", type=int, default=1, help="the webhook's --processes (worker processes; the "
                                                             "server CPU figure sums the whole process tree)")
    ap.add_argument("--ab-timeline", metavar="FILE", help="ab only: keep ab's per-request timeline (-g: start "
                                                          "second, connect and total time of each review)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    from tests.tokenserver import self_signed

    work = Path(tempfile.mkdtemp(prefix="atomicsig-bench-webhook-"))
    reg = env.LocalRegistry(work / "registry").start()
    hook: Webhook | None = None
    try:
        home = work / "gnupg"
        home.mkdir(mode=0o700)
        key = Keyring(str(home)).generate(name="Bench", email="bench@example.com", comment=None,
                                          algorithm="ed25519", expire="0", passphrase=None)
        (work / "build.gpg").write_bytes(Keyring(str(home)).export_public([key.fingerprint], armor=False))
        insecure = work / "insecure.json"
        insecure.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        images = []
        for i in range(args.containers):
            layout = env.oci_layout(work / f"oci-{i}", f"bench-webhook-{i}")
            digest_file = work / f"digest-{i}"
            env.skopeo(["--policy", str(insecure), "copy", "--quiet", "--dest-tls-verify=false", "--digestfile",
                        str(digest_file), f"oci:{layout}:latest", f"docker://{reg.host}/bench/app{i}:1"]
                       ).check_returncode()
            images.append(f"{reg.host}/bench/app{i}@{digest_file.read_text().strip()}")
        store = work / "sigstore"
        (work / "images.txt").write_text("\n".join(f"{reg.host}/bench/app{i}:1" for i in range(args.containers)))
        _cli("sign", "--key", key.fingerprint, "--sigstore", str(store), "--tls-verify=false", "--from-file",
             str(work / "images.txt"), env={"GNUPGHOME": str(home)})
        policy = work / "policy.yaml"
        policy.write_text(f"default: reject\nkeys:\n  build: {{file: build.gpg}}\nscopes:\n  {reg.host}/bench:\n"
                          f"    signed-by: build\n    lookaside: file://{store}\n")
        cert, tlskey, _ = self_signed(work / "tls")

        runs = []
        for ttl in args.cache_ttl.split(","):
            hook = Webhook(work, policy, cert, tlskey, ttl.strip(), args.threads, args.processes)
            _one_review(hook.port, str(cert), images)  # verified, allowed; and the cache warm (ttl > 0)
            if args.processes > 1:
                # Each worker has its own decision cache, and a connection goes to whichever worker accepts it
                # first: warm them all with concurrent reviews over fresh connections (idle workers win accepts).
                warm = [threading.Thread(target=_one_review, args=(hook.port, str(cert), images))
                        for _ in range(8 * args.processes)]
                for t in warm:
                    t.start()
                for t in warm:
                    t.join()
            modes = [True] if args.client == "python" or args.keepalive == "on" else \
                [False] if args.keepalive == "off" else [True, False]
            for keepalive in modes:
                got = run_ab(hook, work, images, args, keepalive) if args.client == "ab" else \
                    run_python(hook, str(cert), images, args)
                runs.append({"client": args.client, "cache_ttl": float(ttl), "keepalive": keepalive,
                             "processes": args.processes, **got, **_rss_mb(hook.proc.pid),
                             "images_per_s": round(got["reviews_per_s"] * args.containers, 1),
                             "load_average_1m": _load_average()})
                print(json.dumps(runs[-1]), file=sys.stderr)
            hook.stop()
            hook = None

        # The peer: skopeo copy to dir: under the policy.json that `policy apply` writes from the same YAML.
        node = work / "node"
        node.mkdir()
        _cli("policy", "apply", "-f", str(policy), "--root", str(node), "--keypaths-under-root")
        pol, regd = node / "etc/containers/policy.json", node / "etc/containers/registries.d"
        sk_times = []
        for _ in range(args.skopeo_rounds):
            for img in images:
                dest = work / "copy"
                shutil.rmtree(dest, ignore_errors=True)
                t0 = time.perf_counter()
                env.skopeo(["--policy", str(pol), "--registries.d", str(regd), "copy", "--quiet",
                            "--src-tls-verify=false", f"docker://{img}", f"dir:{dest}"]).check_returncode()
                sk_times.append(time.perf_counter() - t0)
        sk_image = statistics.median(sk_times) if sk_times else 0.0
        out = {"cpus": os.cpu_count(), "concurrency": args.concurrency, "containers": args.containers,
               "runs": runs, "skopeo_per_image_ms": round(sk_image * 1000, 1) if sk_times else None,
               "skopeo_per_pod_ms": round(sk_image * args.containers * 1000, 1) if sk_times else None,
               "ratio_pod_skopeo_over_review_p50": round(sk_image * args.containers * 1000 / runs[0]["p50_ms"], 1)
               if runs and runs[0]["p50_ms"] and sk_times else None}
        print(json.dumps(out, indent=2))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
        return 1 if any(r["failures"] for r in runs) else 0
    finally:
        if hook is not None:
            hook.stop()
        reg.stop()
        env.kill_gpg_agent(work / "gnupg")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
