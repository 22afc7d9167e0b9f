#!/usr/bin/env bash
# Every lesson against Colab's versions (`colab`: constraints/colab.txt, Colab's Python when this machine has it) or
# against the newest releases (`latest`), each in a venv of its own, with the README's test command.
# Usage: bash tools/test_versions.sh colab|latest [pytest arguments]
# torch comes from TORCH_SPEC (default: Colab's 2.11, a CPU build where there is no GPU), never from the constraints
# file. On a machine whose pip cannot reach PyTorch's CPU index, name one it can install: TORCH_SPEC=torch==2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-}
case "$which" in
  colab)
    export VENV=.venv-colab CONSTRAINTS=constraints/colab.txt
    export TORCH_SPEC=${TORCH_SPEC:-torch==2.11.*}
    export PYTHON=${PYTHON:-$(command -v python3.13 || command -v python3)} ;;
  latest)
    export VENV=.venv-latest ;;
  *) echo "usage: $0 colab|latest [pytest arguments]" >&2; exit 2 ;;
esac
bash tools/install.sh
if [ "$which" = latest ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade --upgrade-strategy eager -r requirements.txt
fi
"$VENV/bin/python" -m pip list --format=freeze | grep -iE '^(torch|transformers|tokenizers|datasets|peft|trl|accelerate)=' || true
PY="$VENV/bin/python" bash tools/test.sh "${@:2}"
