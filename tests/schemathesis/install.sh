#!/usr/bin/env bash
# Installs the pinned schemathesis into a virtualenv under the user's cache and prints the
# path of its `st` command. Idempotent: when that venv already holds this version (and these
# constraints), it only prints the path.
#
#   ST="$(tests/schemathesis/install.sh)"
#
# Needs Python >= 3.11 with venv (Debian/Ubuntu: python3 and python3-venv, installed with
# apt-get here when missing) and access to PyPI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

SCHEMATHESIS_VERSION=4.32.5
constraints="$here/constraints.txt"

log() { echo "schemathesis install: $*" >&2; }

# A Python new enough for this schemathesis (it needs >= 3.11) that can make a venv with pip.
find_python() {
  local py
  for py in python3 python3.13 python3.12 python3.11; do
    if command -v "$py" >/dev/null 2>&1 &&
      "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$py"
      return 0
    fi
  done
  return 1
}

if ! python="$(find_python)"; then
  log "no Python >= 3.11 with venv found; installing Debian's python3 and python3-venv"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  $sudo apt-get update >&2
  $sudo apt-get install -y --no-install-recommends python3 python3-venv >&2
  if ! python="$(find_python)"; then
    log "still no Python >= 3.11 with venv (schemathesis $SCHEMATHESIS_VERSION needs one)"
    exit 1
  fi
fi

py_version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/epicenter-server/schemathesis-$SCHEMATHESIS_VERSION-py$py_version"
# What the venv was built from: a different pin or constraints file means a rebuild.
stamp="schemathesis==$SCHEMATHESIS_VERSION $(cksum <"$constraints")"

if [ -x "$venv/bin/st" ] && [ "$(cat "$venv/.installed" 2>/dev/null)" = "$stamp" ]; then
  echo "$venv/bin/st"
  exit 0
fi

log "installing schemathesis $SCHEMATHESIS_VERSION into $venv (Python $py_version)"
rm -rf "$venv"
"$python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  -c "$constraints" "schemathesis==$SCHEMATHESIS_VERSION" >&2
"$venv/bin/st" --version >&2
echo "$stamp" >"$venv/.installed"
echo "$venv/bin/st"
