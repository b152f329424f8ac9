"""Time one first sync of N signatures from nginx, outside the harness (the figures in docs/performance.md).

    cd bench && python first_sync.py 100000                     # pack + tail, default pass limits
    cd bench && python first_sync.py 2000 --no-pack             # the journal tail only (catch-up path)
    cd bench && python first_sync.py 100000 --passes 2 -- strace -c -f -o /tmp/trace   # count system calls

The upstream is ``bench_sync.pack_fixture(N)`` (cached in the temp directory; building 100,000 takes a minute),
served by nginx; the follower is ``atomicsig sync --once`` in a child process (its log is discarded: it costs the
run nothing to write). ``--no-pack`` serves a copy of the fixture without its pack, so the follower reads the
journal record by record from offset 0, as a node far behind does. Everything after ``--`` is put in front of
the follower's command line. Prints the wall time, exit code, signatures stored and the load average.

Back-to-back runs: each run deletes its copy (2N inodes) when it ends. On an ext4 without a journal (this
machine's root filesystem) creating an inode then skips, one by one, every inode freed in the last 60 s, or 360 s
while its inode-table block is dirty (``recently_deleted`` in fs/ext4/ialloc.c), which made the next run up to 2x
slower here (~40 % of its ``perf`` samples in that scan). The script says so when the previous run's delete is
younger than that; ``--settle`` waits it out first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_sync import ATOMICSIG, Nginx, follower_config, pack_fixture

#: Touched when a run has deleted its copy; how long ago that was decides the note (see the docstring).
DELETED = Path(tempfile.gettempdir()) / "atomicsig-bench-first-sync.deleted"
#: The longest an ext4 without a journal keeps a freed inode "recently deleted": 60 s + 300 s while dirty.
SETTLE_SECONDS = 360


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", type=int)
    ap.add_argument("--passes", type=int, default=100)
    ap.add_argument("--no-pack", action="store_true")
    ap.add_argument("--settle", action="store_true",
                    help=f"wait until the previous run's delete is {SETTLE_SECONDS} s old (see above)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.prefix = argv[cut + 1:]  # split by hand: argparse drops "--" inside the prefix and refuses options before it
    src, keyfile = pack_fixture(args.n, Path(tempfile.gettempdir()) / f"atomicsig-bench-first-sync-{args.n}")
    age = time.time() - DELETED.stat().st_mtime if DELETED.exists() else SETTLE_SECONDS
    if age < SETTLE_SECONDS and args.settle:
        print(f"waiting {SETTLE_SECONDS - age:.0f} s: the previous run's copy was deleted {age:.0f} s ago",
              file=sys.stderr)
        time.sleep(SETTLE_SECONDS - age)
    elif age < SETTLE_SECONDS:
        print(f"note: the previous run's copy was deleted {age:.0f} s ago; on an ext4 without a journal that can "
              "slow this run (--settle waits it out)", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="first-sync-"))
    try:
        if args.no_pack:
            shutil.copytree(src, work / "up", symlinks=True, ignore=shutil.ignore_patterns("pack"))
            src = work / "up"
        ng = Nginx(src, work / "nginx", autoindex=True)
        try:
            cfg = follower_config(work / "f", ng.url, keyfile)
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            code = subprocess.run([*args.prefix, *ATOMICSIG, "sync", "--once", "--passes", str(args.passes),
                                   "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, check=False).returncode
            wall = time.perf_counter() - t0
        finally:
            ng.stop()
        stored = sum(1 for _ in (work / "f" / "follower").glob("bench/*/signature-1"))
        print(f"{args.n} signatures{' (no pack)' if args.no_pack else ''}: wall {wall:.1f} s, exit {code}, "
              f"stored {stored} ({stored / wall:.0f} sig/s), load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
        return 0 if code == 0 and stored == args.n else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
        DELETED.touch()


if __name__ == "__main__":
    sys.exit(main())
