#!/usr/bin/env bash
# The test command (`make test`): lint, then one pytest run over the package tests, the static checks and every
# notebook. Notebooks run as papermill-prepared copies (SIZE="small" injected) in .nbrun/, executed by nbval.
# Extra pytest arguments pass through: `bash tools/test.sh -k phase01`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TQDM_MININTERVAL=5 MPLBACKEND=Agg PYTHONHASHSEED=0
export TOKENIZERS_PARALLELISM=false
echo "== ruff"
"$PY" -m ruff check .
echo "== preparing notebooks (papermill --prepare-only, SIZE='small') into .nbrun/"
"$PY" tools/prepare_notebooks.py .nbrun
mapfile -t notebooks < <(find .nbrun -name '*.ipynb' | sort)
echo "== pytest: package, static checks, ${#notebooks[@]} notebooks (nbval-lax, 2 workers, one notebook per worker)"
"$PY" -m pytest tests "${notebooks[@]}" --nbval-lax --nbval-cell-timeout=600 -n 2 --dist loadfile \
  -p no:cacheprovider "$@"
