"""Executing one notebook the way every harness path does (runner, test command, standalone script): parameters
injected after the cell tagged `parameters` (as papermill does), a fresh kernel in the harness environment, CPU and
wall time measured, the failing cell and its error, and the denylisted warnings found in the outputs.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from . import environment

INJECTED_TAG = "injected-parameters"
CHECK_OUTPUT_MARK = "# NBVAL_CHECK_OUTPUT"


@dataclass
class Execution:
    """What happened when a notebook ran."""

    nb: Any  # the executed notebook (outputs filled in as far as it got)
    status: str  # "ok" or "failed"
    cpu_s: float  # kernel CPU time, its waited-for child processes included
    wall_s: float
    failed_cell: int | None = None  # index in the *source* notebook (the injected cell not counted)
    error: str | None = None  # one line: "AssertionError: ..."
    traceback: str | None = None
    denied: list[str] = field(default_factory=list)  # denylisted warnings found in the outputs
    tolerated: list[str] = field(default_factory=list)  # "cell N: AssertionError: ..." for errors run past

    @property
    def over_budget(self) -> str | None:
        """Why this run broke the time budget, or None."""
        if self.cpu_s > environment.cpu_limit_s():
            return (f"{self.cpu_s:.0f} s of CPU time, over the {environment.BUDGET_S:.0f} s budget by more than "
                    f"{(environment.BUDGET_MARGIN - 1) * 100:.0f}% (limit {environment.cpu_limit_s():.0f} s); "
                    "make the small config smaller without weakening what it proves")
        if self.wall_s > environment.BUDGET_S * environment.WALL_LIMIT_FACTOR:
            return (f"{self.wall_s:.0f} s of wall time for {self.cpu_s:.0f} s of CPU time: the notebook waits instead "
                    f"of computing (limit {environment.BUDGET_S * environment.WALL_LIMIT_FACTOR:.0f} s)")
        return None


def source_text(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def inject_parameters(nb, parameters: dict[str, Any]):
    """A copy of nb with a cell assigning `parameters` right after the cell tagged `parameters` (papermill's way)."""
    nb = copy.deepcopy(nb)
    if not parameters:
        return nb
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{len(tagged)} cells are tagged 'parameters'; exactly one is needed to inject {parameters}")
    for key, value in parameters.items():
        if not key.isidentifier():
            raise ValueError(f"parameter name {key!r} is not a Python identifier")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ValueError(f"parameter {key}={value!r}: only None, bool, int, float and str can be injected")
    cell = nbformat.v4.new_code_cell("# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items()))
    cell.metadata["tags"] = [INJECTED_TAG]
    nb.cells.insert(tagged[0] + 1, cell)
    return nb


def source_index(nb, index: int) -> int:
    """The index a cell of an executed (injected) notebook has in the source notebook."""
    return index - sum(1 for c in nb.cells[:index] if INJECTED_TAG in c.metadata.get("tags", []))


def output_text(cell, streams: tuple[str, ...] = ("stdout", "stderr")) -> str:
    """The text a cell printed: stream outputs of the given names and the text/plain of results and displays."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") in streams:
            parts.append(out.get("text", ""))
        elif out.get("output_type") in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(p if isinstance(p, str) else "".join(p) for p in parts)


def denied_in(nb) -> list[str]:
    """Denylisted warnings in a notebook's outputs, each prefixed with its cell index."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            found += [f"cell {i}: {w}" for w in environment.denied_warnings(output_text(cell))]
    return found


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def flatten_progress_bars(nb) -> None:
    """Replace each tqdm.auto progress bar (a Jupyter widget) with the text of its final state.

    A widget output keeps, as its text fallback, the bar as first drawn ("0%|          | 0/60"): GitHub and any viewer
    without the widget state would show every bar frozen at 0%. The final state is in the widget models that the
    executor stored; the bar becomes plain text, e.g. "train: 100%|██████████| 60/60 [00:02<00:00, 29.1it/s]".
    """
    import html
    import re

    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})

    def model(ref: str) -> dict:
        return state.get(ref.removeprefix("IPY_MODEL_"), {}).get("state", {})

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            box = state.get(view.get("model_id"), {}) if view else {}
            children = box.get("state", {}).get("children", [])
            if box.get("model_name") != "HBoxModel" or len(children) != 3:
                continue
            left, progress, right = (model(ref) for ref in children)
            if "max" not in progress:
                continue
            value, total = progress.get("value", 0), progress["max"]
            filled = round(10 * value / total) if total else 10
            left_text = html.unescape(left.get("value", "")).replace("\u2007", " ")
            right_text = html.unescape(right.get("value", "")).replace("\u2007", " ")
            # a bar closed between redraws keeps the text of its last redraw: rebuild what the numbers say
            left_text = re.sub(r"\s*\d+%$", f" {round(100 * value / total) if total else 100:3d}%", left_text)
            right_text = re.sub(r"^\s*\d+/\d+", f" {value:g}/{total:g}", right_text)
            text = left_text + "|" + "█" * filled + " " * (10 - filled) + "|" + right_text
            out["data"] = {"text/plain": text}


def _cpu_seconds(process) -> float:
    t = process.cpu_times()
    return t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)


def execute(path: Path, parameters: dict[str, Any] | None = None, *, size: str = "small",
            cwd: Path | None = None, timeout: int = environment.CELL_TIMEOUT_S,
            extra_env: dict[str, str] | None = None, tolerate: tuple[str, ...] = ()) -> Execution:
    """Run the notebook at `path` top to bottom in a fresh kernel with `parameters` injected.

    The kernel's working folder is `cwd` (default: the notebook's folder) and its environment is the harness's
    (environment.kernel_env(size), with `extra_env` on top). Never raises for a failing cell: the result says
    where and why. A cell failing with an exception named in `tolerate` (e.g. "AssertionError") is recorded in
    `tolerated` and execution goes on with the next cell.
    """
    import psutil
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    source = nbformat.read(path, as_version=4)
    nb = inject_parameters(source, parameters or {})
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    folder = Path(cwd or path.parent)
    # log_level=ERROR: no "Kernel is running over TCP without encryption" notice per notebook (the kernel listens
    # on 127.0.0.1 only); errors in the notebook still come back as outputs.
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(folder)}})
    status, failed, error, trace, tolerated = "ok", None, None, None, []
    start = time.perf_counter()
    cpu = 0.0
    with client.setup_kernel(env={**environment.kernel_env(size), **(extra_env or {})}):
        kernel = psutil.Process(client.km.provisioner.pid)
        try:
            for index, cell in enumerate(nb.cells):
                failed = index
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as err:
                    if err.ename not in tolerate:
                        raise
                    tolerated.append(f"cell {source_index(nb, index)}: {err.ename}: {err.evalue}")
            failed = None
        except CellExecutionError as err:
            status, error, trace = "failed", f"{err.ename}: {err.evalue}", str(err)
        except CellTimeoutError as err:
            status, error = "failed", f"the cell ran over {timeout} s: {str(err).splitlines()[0]}"
        except DeadKernelError as err:
            status, error = "failed", f"the kernel died: {err}"
        finally:
            try:
                cpu = _cpu_seconds(kernel)
            except psutil.Error:  # the kernel is gone (it died); CPU time is then unknown
                cpu = float("nan")
    wall = time.perf_counter() - start
    client.set_widgets_metadata()  # the widgets' final states, which nbclient stores at the end of execute()
    flatten_progress_bars(nb)
    return Execution(nb=nb, status=status, cpu_s=round(cpu, 1), wall_s=round(wall, 1),
                     failed_cell=None if failed is None else source_index(nb, failed),
                     error=error, traceback=trace, denied=denied_in(nb), tolerated=tolerated)


def checked_output_differences(source, executed) -> list[str]:
    """Cells marked `# NBVAL_CHECK_OUTPUT` whose printed text differs between the committed and the new run."""
    executed_cells = [c for c in executed.cells if INJECTED_TAG not in c.metadata.get("tags", [])]
    problems = []
    for i, (old, new) in enumerate(zip(source.cells, executed_cells, strict=True)):
        if old.cell_type != "code" or CHECK_OUTPUT_MARK not in source_text(old):
            continue
        before, after = output_text(old, ("stdout",)), output_text(new, ("stdout",))
        if before != after:
            problems.append(f"cell {i} printed something other than its committed output "
                            f"(marked {CHECK_OUTPUT_MARK}):\n--- committed\n{before}\n--- now\n{after}")
    return problems
