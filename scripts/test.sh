#!/usr/bin/env bash
# The test suite, in two tiers.
#
#   ./scripts/test.sh --fast [PYTEST ARGS]   the developer loop: ruff, mypy, then every test not marked slow
#                                            (pure and gpg-unit tests) on the current dependencies
#   ./scripts/test.sh [PYTEST ARGS]          what CI runs (.ci/run): lint, types, the dependency audit, the fast
#                                            tier on the *minimum* dependency versions, the benchmark gate, then
#                                            every slow test (real skopeo, podman, docker-registry, nginx, crash,
#                                            load, install) on the current ones
#
# No test or gate runs twice in one CI run: the fast tier runs once (on the minimum versions, which is where a
# lower bound in setup.cfg breaks first), the slow tier once, and bench/run.py once (plus one re-run only when it
# fails, to tell a 2x regression from a noisy neighbour). Both start with scripts/setup.sh, which installs what is
# missing and is quick when nothing is. The last pytest run comes last, so its summary is the run's closing line.
#
# Wall time on the 2-core CI machine (README, "Tests"): both tiers run under pytest-xdist (-n, --dist loadfile:
# a module's tests stay on one worker, so module-scoped fixtures are built once and a module's timing-bound tests
# never race each other; tests/conftest.py splits test_crash.py per test and starts the longest tests first).
# More workers than cores pays: many slow tests wait on a child process, a server or a sleep. What only waits
# overlaps: the two virtualenvs install side by side and the dependency audit (network timeouts, no CPU) runs
# behind ruff and mypy. Only the benchmark gate, which compares rates, runs on an otherwise idle machine.
# ATOMICSIG_TEST_WORKERS overrides the worker count (1 = no xdist, e.g. to debug with --pdb).
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then fast=1; shift; fi
# Temp dirs: a short --basetemp, because xdist adds popen-gwN/ to every test's path, and a GnuPG home so deep
# that its agent's socket path no longer fits a Unix socket address (108 bytes) gets no agent ("No agent
# running": the load test's key did); /tmp/at.XXXXXX/ is shorter than pytest's own /tmp/pytest-of-USER/pytest-N/
# by more than popen-gwN/. Removed when the run passes, kept when it fails.
logs=$(mktemp -d /tmp/at.XXXXXX)
trap 'rc=$?; [ "$rc" != 0 ] || rm -rf "$logs"' EXIT
xdist() {  # pytest arguments for N workers and a basetemp named $2
  local n=${ATOMICSIG_TEST_WORKERS:-$1}
  echo "--basetemp=$logs/$2"
  if [ "$n" -gt 1 ]; then echo "-n $n --dist loadfile --no-loadscope-reorder"; else echo "-p no:xdist"; fi
}
if [ "$fast" = 1 ]; then
  bash scripts/setup.sh
  . .venv/bin/activate
  echo "== [${SECONDS}s] ruff"; ruff check atomicsig tests bench fuzz scripts
  echo "== [${SECONDS}s] mypy"; mypy
  # shellcheck disable=SC2046
  echo "== [${SECONDS}s] fast tier (not slow)"; python -m pytest -q -p no:cacheprovider $(xdist 3 f) -m "not slow" "$@"
  exit 0
fi
bash scripts/test-min-deps.sh --install-only >"$logs/min" 2>&1 & min_pid=$!
bash scripts/setup.sh
wait "$min_pid" || { cat "$logs/min" >&2; exit 1; }
cat "$logs/min"
. .venv/bin/activate
python scripts/audit.py >"$logs/audit" 2>&1 & audit_pid=$!
echo "== [${SECONDS}s] ruff"; ruff check atomicsig tests bench fuzz scripts
echo "== [${SECONDS}s] mypy"; mypy
echo "== [${SECONDS}s] dependency audit"; wait "$audit_pid" || { cat "$logs/audit"; exit 1; }; cat "$logs/audit"
echo "== [${SECONDS}s] benchmark regression gate (ratios vs skopeo/gpg/podman/rsync, floors in bench/baseline.json)"
# A real 2x regression persists; a noisy neighbour rarely strikes twice: fail only if a second run agrees.
python bench/run.py --quick || { echo "bench: re-running once to rule out noise"; python bench/run.py --quick; }
# shellcheck disable=SC2046
echo "== [${SECONDS}s] fast tier on the minimum dependency versions"; bash scripts/test-min-deps.sh --installed $(xdist 3 f) -x
# shellcheck disable=SC2046
echo "== [${SECONDS}s] slow tier (real tools)"
python -m pytest -q -p no:cacheprovider $(xdist 4 s) -m slow --durations=15 "$@"
