#!/usr/bin/env bash
# The test command (`make test`): lint, then one pytest run over the package tests, the static checks and every
# lesson notebook at each seed of roadmap_tools/environment.py's SEEDS (roadmap_tools/pytest_plugin.py: a notebook
# fails on an error, a warning that means wrong results, the time budget, or changed checked outputs).
# Extra pytest arguments pass through: `bash tools/test.sh -k phase01`, `bash tools/test.sh --seeds 0`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
eval "$("$PY" -m roadmap_tools env)"  # the one harness environment: threads, offline flags, backends
echo "== ruff"
"$PY" -m ruff check .
mapfile -t phases < <("$PY" -c 'from roadmap_tools.course import PHASE_DIRS; print("\n".join(PHASE_DIRS))')
echo "== pytest: package tests, static checks, every notebook's small config per seed (2 workers)"
"$PY" -m pytest tests "${phases[@]}" -n 2 --dist load -p no:cacheprovider "$@"
