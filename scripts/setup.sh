#!/usr/bin/env bash
# Install everything atomicsig's demo and tests need on a fresh Debian 12 machine (idempotent).
#   Debian: gnupg, skopeo, podman, docker-registry, nginx-light, apache2-utils (htpasswd), rsync (bench peer),
#           systemd (systemd-analyze/-sysusers/-tmpfiles), rpm (rpmbuild), groff-base (man pages): tests/test_install.py
#   Python: a virtualenv in .venv with atomicsig and its test tools
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in gnupg skopeo podman docker-registry nginx-light apache2-utils uidmap rsync systemd rpm groff-base man-db; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Debian package starts a registry on :5000 through its init script on some systems; we start our own.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# pip takes 10-40 s even when everything is installed (it rebuilds the editable install): skip it while the
# files that name the dependencies are unchanged since the last successful install (the developer loop).
stamp=$(cat setup.cfg setup.py pyproject.toml | sha256sum | cut -c1-64)
if [ "$(cat .venv/.atomicsig-setup 2>/dev/null)" = "$stamp" ] && .venv/bin/python -c "import atomicsig, xdist" 2>/dev/null; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
log=$(mktemp)
if ! .venv/bin/python -m pip install -q -e '.[test]' >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; echo "setup: pip install failed" >&2; exit 1
fi
rm -f "$log"
echo "$stamp" >.venv/.atomicsig-setup
