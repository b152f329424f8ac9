"""Bundle import rate: ``atomicsig bundle import`` of an N-signature bundle into an empty store, then again
(every signature already present).

    python bench/bench_bundle.py [--n 5000] [--runs 3] [--json out.json]

The source store is built like bench/bench_sync.py's (``n // 10`` distinct Ed25519 signatures, each under
several repositories, journaled by ``Journal.rebuild``) and exported once with ``atomicsig bundle export``. Each
run imports it into a fresh store and re-imports it; the figures are wall time of the whole CLI process (start,
key import, the checking pass over the bundle, verification of every signature, the journaled gap-free store).
No peer tool: nothing else imports this format; the figure to compare is the same command before a change.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sync import ATOMICSIG, build_store, make_key, run_child, sign_distinct


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-bundle-"))
    home = work / "gnupg"
    home.mkdir(mode=0o700)
    out: dict[str, Any] = {"signatures": args.n}
    try:
        fpr, pub = make_key(home)
        keyfile = work / "key.gpg"
        keyfile.write_bytes(pub)
        build_store(work / "src", sign_distinct(home, fpr, max(1, args.n // 10)), args.n)
        bundle = work / "b.tgz"
        subprocess.run([*ATOMICSIG, "bundle", "export", "--sigstore", str(work / "src"), "-o", str(bundle)],
                       check=True, capture_output=True)
        first, again = [], []
        for run in range(args.runs):
            dest = work / f"dst{run}"
            cmd = [*ATOMICSIG, "bundle", "import", str(bundle), "--sigstore", str(dest), "--key", str(keyfile)]
            wall, code, rss = run_child(cmd)
            stored = sum(1 for _ in dest.rglob("signature-*"))
            if code != 0 or stored != args.n:
                print(f"atomicsig bundle import failed: exit {code}, {stored} of {args.n} stored", file=sys.stderr)
                return 3
            first.append(wall)
            wall, code, _ = run_child(cmd)
            if code != 0:
                print(f"atomicsig bundle import (again) failed: exit {code}", file=sys.stderr)
                return 3
            again.append(wall)
            out["peak_rss_mib"] = round(rss / 1024, 1)
        out["import"] = {"wall_s": round(statistics.median(first), 2),
                         "sig_per_s": round(args.n / statistics.median(first), 1)}
        out["reimport"] = {"wall_s": round(statistics.median(again), 2),
                           "sig_per_s": round(args.n / statistics.median(again), 1)}
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
