"""Run the atheris fuzz targets for a bounded time and summarize libFuzzer's output.

    python fuzz/run.py --seconds 60                 # every target, one after another
    python fuzz/run.py --seconds 3600 -j 2 serve    # named targets, two at a time

Each target runs in its own process on a temporary copy of its seed corpus (fuzz/corpus/<target>), so a run
never dirties the repository; libFuzzer's new corpus entries are thrown away with the copy unless --keep-corpus
names a directory. A crash, an uncaught exception, a hang (-timeout) or an allocation over -rss_limit_mb stops
that target; its input is kept under --artifacts and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))
_PROGRESS = re.compile(r"^#(\d+)\s+\w+.*?cov: (\d+) ft: (\d+)", re.M)
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_FAILURE = re.compile(r"ERROR: libFuzzer|Uncaught Python exception|ALARM: working on the last Unit|"
                      r"out-of-memory|deadly signal")


@dataclass
class Result:
    target: str
    returncode: int
    executions: int = 0
    exec_per_sec: int = 0
    cov: int = 0
    ft: int = 0
    peak_rss_mb: int = 0
    artifacts: tuple[str, ...] = ()
    failure: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.failure


def parse_output(target: str, returncode: int, log: str) -> Result:
    """Executions, speed, coverage and failures from libFuzzer's stderr (with -print_final_stats=1)."""
    res = Result(target, returncode)
    progress = _PROGRESS.findall(log)
    if progress:
        res.executions, res.cov, res.ft = (int(x) for x in progress[-1])
    stats = dict(_STAT.findall(log))
    res.executions = int(stats.get("number_of_executed_units", res.executions))
    res.exec_per_sec = int(stats.get("average_exec_per_sec", 0))
    res.peak_rss_mb = int(stats.get("peak_rss_mb", 0))
    res.artifacts = tuple(_ARTIFACT.findall(log))
    m = _FAILURE.search(log)
    if m:
        line_end = log.find("\n", m.end())
        res.failure = log[log.rfind("\n", 0, m.start()) + 1:line_end].strip()
        if "Uncaught Python exception" in res.failure:  # the exception itself is on the next line
            res.failure = log[line_end + 1:log.find("\n", line_end + 1)].strip()[:160]
    elif returncode != 0:
        res.failure = f"exit status {returncode}"
    return res


def run_target(target: str, seconds: int, timeout: int, rss_mb: int, artifacts: Path,
               keep_corpus: Path | None, extra: list[str]) -> tuple[Result, str]:
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as tmp:
        corpus = Path(tmp) / "corpus"
        seeds = HERE / "corpus" / target
        if seeds.is_dir():
            shutil.copytree(seeds, corpus)
        else:
            corpus.mkdir()
        artifacts.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(HERE / f"fuzz_{target}.py"), str(corpus), f"-max_total_time={seconds}",
               f"-timeout={timeout}", f"-rss_limit_mb={rss_mb}", "-print_final_stats=1", "-max_len=8192",
               f"-artifact_prefix={artifacts}/{target}-", *extra]
        # TMPDIR inside our temp dir: whatever a target creates (the serve target's store) goes away with it, even
        # when libFuzzer ends the process without running Python's exit handlers.
        env = {**os.environ, "TMPDIR": tmp}
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                              timeout=seconds + timeout + 120, check=False, env=env)
        if keep_corpus is not None:
            shutil.copytree(corpus, keep_corpus / target, dirs_exist_ok=True)
        return parse_output(target, proc.returncode, proc.stdout), proc.stdout


def table(results: list[Result]) -> str:
    head = f"{'target':<13}{'executions':>12}{'exec/s':>9}{'cov':>7}{'ft':>7}{'rss MB':>8}  result"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r.target:<13}{r.executions:>12}{r.exec_per_sec:>9}{r.cov:>7}{r.ft:>7}{r.peak_rss_mb:>8}  "
                    + ("ok" if r.ok else f"FAIL: {r.failure} {' '.join(r.artifacts)}"))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    ap.add_argument("--seconds", type=int, default=60, help="time budget per target (-max_total_time)")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="targets run in parallel")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a hang")
    ap.add_argument("--rss-limit-mb", type=int, default=512)
    ap.add_argument("--artifacts", type=Path, default=Path(tempfile.gettempdir()) / "atomicsig-fuzz-artifacts",
                    help="where failing inputs go (default: %(default)s)")
    ap.add_argument("--keep-corpus", type=Path, help="copy each grown corpus here (to seed a later run)")
    ap.add_argument("--log-dir", type=Path, help="write each target's full libFuzzer output here")
    ap.add_argument("--libfuzzer-arg", action="append", default=[], help="passed through, e.g. -seed=1")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    names = args.targets or TARGETS
    artifacts = args.artifacts.resolve()

    def one(name: str) -> Result:
        res, log = run_target(name, args.seconds, args.timeout, args.rss_limit_mb, artifacts, args.keep_corpus,
                              args.libfuzzer_arg)
        if args.log_dir is not None:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            (args.log_dir / f"{name}.log").write_text(log)
        if not res.ok:
            print(f"--- {name} failed; last output lines:\n" + "\n".join(log.splitlines()[-40:]), file=sys.stderr)
        return res

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(one, names))
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
