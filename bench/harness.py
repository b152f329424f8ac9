"""Shared benchmark plumbing: the run context, timing, rows, the table and the baseline check.

Every benchmark compares atomicsig with a reference tool *on the same machine in the same minute*, so a row's
verdict is a ratio of rates (atomicsig rate / reference rate, higher is better), never an absolute time: CI
machines differ in speed by far more than any regression we care about, while ratios stay put.

A suite is a module with ``run(ctx: Context) -> list[Row]`` (see ``bench/run.py``'s ``SUITES``); it may put what
later suites need (signed sigstores, manifests) into ``ctx.shared``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The two key types every signing/verification row is measured with (names of atomicsig.gpg.KEY_ALGORITHMS).
KEY_TYPES = ("rsa2048", "ed25519")


@dataclass
class Row:
    """One comparison: atomicsig's rate against one reference tool's rate for the same work."""

    key: str  # stable id used in baseline.json, e.g. "sign.rsa2048.vs_skopeo"
    label: str  # what is measured, for humans
    unit: str  # "sig/s", "runs/s"
    ours: float  # median atomicsig rate
    other_name: str
    other: float  # median reference rate
    ratio: float  # median of per-run ratios ours/other (each pair measured back to back)
    samples: int  # how many ratios the median is taken over
    count: int  # operations per sample (N signatures, M verifications, 1 start)
    peak_mib: float | None = None  # highest peak RSS of atomicsig's process over the runs (issue #6: < 150 MB)
    target: str = ""  # the absolute target for this row, if it has one, e.g. "<= 130 ms"
    target_met: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Context:
    """What suites share: sizes, the temp root, the GnuPG home with one key per type, commands to run."""

    root: Path
    n: int
    runs: int
    quick: bool
    jobs: int | None = None
    gnupghome: Path = field(init=False)
    #: Peak RSS (KiB) of every atomicsig process measured by :func:`run_measured`, per row key prefix.
    peaks: dict[str, int] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # key type -> fingerprint
    shared: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gnupghome = self.root / "gnupg"

    @property
    def python(self) -> list[str]:
        return [sys.executable]

    @property
    def atomicsig(self) -> list[str]:
        """The installed console script beside this interpreter, not a pyenv/asdf shim (which adds ~50 ms)."""
        beside = Path(sys.executable).parent / "atomicsig"
        if beside.is_file():
            return [str(beside)]
        found = shutil.which("atomicsig")
        return [found] if found else [sys.executable, "-m", "atomicsig"]

    @property
    def env(self) -> dict[str, str]:
        """Environment for every tool: our GnuPG home, C locale (gpg messages), no user gpg.conf surprises."""
        env = dict(os.environ)
        env["GNUPGHOME"] = str(self.gnupghome)
        env["LC_ALL"] = "C.UTF-8"
        return env

    @property
    def peer_n(self) -> int:
        """Operations for a one-process-per-operation reference loop.

        Such a loop's rate does not depend on how many times it runs (every iteration pays the same start-up), so
        measuring it on at most 200 items gives the same rate as on N=1,000 in a fifth of the time. atomicsig's
        own one-process runs always do all N: their fixed start-up amortises, which is the point being measured.
        """
        return min(self.n, 200)

    def fresh_dir(self, name: str) -> Path:
        d = self.root / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d


def make_keys(ctx: Context) -> None:
    """One passphrase-less signing key per type in ``ctx.gnupghome``, made with atomicsig's own Keyring."""
    from atomicsig.gnupg.keyring import Keyring

    ctx.gnupghome.mkdir(mode=0o700, parents=True, exist_ok=True)
    kr = Keyring(str(ctx.gnupghome))
    for kt in KEY_TYPES:
        info = kr.generate(name=f"Bench {kt}", email=f"bench-{kt}@example.com", comment=None, algorithm=kt,
                           expire="0", passphrase=None)
        ctx.keys[kt] = info.fingerprint


def kill_agent(ctx: Context) -> None:
    subprocess.run(["gpgconf", "--homedir", str(ctx.gnupghome), "--kill", "all"], capture_output=True,
                   check=False, timeout=30)


def run_checked(argv: Sequence[str], ctx: Context, *, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a command; a benchmark whose command fails measures nothing, so stop with its stderr."""
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, env=ctx.env, check=False, timeout=900)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()[-5:]
        raise BenchError(f"{' '.join(argv[:3])} … exited {proc.returncode}: " + " | ".join(tail))
    return proc


def run_measured(argv: Sequence[str], ctx: Context, peak_key: str | None = None) -> float:
    """Run one atomicsig command like :func:`run_checked`; return its wall seconds and record its peak RSS.

    ``os.wait4`` gives this child's own ``ru_maxrss`` (its largest resident set, including any child it waited
    for), so the benchmark process's memory never leaks into the figure.
    """
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        # Output goes to a file, not a pipe: Popen.communicate() would reap the child before wait4 could.
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=ctx.env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            out.seek(0)
            tail = out.read().decode(errors="replace").strip().splitlines()[-5:]
            raise BenchError(f"{' '.join(argv[:3])} … exited {proc.returncode}: " + " | ".join(tail))
    if peak_key:
        ctx.peaks[peak_key] = max(ctx.peaks.get(peak_key, 0), int(usage.ru_maxrss))
    return seconds


class BenchError(Exception):
    """A benchmarked command failed, so its timing would be meaningless."""


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(runs: int, count: int, contenders: dict[str, Callable[[int], float]]) -> dict[str, list[float]]:
    """Run every contender once per run, back to back, and return rates (count / seconds) per contender.

    Each callable gets the run number, does its own untimed setup and returns the seconds of the timed part.
    Interleaving contenders within a run means load from other users of the machine hits both sides of a ratio.
    """
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(runs):
        for name, fn in contenders.items():
            seconds = fn(i)
            rates[name].append(count / seconds if seconds > 0 else float("inf"))
    return rates


def make_row(key: str, label: str, unit: str, count: int, ours: list[float], other_name: str,
             other: list[float], *, ctx: Context | None = None, peak_key: str | None = None,
             min_ratio: float | None = None) -> Row:
    """One row from interleaved rate samples; ``min_ratio`` is the issue's target ratio for it, if any."""
    ratios = [a / b for a, b in zip(ours, other, strict=True)]
    row = Row(key, label, unit, statistics.median(ours), other_name, statistics.median(other),
              statistics.median(ratios), len(ratios), count)
    if ctx is not None and peak_key and peak_key in ctx.peaks:
        row.peak_mib = round(ctx.peaks[peak_key] / 1024, 1)
    if min_ratio is not None:
        row.target, row.target_met = f">= {min_ratio:g}x", row.ratio >= min_ratio
    return row


def set_target(row: Row, text: str, met: bool) -> Row:
    """Attach an absolute target (seconds, milliseconds) that the issue states for this row."""
    row.target, row.target_met = text, met
    return row


#: Issue #6 states its sign/verify ratio targets for 1,000 signatures; smaller runs (--quick) show no target.
TARGET_N = 1000

#: Issue #6: every measured command stays under this peak resident set.
MEMORY_LIMIT_MIB = 150


# ---- table and baseline --------------------------------------------------------------------------------------

HEADER = ["ROW", "ATOMICSIG", "VS", "REFERENCE", "RATIO", "FLOOR", "STATUS", "PEAK", "TARGET"]


def check(rows: list[Row], section: dict[str, Any]) -> dict[str, str]:
    """Status per row against a baseline section: ok, REGRESSED (ratio below floor), new, or n/a.

    Ratios depend on the batch size (fixed start-up costs amortise over N), so a row measured at another
    operation count than its baseline entry is not compared ("n/a").
    """
    status: dict[str, str] = {}
    for r in rows:
        entry = (section.get("ratios") or {}).get(r.key)
        if entry is None:
            status[r.key] = "new"
        elif entry.get("count") not in (None, r.count):
            status[r.key] = f"n/a (baseline count {entry['count']})"
        elif r.ratio < float(entry["floor"]):
            status[r.key] = "REGRESSED"
        else:
            status[r.key] = "ok"
    return status


def incomplete(rows: list[Row], section: dict[str, Any]) -> list[str]:
    """What makes a run unusable as a gate, whatever the ratios: a baseline row not measured, a rate of zero, an
    atomicsig command without its peak memory (issue #6 bounds it). The gate (``--quick`` in CI) is the only run
    of this runner in CI, so it checks its own shape instead of a separate test running it a second time.
    """
    measured = {r.key for r in rows}
    out = [f"{k}: not measured" for k in sorted((section.get("ratios") or {}).keys() - measured)]
    out += [f"{r.key}: a rate of zero" for r in rows if not (r.ours > 0 and r.other > 0 and r.ratio > 0)]
    out += [f"{r.key}: no peak memory" for r in rows if not r.key.startswith("startup.") and not r.peak_mib]
    return out


def render(rows: list[Row], section: dict[str, Any], status: dict[str, str]) -> str:
    floors = section.get("ratios") or {}
    body = []
    for r in rows:
        floor = floors.get(r.key, {}).get("floor")
        peak = "-" if r.peak_mib is None else f"{r.peak_mib:.0f}MiB" + ("" if r.peak_mib < MEMORY_LIMIT_MIB else "!")
        target = "-" if not r.target else f"{r.target} {'met' if r.target_met else 'MISSED'}"
        body.append([r.label, f"{r.ours:,.1f} {r.unit}", r.other_name, f"{r.other:,.1f} {r.unit}",
                     f"{r.ratio:.2f}x", "-" if floor is None else f"{float(floor):.2f}x", status.get(r.key, ""),
                     peak, target])
    widths = [max(len(x) for x in col) for col in zip(HEADER, *body, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


def baseline_section(rows: list[Row], n: int, runs: int) -> dict[str, Any]:
    """A fresh baseline section: floor = measured ratio / 2, so only a 2x slowdown relative to the tools fails."""
    return {"n": n, "runs": runs, "measured_on": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
            "ratios": {r.key: {"measured": round(r.ratio, 3), "floor": round(r.ratio / 2, 3), "count": r.count}
                       for r in rows}}


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data


def write_json(path: Path, obj: Any) -> None:
    """Temp file + fsync + rename through the project's one helper (fsutil.atomic_write)."""
    from atomicsig.fsutil import atomic_write

    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def make_tempdir() -> Path:
    # Short path: gpg-agent's socket lives in the home when /run/user/UID is absent (108-byte limit).
    return Path(tempfile.mkdtemp(prefix="asig-bench-"))
