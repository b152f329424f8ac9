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
# Wall time on the 2-core CI machine (README, "Tests"): the tests run under pytest-xdist (-n, --dist loadgroup;
# tests/conftest.py keeps a module's tests on one worker when they share a module-scoped fixture and starts the
# longest tests first). More workers than cores pays: most slow tests wait on a child process, a server or a
# sleep. What only waits overlaps: the two virtualenvs install side by side and the dependency audit (network
# timeouts, no CPU) runs behind ruff and mypy. Only the benchmark gate, which compares rates, runs on an
# otherwise idle machine. ATOMICSIG_TEST_WORKERS overrides the worker count (1 = no xdist, e.g. to debug).
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then fast=1; shift; fi
xdist() {  # pytest arguments for N workers
  local n=${ATOMICSIG_TEST_WORKERS:-$1}
  if [ "$n" -gt 1 ]; then echo "-n $n --dist loadfile --no-loadscope-reorder"; else echo "-p no:xdist"; fi
}
if [ "$fast" = 1 ]; then
  bash scripts/setup.sh
  . .venv/bin/activate
  echo "== ruff"; ruff check atomicsig tests bench fuzz scripts
  echo "== mypy"; mypy
  # shellcheck disable=SC2046
  echo "== fast tier (not slow)"; exec python -m pytest -q -p no:cacheprovider $(xdist 3) -m "not slow" "$@"
fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
bash scripts/test-min-deps.sh --install-only >"$logs/min" 2>&1 & min_pid=$!
bash scripts/setup.sh
wait "$min_pid" || { cat "$logs/min" >&2; exit 1; }
cat "$logs/min"
. .venv/bin/activate
python scripts/audit.py >"$logs/audit" 2>&1 & audit_pid=$!
echo "== ruff"; ruff check atomicsig tests bench fuzz scripts
echo "== mypy"; mypy
echo "== dependency audit"; wait "$audit_pid" || { cat "$logs/audit"; exit 1; }; cat "$logs/audit"
echo "== benchmark regression gate (ratios vs skopeo/gpg/podman/rsync, floors in bench/baseline.json)"
# A real 2x regression persists; a noisy neighbour rarely strikes twice: fail only if a second run agrees.
python bench/run.py --quick || { echo "bench: re-running once to rule out noise"; python bench/run.py --quick; }
# shellcheck disable=SC2046
echo "== fast tier on the minimum dependency versions"; bash scripts/test-min-deps.sh --installed $(xdist 3) -x
# shellcheck disable=SC2046
echo "== slow tier (real tools)"
python -m pytest -q -p no:cacheprovider $(xdist 4) -m slow --durations=15 "$@"
