#!/usr/bin/env bash
# What Colab does: copy each named notebook ALONE into an empty folder, install the course package from the
# repository's git history (as the Colab setup cell does from GitHub) into a private folder, and execute the
# notebook there in the small config. Fails if a notebook needs a file that only a clone has.
# Usage: bash tools/run_alone.sh NOTEBOOK [...]   (REF=commit-ish to install, default HEAD)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip install --quiet --no-deps --target "$work/site" "git+file://$root@$(git rev-parse "${REF:-HEAD}")"
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg TQDM_MININTERVAL=5 PYTHONPATH="$work/site"
status=0
for nb in "$@"; do
  alone="$work/$(basename "$nb" .ipynb)"
  mkdir -p "$alone"
  cp "$nb" "$alone/"
  # -I-like isolation: the kernel must import llm_roadmap from $work/site, not from this checkout
  if (cd "$alone" && "$root/$PY" -c "
import llm_roadmap, sys
assert llm_roadmap.__file__.startswith('$work/site'), llm_roadmap.__file__
import papermill as pm
pm.execute_notebook('$(basename "$nb")', 'executed.ipynb', parameters={'SIZE': 'small'}, kernel_name='python3',
                    progress_bar=False, cwd='.')
"); then echo "ran alone: $nb"; else echo "FAILED alone: $nb"; status=1; fi
done
exit $status
