"""Executing lessons: papermill runs with a summary, and in-place refreshes of the committed outputs."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from .lessons import Lesson
from .report import results_from_notebook

CELL_TIMEOUT_S = 900  # against runaway cells; a small config takes well under a minute in all


@dataclass
class RunResult:
    """What happened to one notebook."""

    notebook: str
    status: str  # "ok" or "failed"
    seconds: float
    results: dict[str, Any] = field(default_factory=dict)
    failed_cell: int | None = None
    error: str | None = None
    output: str | None = None


def _error_of(err: Exception) -> tuple[int | None, str]:
    """The failing cell's index and a one-line error, from papermill's or nbclient's exception."""
    cell = getattr(err, "cell_index", None)
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename:
        return cell, f"{ename}: {evalue}"
    text = str(err).strip().splitlines()
    return cell, (text[-1] if text else type(err).__name__)


def _failed_cell_index(nb) -> int | None:
    for i, cell in enumerate(nb.cells):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return i
    return None


def run_lesson(root: Path, lesson: Lesson, size: str, params: dict[str, Any], out_dir: Path) -> RunResult:
    """Execute one notebook with papermill into out_dir, injecting SIZE and params."""
    import papermill as pm

    src = root / lesson.path
    dst = out_dir / lesson.path
    dst.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(src), str(dst), parameters={"SIZE": size, **params}, kernel_name="python3",
                            cwd=str(src.parent), progress_bar=False, execution_timeout=CELL_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - one failing notebook must not stop the others; recorded below
        seconds = time.perf_counter() - start
        cell, message = _error_of(err)
        if dst.exists():
            nb = nbformat.read(dst, as_version=4)
            # papermill inserts a banner cell and the injected-parameters cell; report the source notebook's index
            found = _failed_cell_index(nb)
            if found is not None:
                extra = sum(1 for c in nb.cells[:found] if "injected-parameters" in c.metadata.get("tags", [])
                            or "papermill-error-cell-tag" in c.metadata.get("tags", []))
                cell = found - extra
        return RunResult(lesson.path, "failed", round(seconds, 1), failed_cell=cell, error=message, output=str(dst))
    seconds = time.perf_counter() - start
    results = results_from_notebook(nbformat.read(dst, as_version=4))
    return RunResult(lesson.path, "ok", round(seconds, 1), results=results, output=str(dst))


def refresh_inplace(root: Path, lesson: Lesson) -> RunResult:
    """Re-execute a notebook top to bottom in a fresh kernel, small config, and save its outputs in place."""
    from nbclient import NotebookClient

    path = root / lesson.path
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    old = os.environ.get("LLM_ROADMAP_SIZE")
    os.environ["LLM_ROADMAP_SIZE"] = "small"  # SIZE="auto" resolves to small even on a GPU machine
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", store_widget_state=False,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as err:  # noqa: BLE001 - reported; the notebook on disk is left as it was
        cell, message = _error_of(err)
        return RunResult(lesson.path, "failed", round(time.perf_counter() - start, 1),
                         failed_cell=_failed_cell_index(nb) if cell is None else cell, error=message)
    finally:
        if old is None:
            os.environ.pop("LLM_ROADMAP_SIZE", None)
        else:
            os.environ["LLM_ROADMAP_SIZE"] = old
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    return RunResult(lesson.path, "ok", round(seconds, 1), results=results_from_notebook(nb), output=str(path))


def summary_markdown(results: list[RunResult], size: str) -> str:
    """The run's summary as Markdown: one row per notebook, then each failure's cell and error."""
    ok = sum(r.status == "ok" for r in results)
    lines = [f"# Run summary ({size} config): {ok} of {len(results)} notebooks ran", "",
             "| notebook | status | seconds | results |", "|---|---|---|---|"]
    for r in results:
        shown = ", ".join(f"{k}={v}" for k, v in list(r.results.items())[:6])
        lines.append(f"| {r.notebook} | {r.status} | {r.seconds} | {shown} |")
    failures = [r for r in results if r.status != "ok"]
    if failures:
        lines += ["", "## Failures"]
        lines += [f"- `{r.notebook}`, cell {r.failed_cell}: {r.error} (executed copy: {r.output})" for r in failures]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, results: list[RunResult], size: str) -> Path:
    """Write summary.json and summary.md into out_dir; return the Markdown file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"size": size, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "notebooks": [asdict(r) for r in results]}
    (out_dir / "summary.json").write_text(json.dumps(payload, indent=2))
    md = out_dir / "summary.md"
    md.write_text(summary_markdown(results, size))
    return md
