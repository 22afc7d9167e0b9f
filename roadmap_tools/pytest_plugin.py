"""pytest collects each lesson notebook as one test per seed: `phase01_foundations/01_math_for_ai.ipynb::seed1`.

Each test executes the notebook's small config in a fresh kernel (roadmap_tools.execute, the runner's own code) in
an empty working folder, as Colab would, and fails when
- a cell raises (the message names the cell and the error),
- an output holds a warning that means wrong results (environment.DENYLIST),
- the run breaks the time budget (environment.BUDGET_S of CPU time, plus the margin),
- for the first seed, which made the committed outputs: a cell marked `# NBVAL_CHECK_OUTPUT` prints otherwise.

A further test per notebook, `::full`, runs its FULL code path on the CPU against the stand-in hub
(roadmap_tools/standin_hub.py: tiny models and data sets under the real ids) with the full config's integers capped
at the small config's (llm_roadmap.config.pick_config, LLM_ROADMAP_CAPPED=1). It fails on any error except a failed
assert (a claim measured on tiny random stand-ins means nothing; those are listed, and the run goes on), on a
denylisted warning, and on the time budget. It catches what only the full path has: a wrong column, a hub id, a
dtype switch that fails on the device, a code path nobody ran.
At the end it prints every run's CPU and wall time and the CI time projected for the full course.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import nbformat
import pytest

from . import course, environment, standin_hub
from .execute import checked_output_differences, execute

PLANNED_NOTEBOOKS = 42  # the course once phase 10 lands: 20 (phases 1-4) + 9 + 6 + 3 + 4 capstones (CI-time projection)


def pytest_addoption(parser):
    group = parser.getgroup("notebooks")
    group.addoption("--seeds", default=",".join(map(str, environment.SEEDS)),
                    help="seeds to run each notebook's small config with (first one: compare committed outputs)")
    group.addoption("--no-full-path", action="store_true",
                    help="skip the full code path runs against the stand-in hub")


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix == ".ipynb" and file_path.parent.name in course.PHASE_DIRS:
        return NotebookFile.from_parent(parent, path=file_path)
    return None


class NotebookFailure(Exception):
    """A notebook run that broke one of the harness's rules; the message says which and where."""


class NotebookFile(pytest.File):
    def collect(self):
        seeds = [int(s) for s in self.config.getoption("seeds").split(",") if s.strip()]
        for seed in seeds:
            yield NotebookRun.from_parent(self, name=f"seed{seed}", seed=seed, compare=(seed == environment.SEEDS[0]))
        if not self.config.getoption("no_full_path"):
            yield FullPathRun.from_parent(self, name="full")


class _NotebookItem(pytest.Item):
    """One execution of a notebook; subclasses say how it runs and what else fails it."""

    label = ""

    def judge(self, run, seed, failed: str, extra: list[str]) -> None:
        """Record the run's times and fail it on an error, a denylisted warning, the budget or `extra`."""
        self.user_properties.append(("notebook_run", {"notebook": self.nodeid.split("::")[0], "seed": seed,
                                                      "cpu_s": run.cpu_s, "wall_s": run.wall_s,
                                                      "status": run.status}))
        problems = []
        if run.status != "ok":
            problems.append(f"{failed} at cell {run.failed_cell}: {run.error}\n\n" + _plain(run.traceback or ""))
        if run.denied:
            problems.append("warnings that mean wrong results (fix the lesson, do not filter them):\n  "
                            + "\n  ".join(run.denied))
        if run.status == "ok" and run.over_budget:
            problems.append(f"over the time budget: {run.over_budget}")
        if run.status == "ok":
            problems += extra
        if problems:
            raise NotebookFailure("\n\n".join(problems))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, NotebookFailure):
            return f"{self.nodeid}:\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"{self.path.name} [{self.label}]"


class NotebookRun(_NotebookItem):
    def __init__(self, *, seed: int, compare: bool, **kwargs):
        super().__init__(**kwargs)
        self.seed, self.compare, self.label = seed, compare, f"SEED={seed}"

    def runtest(self):
        with tempfile.TemporaryDirectory(prefix="nbrun-") as folder:
            run = execute(self.path, {"SIZE": "small", "SEED": self.seed}, size="small", cwd=Path(folder))
        compared = checked_output_differences(nbformat.read(self.path, as_version=4), run.nb) if (
            self.compare and run.status == "ok") else []
        self.judge(run, self.seed, f"failed with SEED={self.seed}", compared)


def _standin_folder(config) -> Path:
    """The stand-in hub, built once per checkout (a file lock keeps parallel workers from building it twice)."""
    import fcntl

    folder = Path(os.environ.get("ROADMAP_STANDIN_FOLDER") or Path(config.rootpath) / standin_hub.DEFAULT_FOLDER)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(str(folder) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        standin_hub.build(folder)
    return folder


class FullPathRun(_NotebookItem):
    label = "full path, stand-in hub"

    def runtest(self):
        env = {**standin_hub.environment(_standin_folder(self.config)), "LLM_ROADMAP_CAPPED": "1",
               "CUDA_VISIBLE_DEVICES": ""}
        with tempfile.TemporaryDirectory(prefix="nbfull-") as folder:
            run = execute(self.path, {"SIZE": "full", "SEED": 0}, size="small", cwd=Path(folder), extra_env=env,
                          tolerate=("AssertionError",))
        if run.tolerated:
            self.user_properties.append(("claims_not_tested", run.tolerated))
        self.judge(run, "full", "the FULL code path (stand-in hub, capped sizes) failed", [])


def _plain(text: str) -> str:
    """A traceback without terminal colour codes."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


_runs: list[dict] = []
_untested: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if report.when == "call":
        _runs.extend(value for key, value in report.user_properties if key == "notebook_run")
        _untested.extend((report.nodeid, claim) for key, value in report.user_properties
                         if key == "claims_not_tested" for claim in value)


def pytest_terminal_summary(terminalreporter, config):
    if not _runs:
        return
    write = terminalreporter.write_line
    terminalreporter.section("notebook runs: CPU and wall seconds, slowest first")
    limit = environment.cpu_limit_s()
    for run in sorted(_runs, key=lambda r: -(r["cpu_s"] if r["cpu_s"] == r["cpu_s"] else 0)):
        flag = "OVER BUDGET" if run["cpu_s"] > limit else ""
        write(f"{run['cpu_s']:7.1f} {run['wall_s']:7.1f}  {run['status']:<6} {run['notebook']} "
              f"[{'full path' if run['seed'] == 'full' else 'SEED=' + str(run['seed'])}] {flag}")
    if _untested:
        terminalreporter.section("full paths: asserts that failed on the stand-ins (claims need the real data)")
        for nodeid, claim in _untested:
            write(f"{nodeid}  {claim[:150]}")
    notebooks = {r["notebook"] for r in _runs}
    per_notebook = len({r["seed"] for r in _runs})  # the seeds, and the full path
    mean_wall = sum(r["wall_s"] for r in _runs) / len(_runs)
    mean_cpu = sum(r["cpu_s"] for r in _runs if r["cpu_s"] == r["cpu_s"]) / len(_runs)
    workers = max(1, getattr(config.option, "numprocesses", None) or 1) if hasattr(config.option, "dist") else 1
    # one thread per run: on an idle machine with a core per worker, a run's wall time is about its CPU time plus
    # the kernel's start; the wall times measured here include whatever else this machine was doing
    projected = (mean_cpu + 2.0) * PLANNED_NOTEBOOKS * per_notebook / workers / 60
    write(f"{len(_runs)} runs of {len(notebooks)} notebooks; mean {mean_cpu:.1f} s CPU and {mean_wall:.1f} s wall per "
          f"run; projected for {PLANNED_NOTEBOOKS} notebooks x {per_notebook} runs on {workers} idle core(s): "
          f"~{projected:.0f} min")
    out = Path(config.rootpath) / "runs" / "test"
    out.mkdir(parents=True, exist_ok=True)
    (out / "notebook_times.json").write_text(json.dumps(sorted(_runs, key=lambda r: (r["notebook"], str(r["seed"]))),
                                                        indent=1))
