"""Load test of ``atomicsig webhook`` on loopback (issue 17): concurrent AdmissionReviews, beside skopeo.

    python bench/load_webhook.py [--concurrency 50] [--rounds 10] [--containers 10] [--skopeo-rounds 3]
                                 [--cache-ttl 10] [--json out.json]

1. **World.** A docker-registry on 127.0.0.1 with ``--containers`` distinct images, each signed (throwaway
   Ed25519 key, one ``atomicsig sign`` process) into a lookaside directory on this machine; a policy YAML with one
   signed scope over them (``file://`` lookaside: signatures local).
2. **Webhook.** ``atomicsig webhook -f policy.yaml`` as a child process over TLS on a free port.
3. **Load.** ``--concurrency`` client threads (keep-alive, one TLS session each) send ``--rounds`` reviews each,
   all at once: a Pod with ``--containers`` containers whose images are pinned by digest (what ``--pin-digests``
   leaves). Every answer must be ``allowed: true`` for the right uid. Printed: per-review latency p50/p90/p99/max,
   reviews/s, images checked/s.
4. **Peer.** The only other way to learn the same answer on a node: ``skopeo copy`` of each image to ``dir:``
   under the policy.json and registries.d that ``policy apply`` writes from the same YAML (a pull decides the
   policy), ``--skopeo-rounds`` times over the images; per image and per pod (x containers), and the ratio of a
   pod's sequential skopeo checks to the webhook's p50 review.

Client and server share this machine's CPUs (2 here), so the figures are a floor for the server alone.
"""

from __future__ import annotations

import argparse
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


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (/proc/PID/stat fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pod(images: list[str]) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "bench", "name": "p",
        "operation": "CREATE", "userInfo": {"username": "bench"}, "dryRun": False,
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "bench"},
                   "spec": {"containers": [{"name": f"c{i}", "image": img} for i, img in enumerate(images)]}}}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--containers", type=int, default=10)
    ap.add_argument("--skopeo-rounds", type=int, default=3)
    ap.add_argument("--cache-ttl", default="10", help="the webhook's --cache-ttl (0: every image evaluated)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    from tests.tokenserver import self_signed

    work = Path(tempfile.mkdtemp(prefix="atomicsig-bench-webhook-"))
    reg = env.LocalRegistry(work / "registry").start()
    proc = None
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
        port = env.free_port()
        log = open(work / "webhook.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "atomicsig", "webhook", "-f", str(policy), "--listen", f"127.0.0.1:{port}",
             "--tls-cert", str(cert), "--tls-key", str(tlskey), "--tls-verify=false", "--threads", "16",
             "--cache-ttl", args.cache_ttl],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=log, cwd=work)
        log.close()  # the child has it; one line per review (a pipe nobody reads would fill and stall the server)
        base = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(base + "/healthz", verify=str(cert), timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("webhook did not start: " + (work / "webhook.log").read_text())
            time.sleep(0.1)

        ca = str(cert)  # verified per request, as the API server does with caBundle (REQUESTS_CA_BUNDLE would win
        # over a Session-level setting)
        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()
        marks: list[float] = []
        cpu_marks: list[float] = []

        def release() -> None:  # every client connected and warmed (TLS handshake, first evaluation): measure now
            cpu_marks.append(_cpu_seconds(proc.pid))
            marks.append(time.perf_counter())
        barrier = threading.Barrier(args.concurrency, action=release)

        def client() -> None:
            # http.client over one keep-alive TLS connection: a light generator (requests costs several ms of the
            # 2 shared CPUs per call), verifying the certificate as the API server does with caBundle.
            ctx = ssl.create_default_context(cafile=ca)
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)

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
        server_cpu = _cpu_seconds(proc.pid) - cpu_marks[0]
        wall = time.perf_counter() - marks[0]  # from the moment every client is connected and released

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
        sk_image = statistics.median(sk_times)
        p50 = _pct(latencies, 50)
        out = {
            "cpus": os.cpu_count(), "concurrency": args.concurrency, "containers": args.containers,
            "reviews": len(latencies), "failures": len(failures),
            "p50_ms": round(p50 * 1000, 1), "p90_ms": round(_pct(latencies, 90) * 1000, 1),
            "p99_ms": round(_pct(latencies, 99) * 1000, 1), "max_ms": round(max(latencies) * 1000, 1),
            "reviews_per_s": round(len(latencies) / wall, 1),
            "mean_in_flight": round(sum(latencies) / wall, 1),  # Little's law: how concurrent the load really was
            "server_cpu_ms_per_review": round(server_cpu / len(latencies) * 1000, 2),
            "images_per_s": round(len(latencies) * args.containers / wall, 1),
            "skopeo_per_image_ms": round(sk_image * 1000, 1),
            "skopeo_per_pod_ms": round(sk_image * args.containers * 1000, 1),
            "ratio_pod_skopeo_over_review_p50": round(sk_image * args.containers / p50, 1),
        }
        print(json.dumps(out, indent=2))
        if failures:
            print("first failure:", failures[0], file=sys.stderr)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
        return 1 if failures else 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        reg.stop()
        env.kill_gpg_agent(work / "gnupg")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
