"""Run every atomicsig benchmark and print one table of rates and ratios (see docs/performance.md).

    python bench/run.py [--quick] [--n N] [--runs R] [--json out.json] [--only SUITE] [-j JOBS]
                        [--write-baseline] [--no-check]

Rows compare atomicsig with a reference tool doing the same work on the same machine; the verdict is the ratio
of rates (higher is better). ``--quick`` (what CI runs) uses small sizes and exits 1 only if a ratio falls below
its floor in bench/baseline.json (floor = measured ratio / 2, i.e. a 2x regression relative to the reference
tools). Absolute times are never compared. ``--write-baseline`` records this run's ratios as the new baseline
for the chosen mode (quick or full). Exit codes: 0 ok, 1 a ratio regressed, 2 usage error, 3 a benchmark failed.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402  (the sibling modules are importable once bench/ is on sys.path)

#: Suites in run order (verify reads what sign leaves behind). A missing module is skipped, so a suite can be
#: added by dropping ``bench/bench_<name>.py`` with ``run(ctx) -> list[harness.Row]`` and listing it here.
SUITES = ("sign", "verify", "startup", "policy", "sync", "audit")
NEEDS_KEYS = {"sign", "verify"}
DEFAULT_N, QUICK_N = 1000, 30
BASELINE = HERE / "baseline.json"


def _suite(name: str) -> ModuleType | None:
    if not (HERE / f"bench_{name}.py").is_file():
        return None
    mod = importlib.import_module(f"bench_{name}")
    return mod if callable(getattr(mod, "run", None)) else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"CI mode: N={QUICK_N}, compare ratios with the baseline")
    ap.add_argument("--n", type=int, help=f"images to sign/verify (default {DEFAULT_N}, quick {QUICK_N})")
    ap.add_argument("--runs", type=int, default=3, help="runs per row; the table shows medians (default 3)")
    ap.add_argument("-j", "--jobs", type=int, help="pass -j to atomicsig sign (default: its own)")
    ap.add_argument("--only", action="append", choices=SUITES, help="run only these suites (repeatable)")
    ap.add_argument("--json", metavar="FILE", help="also write rows and statuses as JSON")
    ap.add_argument("--baseline", metavar="FILE", default=str(BASELINE), help="baseline file (default %(default)s)")
    ap.add_argument("--write-baseline", action="store_true", help="record this run's ratios as the baseline")
    ap.add_argument("--no-check", action="store_true", help="never exit 1 on a regressed ratio")
    args = ap.parse_args(argv)
    if args.runs < 1 or (args.n is not None and args.n < 1):
        ap.error("--runs and --n must be at least 1")
    n = args.n or (QUICK_N if args.quick else DEFAULT_N)
    wanted = [s for s in SUITES if not args.only or s in args.only]
    if "verify" in wanted and "sign" not in wanted:
        wanted.insert(0, "sign")
    mode = "quick" if args.quick else "full"

    ctx = harness.Context(harness.make_tempdir(), n=n, runs=args.runs, quick=args.quick, jobs=args.jobs)
    rows: list[harness.Row] = []
    started = time.perf_counter()
    try:
        if NEEDS_KEYS & set(wanted):
            _progress(f"generating {', '.join(harness.KEY_TYPES)} keys in {ctx.gnupghome}")
            harness.make_keys(ctx)
        for name in wanted:
            mod = _suite(name)
            if mod is None:
                continue
            _progress(f"running {name}")
            rows += mod.run(ctx)
    except harness.BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 3
    finally:
        harness.kill_agent(ctx)
        shutil.rmtree(ctx.root, ignore_errors=True)

    baseline_path = Path(args.baseline)
    baseline = harness.load_baseline(baseline_path)
    section = baseline.get(mode, {})
    status = harness.check(rows, section)
    print(harness.render(rows, section, status))
    missed = [r.label for r in rows if r.target_met is False]
    heavy = [r.label for r in rows if r.peak_mib is not None and r.peak_mib >= harness.MEMORY_LIMIT_MIB]
    print(f"issue #6 targets: {sum(r.target_met is True for r in rows)} met, {len(missed)} missed"
          + (f" ({'; '.join(missed)})" if missed else "")
          + f"; peak memory {'under' if not heavy else 'OVER'} {harness.MEMORY_LIMIT_MIB} MiB"
          + (f" ({'; '.join(heavy)})" if heavy else ""), file=sys.stderr)
    print(f"\n{mode} mode, N={n}, {args.runs} run(s) per row, medians; ratio = atomicsig rate / reference rate "
          f"(higher is better); {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.json:
        harness.write_json(Path(args.json), {"mode": mode, "n": n, "runs": args.runs,
                                             "rows": [dict(r.as_dict(), status=status[r.key]) for r in rows]})
    if args.write_baseline:
        baseline[mode] = harness.baseline_section(rows, n, args.runs)
        baseline.setdefault("how_to_refresh", "python bench/run.py --write-baseline  and  python bench/run.py "
                                              "--quick --write-baseline  (on a quiet machine; see "
                                              "docs/performance.md)")
        harness.write_json(baseline_path, baseline)
        print(f"wrote {mode} baseline to {baseline_path}", file=sys.stderr)
        return 0
    broken = harness.incomplete(rows, section) if not args.only else []
    if broken:
        print(f"bench: incomplete run: {'; '.join(broken)}", file=sys.stderr)
        return 3
    regressed = [k for k, v in status.items() if v == "REGRESSED"]
    if regressed and not args.no_check:
        print(f"bench: ratio below its floor for {', '.join(regressed)}", file=sys.stderr)
        return 1
    return 0


def _progress(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
