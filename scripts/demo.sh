#!/usr/bin/env bash
# End-to-end demo on a throwaway key, sigstore and local registry: sign an image, prove with skopeo that it is
# accepted and that an unsigned one is rejected. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/atomicsig demo "$@"
