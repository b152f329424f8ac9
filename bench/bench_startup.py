"""Cold start: ``atomicsig --version`` and ``atomicsig --help`` against ``python3 -c pass``.

The interpreter's own start-up is the floor for any Python CLI, so the ratio shows what atomicsig adds on top
(imports reached before the first line of output). Subcommands are imported lazily (cli/__init__.py), so both
rows should stay close to the floor. Each sample is one process; the three commands run interleaved.
"""

from __future__ import annotations

import subprocess
import time

from harness import Context, Row, make_row, set_target

#: Samples per row: the median of this many starts (the brief asks for ~10; quick mode halves it).
SAMPLES, QUICK_SAMPLES = 15, 7  # odd, so the median is one real sample


def _once(argv: list[str], ctx: Context) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=ctx.env, check=False, timeout=60)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}")
    return seconds


def run(ctx: Context) -> list[Row]:
    samples = QUICK_SAMPLES if ctx.quick else SAMPLES
    cmds = {"python": [*ctx.python, "-c", "pass"], "version": [*ctx.atomicsig, "--version"],
            "help": [*ctx.atomicsig, "--help"]}
    for argv in cmds.values():  # page the files in once; we measure start-up, not a cold disk
        _once(argv, ctx)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(samples):
        for name, argv in cmds.items():
            times[name].append(_once(argv, ctx))
    rate = {k: [1.0 / t for t in v] for k, v in times.items()}
    rows = []
    for name in ("version", "help"):
        row = make_row(f"startup.{name}", f"start: atomicsig --{name}", "runs/s", 1, rate[name],
                       "python3 -c pass", rate["python"])
        # Issue #6: cold start <= 1.5 x `python3 -c pass` + 100 ms, on the medians of the interleaved samples.
        ours_s, python_s = 1 / row.ours, 1 / row.other
        limit = 1.5 * python_s + 0.1
        rows.append(set_target(row, f"{ours_s * 1000:.0f} ms <= {limit * 1000:.0f} ms", ours_s <= limit))
    return rows
