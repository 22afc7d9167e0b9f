#!/usr/bin/env bash
# Creates .venv and installs the course's requirements into it (idempotent: a stamp file records what was installed).
# On a machine without an NVIDIA GPU it installs a CPU build of torch *first*: a plain `torch` requirement would
# otherwise pull a multi-GB CUDA build. Override the torch spec with TORCH_SPEC=..., the venv with VENV=..., the
# Python with PYTHON=..., and pin versions with CONSTRAINTS=a-pip-constraints-file (tools/test_versions.sh uses these).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.installed"
want="$(cat requirements.txt pyproject.toml ${CONSTRAINTS:-} | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version' 
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[install] NVIDIA GPU found: installing torch from PyPI (CUDA build)"
    "${pip[@]}" "${TORCH_SPEC:-torch}"
  else
    spec=${TORCH_SPEC:-torch==2.13.0}
    echo "[install] no NVIDIA GPU: installing a CPU build of torch ($spec)"
    # A CPU wheel on local disk (pip's find-links) first, its dependencies from the usual index;
    # else PyTorch's official CPU index.
    if "${pip[@]}" --no-index --no-deps "$spec" 2>/dev/null; then
      "${pip[@]}" "$spec"
    else
      "${pip[@]}" --timeout 30 --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple "$spec"
    fi
  fi
fi
echo "[install] installing requirements.txt: the course package with its extras (a few minutes the first time)"
constraints=()
if [ -n "${CONSTRAINTS:-}" ]; then
  # torch was chosen above (a CPU build on a CPU machine): a torch pin in the constraints would swap it for a CUDA build
  grep -viE '^[[:space:]]*torch[[:space:]]*([=<>!~]|$)' "$CONSTRAINTS" > "$VENV/constraints.txt"
  constraints=(-c "$VENV/constraints.txt")
fi
"${pip[@]}" -r requirements.txt "${constraints[@]}"
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
echo "$want" > "$STAMP"
echo "[install] done: $("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)')"
