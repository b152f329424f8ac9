#!/usr/bin/env bash
# Run the whole test suite (lint, types, unit, real-tool interop, slow end-to-end) on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
echo "== ruff"; ruff check atomicsig tests bench
echo "== mypy"; mypy
echo "== pytest"; python -m pytest -q -p no:cacheprovider "$@"
