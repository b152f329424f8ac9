"""Where does ``atomicsig sign --from-file`` spend its time? cProfile across all threads, plus CPU accounting.

    python bench/profile_sign.py [--n 200] [--key-type rsa2048|ed25519] [-j JOBS] [--top 20] [--out FILE.prof]

cProfile alone only sees the main thread, which just waits for ``sign_many``'s thread pool; so every thread
started during the run gets its own profiler (``threading.setprofile``) and the stats are merged. Times are wall
time per function, summed over threads (so they can exceed the run's wall time). CPU is split into this Python
process, its children (one ``gpg`` per signature) and the gpg-agent daemon (read from /proc), because the agent
does the private-key operation and is neither.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from bench_sign import make_images


def _agent_cpu_seconds(gnupghome: Path) -> float:
    """user+sys CPU of the gpg-agent serving ``gnupghome`` (0 if none is running)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if not cmdline or not cmdline[0].endswith(b"gpg-agent"):
                continue
            if str(gnupghome).encode() not in b" ".join(cmdline) and \
                    Path(f"/proc/{pid}/environ").read_bytes().find(str(gnupghome).encode()) < 0:
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except OSError:
            continue
    return total


def profile_sign(ctx: harness.Context, key_type: str, jobs: int | None,
                 profile: bool = True) -> tuple[pstats.Stats | None, dict[str, float]]:
    from atomicsig.cli import main as cli_main

    images = make_images(ctx, ctx.n)
    refs = ctx.root / "refs.txt"
    refs.write_text("".join(f"{im.ref}\n" for im in images), encoding="utf-8")
    store = ctx.fresh_dir("sigstore")
    fpr = ctx.keys[key_type]
    # Warm the agent (and load the key) so the profile shows steady-state signing, as in bench_sign.
    harness.run_checked(["gpg", "--homedir", str(ctx.gnupghome), "--batch", "--no-tty", "--yes", "--sign",
                         "--local-user", fpr, "-o", "/dev/null", str(images[0].payload_path)], ctx)
    argv = ["sign", "--from-file", str(refs), "--key", fpr, "--sigstore", str(store), "--gnupghome",
            str(ctx.gnupghome)] + (["-j", str(jobs)] if jobs else [])

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_thread_profiler(frame: FrameType, event: str, arg: Any) -> None:
        sys.setprofile(None)
        p = cProfile.Profile()
        with lock:
            profiles.append(p)
        p.enable()

    main_prof = cProfile.Profile()
    agent0 = _agent_cpu_seconds(ctx.gnupghome)
    self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    if profile:
        threading.setprofile(start_thread_profiler)  # type: ignore[arg-type]
        main_prof.enable()
    t0 = time.perf_counter()
    try:
        code = cli_main(argv)
    finally:
        main_prof.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    agent1 = _agent_cpu_seconds(ctx.gnupghome)
    if code != 0:
        raise harness.BenchError(f"atomicsig sign exited {code}")
    stats = pstats.Stats(main_prof) if profile else None
    for p in profiles:
        p.create_stats()
        stats.add(p)  # type: ignore[union-attr]
    figures = {"wall": wall, "n": float(len(images)), "threads": float(len(profiles)),
               "python_cpu": (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime),
               "gpg_cpu": (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime),
               "agent_cpu": agent1 - agent0}
    return stats, figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/profile_sign.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--key-type", choices=harness.KEY_TYPES, default="rsa2048")
    ap.add_argument("-j", "--jobs", type=int)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--out", metavar="FILE.prof", help="also dump the merged stats for snakeviz/pstats")
    ap.add_argument("--cpu-only", action="store_true",
                    help="no profiler (it inflates Python's CPU): only wall time and the CPU split")
    args = ap.parse_args(argv)
    ctx = harness.Context(harness.make_tempdir(), n=args.n, runs=1, quick=False)
    try:
        harness.make_keys(ctx)
        stats, fig = profile_sign(ctx, args.key_type, args.jobs, profile=not args.cpu_only)
    finally:
        harness.kill_agent(ctx)
        import shutil

        shutil.rmtree(ctx.root, ignore_errors=True)
    n = fig["n"]
    print(f"atomicsig sign --from-file: {n:.0f} {args.key_type} signatures in {fig['wall']:.2f} s wall "
          f"({n / fig['wall']:.1f} sig/s), {fig['threads']:.0f} threads profiled")
    print(f"CPU: atomicsig python {fig['python_cpu']:.2f} s ({1000 * fig['python_cpu'] / n:.1f} ms/sig), "
          f"gpg children {fig['gpg_cpu']:.2f} s ({1000 * fig['gpg_cpu'] / n:.1f} ms/sig), "
          f"gpg-agent {fig['agent_cpu']:.2f} s ({1000 * fig['agent_cpu'] / n:.1f} ms/sig); "
          f"{os.cpu_count()} CPUs")
    if stats is None:
        return 0
    for key, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        buf = io.StringIO()
        stats.stream = buf  # type: ignore[attr-defined]
        stats.sort_stats(key).print_stats(args.top)
        body = buf.getvalue()
        print(f"\n== top {args.top} by {title} (wall, summed over threads)")
        print(body[body.find("   ncalls"):].rstrip())
    if args.out:
        stats.dump_stats(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
