"""The harness itself: execution and its measurements, the time budget, seeds, the warning denylist, the runner's
summary, the one execution environment. Each test builds a throw-away course (tests/test_package.py's fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from roadmap_tools import checks, environment
from roadmap_tools.execute import execute, inject_parameters
from roadmap_tools.pytest_plugin import PLANNED_NOTEBOOKS
from roadmap_tools.runner import METADATA_KEY, RUNTIME_PHRASE

ROOT = Path(__file__).resolve().parents[1]
BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 2.5:\n    pass"


def _notebook(tmp_path: Path, *bodies: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('SIZE = "auto"\nSEED = 0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(b) for b in bodies)]
    path = tmp_path / "demo.ipynb"
    nbformat.write(nb, path)
    return path


# --- execution ----------------------------------------------------------------------------------------------------
def test_execute_measures_cpu_not_waiting(tmp_path):
    busy = execute(_notebook(tmp_path, BUSY), {"SEED": 1})
    assert busy.status == "ok" and busy.cpu_s >= 2.5, busy
    idle = execute(_notebook(tmp_path, "import time\ntime.sleep(2.5)"), {"SEED": 1})
    assert idle.status == "ok" and idle.wall_s >= 2.5 and idle.cpu_s < busy.cpu_s - 1.5, (idle, busy)


def test_execute_counts_child_processes(tmp_path):
    child = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {BUSY!r}], check=True)"
    run = execute(_notebook(tmp_path, child), {})
    assert run.status == "ok" and run.cpu_s >= 2.5, run


def test_execute_names_the_failing_source_cell(tmp_path):
    run = execute(_notebook(tmp_path, "x = SEED", "assert x != 3, 'seed three breaks it'"), {"SEED": 3})
    assert run.status == "failed" and run.failed_cell == 2, "the injected cell must not shift the index"
    assert run.error == "AssertionError: seed three breaks it"
    assert execute(_notebook(tmp_path, "x = SEED", "assert x != 3"), {"SEED": 4}).status == "ok"


def test_execute_finds_denylisted_warnings(tmp_path):
    body = "import warnings\nwarnings.warn('This may lead to silently incorrect behavior.')"
    run = execute(_notebook(tmp_path, body), {})
    assert run.status == "ok" and run.denied and "silently incorrect" in run.denied[0]
    harmless = execute(_notebook(tmp_path, "import warnings\nwarnings.warn('a deprecated argument')"), {})
    assert harmless.denied == []


def test_kernel_gets_the_harness_environment(tmp_path):
    body = "import os\nprint(os.environ['OMP_NUM_THREADS'], os.environ['HF_HUB_OFFLINE'], os.environ['MPLBACKEND'])"
    run = execute(_notebook(tmp_path, body), {})
    assert run.nb.cells[-1].outputs[0]["text"].split() == ["1", "1", "module://matplotlib_inline.backend_inline"]


def test_figures_reach_the_outputs_even_from_an_agg_shell(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # what `eval "$(python -m roadmap_tools env)"` exports for the tests
    run = execute(_notebook(tmp_path, "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"), {})
    assert any("image/png" in o.get("data", {}) for o in run.nb.cells[-1].outputs), run.nb.cells[-1].outputs


def test_inject_parameters_rejects_what_it_cannot_write(tmp_path):
    nb = nbformat.read(_notebook(tmp_path), as_version=4)
    assert "SEED = 2" in inject_parameters(nb, {"SEED": 2}).cells[1].source
    with pytest.raises(ValueError, match="only None, bool"):
        inject_parameters(nb, {"X": [1, 2]})
    nb.cells[0].metadata["tags"] = []
    with pytest.raises(ValueError, match="0 cells are tagged"):
        inject_parameters(nb, {"SEED": 2})


def test_one_execution_environment():
    """Thread, offline and backend settings are written in roadmap_tools/environment.py and nowhere else."""
    settings = [*environment.COMMON, *environment.SMALL, "MPLBACKEND"]
    scripts = [*ROOT.glob("tools/*.sh"), ROOT / "Makefile", ROOT / ".ci" / "run", *ROOT.glob(".github/workflows/*")]
    for script in scripts:
        text = script.read_text()
        for name in settings:
            assert f"{name}=" not in text, f"{script.relative_to(ROOT)} sets {name} itself; use roadmap_tools env"
    exports = subprocess.run([sys.executable, "-m", "roadmap_tools", "env"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    assert "export OMP_NUM_THREADS=1" in exports and "export HF_HUB_OFFLINE=1" in exports
    for script in ["tools/test.sh", "tools/test_notebook.sh"]:
        assert "roadmap_tools env" in (ROOT / script).read_text(), script
    assert "roadmap_tools.execute import execute" in (ROOT / "tools" / "run_alone.sh").read_text()


# --- the test command's notebook items ----------------------------------------------------------------------------
def _pytest_notebooks(course_root: Path, *args: str, budget: str = "60") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ROADMAP_BUDGET_S": budget,
           "ROADMAP_STANDIN_FOLDER": str(ROOT / ".standin-hub")}  # one stand-in hub for all these runs
    return subprocess.run([sys.executable, "-m", "pytest", "phase01_foundations", "-p", "roadmap_tools.pytest_plugin",
                           "-p", "no:cacheprovider", "-q", "--rootdir", str(course_root), *args],
                          cwd=course_root, env=env, capture_output=True, text=True, timeout=300)


def test_a_seed_dependent_lesson_fails_the_test_command(tmp_course, add_lesson):
    add_lesson(tmp_course, "import random\nrandom.seed(SEED)\nassert SEED != 2, 'holds only for lucky seeds'")
    result = _pytest_notebooks(tmp_course, "--seeds", "0,1,2", "--no-full-path")
    assert result.returncode == 1, result.stdout
    assert "1 failed, 2 passed" in result.stdout, result.stdout
    assert "01_demo.ipynb::seed2" in result.stdout and "failed with SEED=2" in result.stdout
    assert "AssertionError: holds only for lucky seeds" in result.stdout


def test_a_busy_lesson_fails_the_time_budget(tmp_course, add_lesson):
    add_lesson(tmp_course, BUSY)
    slow = _pytest_notebooks(tmp_course, "--seeds", "0", "--no-full-path", budget="1")
    assert slow.returncode == 1 and "over the time budget" in slow.stdout and "CPU time" in slow.stdout, slow.stdout
    assert "OVER BUDGET" in slow.stdout and f"projected for {PLANNED_NOTEBOOKS} notebooks" in slow.stdout
    assert _pytest_notebooks(tmp_course, "--seeds", "0", "--no-full-path", budget="60").returncode == 0


def test_checked_outputs_are_compared_for_the_first_seed(tmp_course, add_lesson):
    rel = add_lesson(tmp_course, "# NBVAL_CHECK_OUTPUT\nprint(6 * 7)")
    path = tmp_course / rel
    nb = nbformat.read(path, as_version=4)
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="41\n")]
    nbformat.write(nb, path)
    result = _pytest_notebooks(tmp_course, "--seeds", "0,1", "--no-full-path")
    assert "1 failed, 1 passed" in result.stdout and "printed something other than its committed output" in (
        result.stdout), result.stdout


# --- runner -------------------------------------------------------------------------------------------------------
def test_size_given_as_a_parameter_is_filed_as_that_size(tmp_course, add_lesson, monkeypatch):
    from roadmap_tools.__main__ import main

    add_lesson(tmp_course, "from llm_roadmap.report import record_results\nrecord_results(size=SIZE)")
    monkeypatch.chdir(tmp_course)
    assert main(["run", "1", "-p", "SIZE=full"]) == 0
    full = json.loads((tmp_course / "runs" / "full" / "summary.json").read_text())
    assert full["notebooks"][0]["results"] == {"size": "full"}
    assert not (tmp_course / "runs" / "small" / "summary.json").exists(), "a full run was filed under small"
    assert main(["run", "1", "--size", "small", "-p", "SIZE=full"]) == 2, "contradicting sizes must be refused"


def test_a_partial_run_keeps_the_other_notebooks_in_the_summary(tmp_course, add_lesson, monkeypatch):
    from roadmap_tools.__main__ import main

    first = add_lesson(tmp_course, "x = 1", name="01_a.ipynb")
    second = add_lesson(tmp_course, "x = 2", name="02_b.ipynb")
    monkeypatch.chdir(tmp_course)
    assert main(["run", "1"]) == 0
    assert main(["run", second]) == 0
    rows = json.loads((tmp_course / "runs" / "small" / "summary.json").read_text())["notebooks"]
    assert [r["notebook"] for r in rows] == [first, second]
    assert all(r["cpu_seconds"] > 0 and r["finished"] for r in rows)


def test_refresh_writes_the_measured_runtime_into_the_header(tmp_course, add_lesson, monkeypatch):
    from roadmap_tools.__main__ import main

    rel = add_lesson(tmp_course, BUSY)
    path = tmp_course / rel
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop(METADATA_KEY)
    nbformat.write(nb, path)
    assert any("no measured runtime" in p for p in checks.check_notebook(tmp_course, rel))
    monkeypatch.chdir(tmp_course)
    assert main(["run", "--inplace", rel]) == 0
    nb = nbformat.read(path, as_version=4)
    measured = nb.metadata[METADATA_KEY]["small_cpu_s"]
    assert measured >= 2.5
    assert RUNTIME_PHRASE.search(nb.cells[0].source).group(0) == "small config ~5 s on a 2-core CPU"
    assert checks.check_notebook(tmp_course, rel) == []
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    nb.cells[0].source = nb.cells[0].source.replace("~5 s", "~35 s")
    nbformat.write(nb, path)
    assert any("the header says" in p for p in checks.check_notebook(tmp_course, rel))


def test_refresh_refuses_outputs_with_a_denylisted_warning(tmp_course, add_lesson, monkeypatch):
    from roadmap_tools.__main__ import main

    rel = add_lesson(tmp_course, "import sys\nprint('an autograd kernel was not registered', file=sys.stderr)")
    before = (tmp_course / rel).read_text()
    monkeypatch.chdir(tmp_course)
    assert main(["run", "--inplace", rel]) == 1
    assert (tmp_course / rel).read_text() == before


def test_unlisted_notebook_is_reported_beside_other_problems(tmp_course, add_lesson):
    add_lesson(tmp_course)
    (tmp_course / "phase01_foundations" / "02_unlisted.ipynb").write_text(
        (tmp_course / "phase01_foundations" / "01_demo.ipynb").read_text())
    (tmp_course / "phase02_ml_dl" / "videos.yaml").write_text("lessons:\n  - notebook: x.ipynb\n")  # malformed
    found = "\n".join(checks.video_files(tmp_course))
    assert "lacks" in found, found
    assert "02_unlisted.ipynb has no entry" in found, "another phase's problem hid the unlisted notebook"


def test_progress_bars_are_committed_in_their_final_state(tmp_path):
    bars = "from tqdm.auto import tqdm, trange\nfor i in trange(50, desc='demo'):\n    pass\n"
    run = execute(_notebook(tmp_path, bars + "bar = tqdm(total=10, desc='half')\nbar.update(5)\nbar.close()"), {})
    texts = [o["data"]["text/plain"] for o in run.nb.cells[-1].outputs if o["output_type"] == "display_data"]
    assert texts[0].startswith("demo: 100%|██████████| 50/50 [") and " 0%|" not in texts[0], texts
    assert texts[1].startswith("half:  50%|█████     | 5/10 ["), texts
    assert "widgets" not in run.nb.metadata and all("widget" not in str(o) for o in run.nb.cells[-1].outputs)


# --- the full code path against the stand-in hub -------------------------------------------------------------------
FULL_PATH_LESSON = '''from llm_roadmap.config import pick_config, resolve_size
from llm_roadmap.data import load_hub_dataset
CONFIGS = {"small": dict(data=None, n=50, steps=3), "full": dict(data="ylecun/mnist", n=60_000, steps=5000)}
size = resolve_size(SIZE)
cfg = pick_config(CONFIGS, size)
if cfg["data"]:
    train = load_hub_dataset(cfg["data"], split="train").select(range(cfg["n"]))
    labels = train[COLUMN]
    assert cfg["steps"] == 3 and cfg["n"] == 50, "the harness caps the full config's integers"
    assert len(labels) == 1_000_000, "a claim that needs the real data set"
print("reached the end")
'''


def test_the_full_path_runs_against_the_standin_hub(tmp_course, add_lesson):
    add_lesson(tmp_course, FULL_PATH_LESSON.replace("COLUMN", '"label"'))
    result = _pytest_notebooks(tmp_course, "--seeds", "0", "-k", "full", "--rootdir", str(tmp_course))
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout
    assert "asserts that failed on the stand-ins" in result.stdout and "needs the real data set" in result.stdout


def test_the_full_path_catches_a_wrong_column(tmp_course, add_lesson):
    add_lesson(tmp_course, FULL_PATH_LESSON.replace("COLUMN", '"labels"'))  # MNIST's column is "label"
    result = _pytest_notebooks(tmp_course, "--seeds", "0", "-k", "full")
    assert result.returncode == 1 and "the FULL code path" in result.stdout, result.stdout
    assert "Column 'labels' doesn't exist" in result.stdout, result.stdout
    small = _pytest_notebooks(tmp_course, "--seeds", "0", "--no-full-path")
    assert small.returncode == 0, "the small config alone never reads the column: only the full path can catch it"


def test_the_full_path_catches_a_missing_dtype_switch(tmp_course, add_lesson):
    body = ('from llm_roadmap.config import pick_config, resolve_size, trainer_precision\n'
            'from trl import SFTConfig\n'
            'size = resolve_size(SIZE)\n'
            'flags = dict(use_cpu=True, bf16=False) if size == "small" else {}  # the bug: no switch in full\n'
            'SFTConfig(output_dir="out", report_to="none", **flags)\n')
    add_lesson(tmp_course, body)
    result = _pytest_notebooks(tmp_course, "--seeds", "0")
    assert result.returncode == 1 and "1 failed, 1 passed" in result.stdout and "::full" in result.stdout, (
        result.stdout)
    add_lesson(tmp_course, body.replace('dict(use_cpu=True, bf16=False) if size == "small" else {}',
                                        'trainer_precision("cpu")'), name="02_fixed.ipynb")
    fixed = _pytest_notebooks(tmp_course, "--seeds", "0", "-k", "02_fixed")
    assert fixed.returncode == 0, fixed.stdout


def test_precision_rule_is_checked_statically(tmp_course, add_lesson):
    """3.3's old bug: TRL's bf16 default switched off only on the CPU; the full config on a T4 then got it wrong."""
    old = 'common = dict(use_cpu=True, bf16=False) if device == "cpu" else {}\nSFTConfig(output_dir="o", **common)'
    rel = add_lesson(tmp_course, old)
    assert any("trainer_precision" in p for p in checks.check_notebook(tmp_course, rel))
    fixed = 'common = dict(report_to="none", **trainer_precision(device))\nargs = SFTConfig(output_dir="o", **common)'
    rel = add_lesson(tmp_course, fixed, name="02_fixed.ipynb")
    assert checks.check_notebook(tmp_course, rel) == []


# --- Colab ----------------------------------------------------------------------------------------------------------
def test_colab_setup_cell_stops_clearly_on_the_placeholder_address(monkeypatch):
    from roadmap_tools.scaffold import setup_cell_source

    monkeypatch.setitem(sys.modules, "google.colab", object())
    with pytest.raises(RuntimeError, match="python -m roadmap_tools slug OWNER/REPO"):
        exec(compile(setup_cell_source(["train"]), "setup", "exec"), {})
    monkeypatch.delitem(sys.modules, "google.colab")
    exec(compile(setup_cell_source(["train"]), "setup", "exec"), {})  # locally: installs nothing, raises nothing


def test_colab_extras_must_cover_every_import(tmp_course, add_lesson):
    from roadmap_tools.scaffold import setup_cell_source

    rel = add_lesson(tmp_course, "import trl\nimport torch")
    path = tmp_course / rel
    nb = nbformat.read(path, as_version=4)
    setup = next(c for c in nb.cells if 'google.colab" in sys.modules' in c.source)
    assert any("'trl'" in p and "add the extra 'train'" in p for p in checks.check_notebook(tmp_course, rel))
    setup.source = setup_cell_source(["train"])
    nbformat.write(nb, path)
    assert checks.check_notebook(tmp_course, rel) == []
    setup.source = setup.source.replace("capture_output=True, text=True", "check=True")  # the old pip-error form
    nbformat.write(nb, path)
    assert any("not the course's template" in p for p in checks.check_notebook(tmp_course, rel))


def test_slug_check_names_what_points_elsewhere(tmp_course, add_lesson):
    from roadmap_tools import course, scaffold

    add_lesson(tmp_course)
    assert scaffold.slug_problems(tmp_course, course.REPO_SLUG) == []
    found = scaffold.slug_problems(tmp_course, "someone/their-fork")
    assert any("roadmap_tools/course.py" in p for p in found) and any("01_demo.ipynb" in p for p in found)
