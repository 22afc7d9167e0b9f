"""Running lessons from the command line: executed copies with a merged summary, and in-place refreshes of the
committed outputs (which also write the measured runtime into the notebook's metadata and header)."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from llm_roadmap.report import results_from_notebook

from . import environment
from .execute import Execution, execute
from .lessons import Lesson

# The header's runtime phrase, e.g. "small config ~25 s on a 2-core CPU": the number is written by a refresh.
RUNTIME_PHRASE = re.compile(r"small config ~?(?:[0-9]+(?:-[0-9]+)?|N) s on a 2-core CPU")
METADATA_KEY = "llm_roadmap"


@dataclass
class RunResult:
    """What happened to one notebook."""

    notebook: str
    status: str  # "ok" or "failed"
    seconds: float  # wall time
    cpu_seconds: float = 0.0  # kernel CPU time, child processes included
    params: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    failed_cell: int | None = None
    error: str | None = None
    output: str | None = None
    finished: str = ""


def _result(lesson: Lesson, run: Execution, params: dict[str, Any], output: str | None) -> RunResult:
    error, status = run.error, run.status
    if status == "ok" and run.denied:
        status, error = "failed", "a warning that means wrong results: " + run.denied[0]
    return RunResult(lesson.path, status, run.wall_s, run.cpu_s, params, results_from_notebook(run.nb),
                     run.failed_cell, error, output, time.strftime("%Y-%m-%d %H:%M:%S"))


def run_lesson(root: Path, lesson: Lesson, size: str, params: dict[str, Any], out_dir: Path) -> RunResult:
    """Execute one notebook with SIZE and params injected; the executed copy goes to out_dir/<path>."""
    src = root / lesson.path
    run = execute(src, {"SIZE": size, **params}, size=size)
    dst = out_dir / lesson.path
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(run.nb, dst)
    return _result(lesson, run, params, str(dst))


def runtime_metadata(run: Execution) -> dict[str, Any]:
    """What a refresh records about the run that made the committed outputs."""
    import platform

    return {"small_cpu_s": run.cpu_s, "small_wall_s": run.wall_s, "measured": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {_cpu_count()} cores"}


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def header_seconds(cpu_s: float) -> int:
    """The runtime a header states for a measured CPU time: rounded up to 5 s."""
    return max(5, int(math.ceil(cpu_s / 5.0) * 5))


def with_runtime(header: str, cpu_s: float) -> str:
    """The header with its small-config runtime phrase set from the measurement."""
    if not RUNTIME_PHRASE.search(header):
        raise ValueError("the header lacks the phrase 'small config ~N s on a 2-core CPU' for the measured runtime")
    return RUNTIME_PHRASE.sub(f"small config ~{header_seconds(cpu_s)} s on a 2-core CPU", header, count=1)


def refresh_inplace(root: Path, lesson: Lesson) -> RunResult:
    """Re-execute a notebook top to bottom in a fresh kernel (small config, default parameters) and save its
    outputs in place, with the measured runtime in its metadata and header. A failing run, or one whose outputs
    hold a warning that means wrong results, leaves the notebook on disk as it was."""
    path = root / lesson.path
    # no injected cell (the committed notebook must not hold one): SIZE="auto" resolves to small through this
    run = execute(path, {}, size="small", extra_env={"LLM_ROADMAP_SIZE": "small"})
    result = _result(lesson, run, {}, str(path))
    if result.status != "ok":
        return result
    nb = run.nb
    nb.metadata[METADATA_KEY] = runtime_metadata(run)
    nb.cells[0].source = with_runtime(nb.cells[0].source, run.cpu_s)
    nbformat.write(nb, path)
    return result


def summary_markdown(results: list[RunResult], size: str) -> str:
    """The run's summary as Markdown: one row per notebook, then each failure's cell and error."""
    ok = sum(r.status == "ok" for r in results)
    lines = [f"# Run summary ({size} config): {ok} of {len(results)} notebooks ran",
             f"(time budget: {environment.BUDGET_S:.0f} s of CPU time per notebook in the small config)", "",
             "| notebook | status | CPU s | wall s | parameters | finished | results |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        shown = ", ".join(f"{k}={v}" for k, v in list(r.results.items())[:6])
        params = ", ".join(f"{k}={v}" for k, v in r.params.items())
        lines.append(f"| {r.notebook} | {r.status} | {r.cpu_seconds} | {r.seconds} | {params} | {r.finished} "
                     f"| {shown} |")
    failures = [r for r in results if r.status != "ok"]
    if failures:
        lines += ["", "## Failures"]
        lines += [f"- `{r.notebook}`, cell {r.failed_cell}: {r.error} (executed copy: {r.output})" for r in failures]
    return "\n".join(lines) + "\n"


def merged(out_dir: Path, results: list[RunResult]) -> list[RunResult]:
    """The summary's rows after this run: earlier rows of notebooks not run now are kept, in course order."""
    previous: dict[str, RunResult] = {}
    summary = out_dir / "summary.json"
    if summary.exists():
        try:
            rows = json.loads(summary.read_text())["notebooks"]
            known = set(RunResult.__dataclass_fields__)
            previous = {row["notebook"]: RunResult(**{k: v for k, v in row.items() if k in known}) for row in rows}
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{summary} is not a summary this runner wrote ({err}); delete it and run again") from err
    previous.update({r.notebook: r for r in results})
    return list(previous.values())


def write_summary(out_dir: Path, results: list[RunResult], size: str, order: list[str]) -> Path:
    """Merge this run's results into out_dir/summary.{json,md}; return the Markdown file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rank = {path: i for i, path in enumerate(order)}
    rows = sorted(merged(out_dir, results), key=lambda r: rank.get(r.notebook, len(rank)))
    payload = {"size": size, "updated": time.strftime("%Y-%m-%d %H:%M:%S"), "notebooks": [asdict(r) for r in rows]}
    (out_dir / "summary.json").write_text(json.dumps(payload, indent=2))
    md = out_dir / "summary.md"
    md.write_text(summary_markdown(rows, size))
    return md
