#!/usr/bin/env bash
# What `make test` does, for the named notebooks only: ruff, their static checks, nbval on a prepared copy.
# Usage: bash tools/test_notebook.sh phase01_foundations/01_math_for_ai.ipynb [...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ $# -ge 1 ] || { echo "usage: $0 NOTEBOOK [...]" >&2; exit 2; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export TQDM_MININTERVAL=5 MPLBACKEND=Agg PYTHONHASHSEED=0 TOKENIZERS_PARALLELISM=false
out=".nbrun-$(echo "$*" | md5sum | cut -c1-8)"
"$PY" -m ruff check "$@"
"$PY" tools/prepare_notebooks.py "$out" "$@"
mapfile -t copies < <(find "$out" -name '*.ipynb' | sort)
filter=$(for nb in "$@"; do printf '%s or ' "$(basename "$nb" .ipynb)"; done)
status=0
"$PY" -m pytest tests/test_static.py -k "${filter% or }" -q -p no:cacheprovider || status=1
"$PY" -m pytest "${copies[@]}" --nbval-lax --nbval-cell-timeout=600 -q -p no:cacheprovider --durations=5 || status=1
rm -rf "$out"
exit $status
