#!/usr/bin/env bash
# Creates .venv-site, the course website's environment, from pyproject.toml's `site` dependency group (PEP 735; pip
# installs groups from 25.1 on, so the venv's pip is brought to that first). Separate from .venv: the lessons'
# install never carries the website's tools. Idempotent: a stamp file records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-site
PY=${PYTHON:-python3}
STAMP="$VENV/.installed"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "pip>=25.1"
echo "[site] installing pyproject.toml's site dependency group into $VENV"
"${pip[@]}" --group site
echo "$want" > "$STAMP"
