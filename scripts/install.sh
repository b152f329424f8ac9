#!/usr/bin/env bash
# Install atomicsig on a node (docs/install.md): a virtualenv with atomicsig and its dependencies under a prefix,
# /usr/bin/atomicsig, the systemd units, sysusers.d and tmpfiles.d files, sample configs, docs, man pages and
# bash/zsh/fish completion.
#
#   scripts/install.sh [--prefix /opt/atomicsig] [--root DIR] [--wheel FILE] [--python python3]
#                      [--pip-args "ARGS"] [--systemd-compat 239] [--uninstall]
#
#   --prefix DIR          where the virtualenv goes (default /opt/atomicsig); /usr/bin/atomicsig runs it
#   --root DIR            install everything under DIR (image builds, package staging, tests); nothing is
#                         applied to the running system (no users created, no systemctl)
#   --wheel FILE          install this wheel or sdist instead of building one from this checkout
#   --python PY           interpreter for the virtualenv (default python3; must be >= 3.11)
#   --pip-args "ARGS"     extra pip arguments, e.g. "--no-index --find-links /srv/wheels" on an offline node
#   --systemd-compat 239  also install the drop-in that serves the write token without LoadCredential= (systemd
#                         235-246, e.g. RHEL 8); chosen automatically on a live system with systemd < 247
#   --uninstall           remove what this script installed; keeps /etc/atomicsig, the sigstore, state, logs
#                         and the atomicsig user
#
# Running it again upgrades in place (idempotent). Without --root, as root, it then runs systemd-sysusers and
# systemd-tmpfiles for atomicsig and `systemctl daemon-reload`; it never enables or starts a unit.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/atomicsig
ROOT=""
WHEEL=""
PYTHON=python3
PIP_ARGS=""
COMPAT=""
UNINSTALL=0
MARK="# atomicsig launcher written by scripts/install.sh"

die() { echo "install.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=${2:?}; shift 2 ;;
    --root) ROOT=${2:?}; shift 2 ;;
    --wheel) WHEEL=${2:?}; shift 2 ;;
    --python) PYTHON=${2:?}; shift 2 ;;
    --pip-args) PIP_ARGS=${2?}; shift 2 ;;
    --systemd-compat) COMPAT=${2:?}; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
case "$PREFIX" in
  /|/usr|/usr/local|/opt|/etc|/var|/bin|/lib) die "--prefix $PREFIX would mix the virtualenv into the system" ;;
  /*) ;;
  *) die "--prefix must be an absolute path" ;;
esac
PREFIX=${PREFIX%/}
if [ -n "$ROOT" ]; then
  case "$ROOT" in /*) ;; *) ROOT="$PWD/$ROOT" ;; esac
  ROOT=${ROOT%/}
  [ "$ROOT" != "" ] || ROOT=""
fi
[ -z "$COMPAT" ] || [ "$COMPAT" = 239 ] || die "--systemd-compat takes 239 (any systemd 235-246)"
[ -z "$WHEEL" ] || [ -f "$WHEEL" ] || die "--wheel $WHEEL: no such file"

DEST="$ROOT$PREFIX"
BIN="$ROOT/usr/bin/atomicsig"
UNITDIR="$ROOT/usr/lib/systemd/system"
DROPIN="$ROOT/etc/systemd/system/atomicsig-serve.service.d/10-compat-239.conf"
SHARE="$ROOT/usr/share/atomicsig"
DOCDIR="$ROOT/usr/share/doc/atomicsig"
MANDIR="$ROOT/usr/share/man/man1"
live() { [ -z "$ROOT" ] && [ "$(id -u)" -eq 0 ]; }
booted() { live && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

if [ "$UNINSTALL" -eq 1 ]; then
  if booted; then
    systemctl disable --now atomicsig-serve.service atomicsig-sync.service atomicsig-audit.timer 2>/dev/null || true
  fi
  # The prefix is removed only if it is the virtualenv this script made (its marker file is there).
  if [ -f "$DEST/.atomicsig-install" ]; then rm -rf -- "$DEST"; fi
  if [ -f "$BIN" ] && grep -qF "$MARK" "$BIN"; then rm -f -- "$BIN"; fi
  rm -f -- "$UNITDIR/atomicsig-serve.service" "$UNITDIR/atomicsig-sync.service" "$DROPIN" \
    "$UNITDIR/atomicsig-audit.service" "$UNITDIR/atomicsig-audit.timer" \
    "$ROOT/usr/lib/sysusers.d/atomicsig.conf" "$ROOT/usr/lib/tmpfiles.d/atomicsig.conf" \
    "$MANDIR/atomicsig.1" "$MANDIR"/atomicsig-*.1 "$ROOT/usr/share/bash-completion/completions/atomicsig" \
    "$ROOT/usr/share/zsh/site-functions/_atomicsig" "$ROOT/usr/share/fish/vendor_completions.d/atomicsig.fish"
  rmdir -- "$(dirname "$DROPIN")" 2>/dev/null || true
  rm -rf -- "$SHARE" "$DOCDIR"
  if booted; then systemctl daemon-reload; fi
  echo "atomicsig uninstalled from ${ROOT:-/}; kept: /etc/atomicsig, /var/lib/atomic/sigstore, /var/lib/atomicsig," \
       "/var/log/atomicsig and the atomicsig user (userdel atomicsig; rm -r those paths to remove them too)"
  exit 0
fi

# --- the virtualenv ---------------------------------------------------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than Python 3.11"
if ! "$DEST/bin/python" -c 'import sys' 2>/dev/null; then
  mkdir -p "$(dirname "$DEST")"
  "$PYTHON" -m venv --clear "$DEST"
fi
touch "$DEST/.atomicsig-install"
PIP=("$DEST/bin/python" -m pip --disable-pip-version-check --no-input -q)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$WHEEL" ]; then
  # One wheel from the checkout, then the same install path as --wheel (a rerun reinstalls it, deps stay).
  # Built from a copy: setuptools would leave build/ and *.egg-info in the checkout.
  mkdir "$work/src"
  tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./.venv-min --exclude=./build --exclude='*.egg-info' \
      --exclude=__pycache__ -cf - . | tar -C "$work/src" -xf -
  # shellcheck disable=SC2086
  "${PIP[@]}" wheel $PIP_ARGS --no-deps -w "$work" "$work/src" >/dev/null
  WHEEL=$(ls "$work"/atomicsig-*.whl)
fi
# shellcheck disable=SC2086
"${PIP[@]}" install $PIP_ARGS --force-reinstall --no-deps "$WHEEL"
# shellcheck disable=SC2086
"${PIP[@]}" install $PIP_ARGS "$WHEEL"
if [ -n "$ROOT" ]; then
  # A venv records its own absolute path (script shebangs, activate, pyvenv.cfg): make it the final one, so the
  # tree works once copied to / (the interpreter it links to must then exist there too: same distribution).
  grep -rlF -- "$DEST" "$DEST/bin" "$DEST/pyvenv.cfg" 2>/dev/null | while IFS= read -r f; do
    [ -L "$f" ] || sed -i "s|$DEST|$PREFIX|g" "$f"
  done
fi

# --- /usr/bin/atomicsig -----------------------------------------------------------------------------------------
# A launcher, not a symlink to the venv's console script: its shebang names one absolute path, and under --root
# that path does not exist yet. Relative to its own location, the launcher works both in DIR and after the copy.
rel=$(realpath -m --relative-to=/usr/bin "$PREFIX")
mkdir -p "$(dirname "$BIN")"
cat >"$work/atomicsig" <<EOF
#!/bin/sh
$MARK (prefix $PREFIX).
# -I (isolated mode): PYTHONPATH, PYTHONHOME, user site-packages and the working directory cannot change the
# code a root-run daemon imports.
here=\$(dirname "\$(readlink -f "\$0")")
exec "\$here/$rel/bin/python" -I -m atomicsig "\$@"
EOF
install -m 0755 "$work/atomicsig" "$BIN"

# --- systemd units, users, directories --------------------------------------------------------------------------
install -d "$UNITDIR" "$ROOT/usr/lib/sysusers.d" "$ROOT/usr/lib/tmpfiles.d" "$SHARE/systemd" "$SHARE/examples"
install -m 0644 "$SRC/systemd/atomicsig-serve.service" "$SRC/systemd/atomicsig-sync.service" "$UNITDIR/"
install -m 0644 "$SRC/systemd/atomicsig-audit.service" "$SRC/systemd/atomicsig-audit.timer" "$UNITDIR/"
install -m 0644 "$SRC/systemd/atomicsig.sysusers" "$ROOT/usr/lib/sysusers.d/atomicsig.conf"
install -m 0644 "$SRC/systemd/atomicsig.tmpfiles" "$ROOT/usr/lib/tmpfiles.d/atomicsig.conf"
install -m 0644 "$SRC/systemd/compat-239-serve.conf" "$SHARE/systemd/"
if [ -z "$COMPAT" ] && booted; then
  v=$(systemctl --version | awk 'NR==1 {print $2}')
  if [ "${v%%[!0-9]*}" -lt 247 ]; then COMPAT=239; fi
fi
if [ -n "$COMPAT" ]; then
  install -d "$(dirname "$DROPIN")"
  install -m 0644 "$SRC/systemd/compat-239-serve.conf" "$DROPIN"
fi

# --- sample configuration (never overwrites), docs, man pages ---------------------------------------------------
install -d -m 0755 "$ROOT/etc/atomicsig" "$ROOT/etc/atomicsig/keys"
for f in serve.yaml sync.yaml; do
  install -m 0644 "$SRC/packaging/config/$f" "$SHARE/examples/$f"
  [ -e "$ROOT/etc/atomicsig/$f" ] || install -m 0644 "$SRC/packaging/config/$f" "$ROOT/etc/atomicsig/$f"
done
install -d "$DOCDIR" "$MANDIR"
install -m 0644 "$SRC/README.md" "$SRC/SECURITY.md" "$SRC"/docs/*.md "$DOCDIR/"
"$DEST/bin/python" -I "$SRC/scripts/gen-man.py" "$MANDIR"
# Shell completion: click writes the scripts itself (_ATOMICSIG_COMPLETE=<shell>_source); they call atomicsig.
for c in bash:bash-completion/completions/atomicsig zsh:zsh/site-functions/_atomicsig \
         fish:fish/vendor_completions.d/atomicsig.fish; do
  install -d "$(dirname "$ROOT/usr/share/${c#*:}")"
  _ATOMICSIG_COMPLETE="${c%%:*}_source" "$BIN" >"$work/completion"
  install -m 0644 "$work/completion" "$ROOT/usr/share/${c#*:}"
done

if live && command -v systemd-sysusers >/dev/null; then
  systemd-sysusers atomicsig.conf
  systemd-tmpfiles --create atomicsig.conf
  if booted; then systemctl daemon-reload; fi
  echo "atomicsig $("$BIN" --version | awk '{print $NF}') installed in $PREFIX; next: docs/install.md" \
       "(/usr/share/doc/atomicsig/install.md)"
else
  echo "atomicsig installed under ${ROOT:-/} (prefix $PREFIX). On the node, as root:"
  echo "  systemd-sysusers atomicsig.conf && systemd-tmpfiles --create atomicsig.conf && systemctl daemon-reload"
fi
