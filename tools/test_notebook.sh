#!/usr/bin/env bash
# What `make test` does, for the named notebooks only: ruff, their static checks, their runs at every seed.
# Usage: bash tools/test_notebook.sh phase01_foundations/01_math_for_ai.ipynb [...]   (SEEDS=0 for one seed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ $# -ge 1 ] || { echo "usage: $0 NOTEBOOK [...]" >&2; exit 2; }
eval "$("$PY" -m roadmap_tools env)"
"$PY" -m ruff check "$@"
filter=$(for nb in "$@"; do printf '%s or ' "$(basename "$nb" .ipynb)"; done)
seeds=(); [ -n "${SEEDS:-}" ] && seeds=(--seeds "$SEEDS")
"$PY" -m pytest tests/test_static.py "$@" -k "${filter% or }" -n 2 --dist load -q -p no:cacheprovider "${seeds[@]}"
