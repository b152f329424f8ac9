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
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then fast=1; shift; fi
bash scripts/setup.sh
. .venv/bin/activate
echo "== ruff"; ruff check atomicsig tests bench fuzz scripts
echo "== mypy"; mypy
if [ "$fast" = 1 ]; then
  echo "== fast tier (not slow)"; exec python -m pytest -q -p no:cacheprovider -m "not slow" "$@"
fi
echo "== dependency audit"; python scripts/audit.py
echo "== fast tier on the minimum dependency versions"; bash scripts/test-min-deps.sh -x
echo "== benchmark regression gate (ratios vs skopeo/gpg/podman/rsync, floors in bench/baseline.json)"
# A real 2x regression persists; a noisy neighbour rarely strikes twice: fail only if a second run agrees.
python bench/run.py --quick || { echo "bench: re-running once to rule out noise"; python bench/run.py --quick; }
echo "== slow tier (real tools)"; python -m pytest -q -p no:cacheprovider -m slow --durations=15 "$@"
