#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine, idempotently:
# Debian packages (Java 17, Maven, Redis, Prometheus), the virtual environment and the Kafka broker jars.
# The virtual environment uses Python 3.13 or 3.12, the first found ($PYTHON names an interpreter;
# $PYTHON_VERSIONS narrows the versions, e.g. PYTHON_VERSIONS=3.12 VENV=.venv-3.12). Exit 3: no such Python.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SUPPORTED=${PYTHON_VERSIONS:-3.13 3.12}

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Prints "X.Y" when $1 is a working interpreter of a supported version (a pyenv shim for a version that is
# installed but not selected fails here, as it does for the user).
version_of() {
  local v
  v=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || return 1
  [[ " $SUPPORTED " == *" $v "* ]] && echo "$v"
}

find_python() {
  if [ -n "${PYTHON:-}" ]; then
    version_of "$PYTHON" >/dev/null && { echo "$PYTHON"; return; }
    echo "setup: PYTHON=$PYTHON is not Python ${SUPPORTED// / or }" >&2; return 1
  fi
  local v candidate
  for v in $SUPPORTED; do
    for candidate in "python$v" "/usr/bin/python$v" "/usr/local/bin/python$v" \
        ${PYENV_ROOT:-$HOME/.pyenv}/versions/"$v".*/bin/"python$v"; do
      if command -v "$candidate" >/dev/null 2>&1 && version_of "$candidate" >/dev/null; then
        command -v "$candidate"; return
      fi
    done
  done
  candidate=$(command -v python3 || true)
  if [ -n "$candidate" ] && version_of "$candidate" >/dev/null; then echo "$candidate"; return; fi
  echo "setup: fraud-monitor needs Python ${SUPPORTED// / or }, and none was found." >&2
  echo "setup: install one (Debian 13: apt-get install python3 python3-venv; Ubuntu 24.04: apt-get install" \
       "python3.12-venv; or pyenv install 3.13), or point PYTHON at it, then run make setup again." >&2
  return 1
}

# A virtual environment of another Python version can never install: rebuild it.
if [ -e "$VENV" ] && ! version_of "$VENV/bin/python" >/dev/null; then
  echo "setup: $VENV is not Python ${SUPPORTED// / or }; rebuilding it"
  rm -rf "$VENV"
fi

stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    python=$(find_python) || exit 3
    echo "setup: creating $VENV with $python ($(version_of "$python"))"
    "$python" -m venv "$VENV"
  fi
  echo "setup: installing Python packages into $VENV (the first time takes a few minutes; log: $VENV/setup.log)"
  if ! { "$VENV/bin/pip" install --upgrade pip && "$VENV/bin/pip" install -e ".[dev]"; } >"$VENV/setup.log" 2>&1; then
    tail -n 25 "$VENV/setup.log" >&2
    echo "setup: pip failed; the whole log is $VENV/setup.log" >&2
    exit 1
  fi
  rm -f "$VENV"/.installed-*
  touch "$stamp"
  echo "setup: installed ($("$VENV/bin/python" --version))"
fi

"$VENV/bin/fraudmon" stack install
