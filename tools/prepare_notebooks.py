"""Copy lesson notebooks into OUT_DIR with papermill's small-config parameters injected (not executed).

Usage: prepare_notebooks.py OUT_DIR [NOTEBOOK ...]   (all lesson notebooks when none is named)
"""

from __future__ import annotations

import shutil
import sys

import papermill as pm

from llm_roadmap.lessons import notebooks_on_disk, repo_root


def main(out_dir: str, only: list[str]) -> None:
    root = repo_root()
    out = root / out_dir
    shutil.rmtree(out, ignore_errors=True)
    chosen = [str((root / p).resolve().relative_to(root)) for p in only] if only else notebooks_on_disk(root)
    for rel in chosen:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        # prepare_only keeps the committed outputs, so nbval can compare the # NBVAL_CHECK_OUTPUT cells.
        pm.execute_notebook(str(root / rel), str(dst), parameters={"SIZE": "small"}, prepare_only=True,
                            kernel_name="python3", progress_bar=False, log_output=False)
    print(f"prepared {len(chosen)} notebooks in {out_dir}/")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".nbrun", sys.argv[2:])
