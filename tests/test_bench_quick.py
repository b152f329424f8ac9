"""The benchmark runner CI uses (``bench/run.py --quick``) runs end to end with real gpg and skopeo.

Only that it works and prints its table is asserted: timings are never checked in tests (the runner's own
ratio-vs-baseline check is what guards performance, and ``--no-check`` keeps a loaded test machine from failing
this test on noise).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HAVE_SKOPEO

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SKOPEO, reason="needs skopeo")
def test_quick_bench_runs_and_prints_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--runs", "1", "--no-check",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["ROW", "ATOMICSIG", "VS", "REFERENCE", "RATIO", "FLOOR", "STATUS", "PEAK", "TARGET"]
    rows = json.loads(out.read_text())["rows"]
    keys = {r["key"] for r in rows}
    for kt in ("rsa2048", "ed25519"):
        assert {f"sign.{kt}.vs_skopeo", f"sign.{kt}.vs_gpg", f"verify.{kt}.vs_skopeo"} <= keys
    assert {"startup.version", "startup.help", "policy.apply.vs_podman_trust", "sync.one_new.vs_rsync"} <= keys
    # Every atomicsig command measured reports its peak memory (issue #6: under 150 MB).
    assert all(r["peak_mib"] for r in rows if not r["key"].startswith("startup."))
    assert all(r["ours"] > 0 and r["other"] > 0 and r["ratio"] > 0 for r in rows)
    assert len(lines) == 1 + len(rows)


@pytest.mark.slow
def test_regressed_ratio_exits_1(tmp_path: Path) -> None:
    """A floor no real run can reach must fail the quick check: the CI gate is not a no-op."""
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"quick": {"n": 30, "ratios": {
        "startup.version": {"measured": 2000.0, "floor": 1000.0}}}}))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--runs", "1",
                           "--only", "startup", "--baseline", str(baseline)],
                          capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "REGRESSED" in proc.stdout
    assert "startup.version" in proc.stderr
