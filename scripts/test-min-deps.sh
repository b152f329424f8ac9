#!/usr/bin/env bash
# Prove the lower bounds in setup.cfg: install the oldest allowed runtime dependencies (constraints/minimum.txt)
# into a separate virtualenv and run the fast tests (everything not marked slow) against them. The test tools
# that fast tests import (atheris, pip-audit) are installed too, so no fast test is skipped here: CI runs the
# fast tier only in this environment (scripts/test.sh).
#
#   scripts/test-min-deps.sh [PYTEST ARGS]              install (quick when done), check the versions, run the tests
#   scripts/test-min-deps.sh --install-only             install and check only (scripts/test.sh does this while
#                                                       scripts/setup.sh installs .venv)
#   scripts/test-min-deps.sh --installed [PYTEST ARGS]  check the versions and run the tests, no pip
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${ATOMICSIG_MIN_VENV:-.venv-min}
mode=all
case "${1:-}" in --install-only) mode=install; shift ;; --installed) mode=run; shift ;; esac
if [ "$mode" != run ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  log=$(mktemp)
  if ! "$venv/bin/python" -m pip install -q -c constraints/minimum.txt -r constraints/minimum.txt \
        "pytest>=7.4" "pytest-xdist>=3.6" "hypothesis>=6.80" "atheris>=2.3,<3" "pip-audit>=2.6" "kubernetes>=30" >"$log" 2>&1 \
     || ! "$venv/bin/python" -m pip install -q --no-deps -e . >>"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; echo "min-deps: pip install failed" >&2; exit 1
  fi
  rm -f "$log"
fi
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
pins = [l.split("==") for l in open("constraints/minimum.txt") if "==" in l and not l.startswith("#")]
bad = [f"{n} {md.version(n)} != {v.strip()}" for n, v in pins if md.version(n) != v.strip()]
if bad:
    raise SystemExit("min-deps: not the minimum versions: " + "; ".join(bad))
print("min-deps: " + ", ".join(f"{n}=={v.strip()}" for n, v in pins))
PY
[ "$mode" = install ] && exit 0
"$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" "$@"
