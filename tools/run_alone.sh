#!/usr/bin/env bash
# What Colab does: copy each named notebook ALONE into an empty folder, install the course package from the
# repository's git history (as the Colab setup cell does from GitHub) into a private folder, and execute the
# notebook there in the small config, in the harness environment. Fails if a notebook needs a file that only a
# clone has. Usage: bash tools/run_alone.sh NOTEBOOK [...]   (REF=commit-ish to install, default HEAD)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip install --quiet --no-deps --target "$work/site" "git+file://$(pwd)@$(git rev-parse "${REF:-HEAD}")"
"$PY" - "$work" "$@" <<'PYTHON'
import shutil
import subprocess
import sys
from pathlib import Path

from roadmap_tools.environment import kernel_env
from roadmap_tools.execute import execute

work, notebooks = Path(sys.argv[1]), sys.argv[2:]
site = {"PYTHONPATH": str(work / "site")}
where = subprocess.run([sys.executable, "-c", "import llm_roadmap; print(llm_roadmap.__file__)"], cwd=work,
                       env={**kernel_env(), **site}, capture_output=True, text=True, check=True).stdout
assert where.startswith(str(work / "site")), f"the kernel would import the checkout's package: {where}"
status = 0
for nb in notebooks:
    alone = work / Path(nb).stem
    alone.mkdir()
    shutil.copy(nb, alone)
    run = execute(alone / Path(nb).name, {"SIZE": "small"}, extra_env=site)
    if run.status == "ok" and not run.denied:
        print(f"ran alone: {nb} ({run.cpu_s} s CPU, {run.wall_s} s wall)")
    else:
        print(f"FAILED alone: {nb}: cell {run.failed_cell}: {run.error or run.denied}")
        status = 1
sys.exit(status)
PYTHON
