"""Static checks of every notebook, the phases' video files and READMEs, Markdown links, the roadmap table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from roadmap_tools import course
from roadmap_tools.checks import chapter_problems, check_notebook, markdown_links, video_files
from roadmap_tools.lessons import lessons, notebooks_on_disk
from roadmap_tools.roadmap import readme_is_fresh

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = notebooks_on_disk(ROOT)


def test_layout():
    for folder in [*course.PHASE_DIRS, "tests"]:
        assert (ROOT / folder).is_dir(), f"{folder}/ is missing"
    for name in ["requirements.txt", "README.md", "pyproject.toml", "Makefile", ".ci/run"]:
        assert (ROOT / name).is_file(), f"{name} is missing"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_structure(notebook):
    problems = check_notebook(ROOT, notebook)
    assert not problems, f"{notebook}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_header_names_its_video(notebook):
    import nbformat

    lesson = next(lesson for lesson in lessons(ROOT) if lesson.path == notebook)
    header = nbformat.read(ROOT / notebook, as_version=4).cells[0].source
    assert header.startswith("# "), f"{notebook}: the first cell is the Markdown title"
    if lesson.video:
        assert lesson.video in header, f"{notebook}: header lacks the video link {lesson.video} from videos.yaml"
    else:
        assert "video coming" in header.lower() or "**video:** coming" in header.lower(), (
            f"{notebook}: header should say the video is coming (videos.yaml has none yet)")


def test_video_files_and_phase_readmes():
    problems = video_files(ROOT)
    assert not problems, "\n".join(problems)


def test_video_chapters_name_sections_that_exist():
    problems = chapter_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_markdown_links_resolve():
    problems = markdown_links(ROOT)
    assert not problems, "\n".join(problems)


def test_readme_roadmap_is_fresh():
    assert readme_is_fresh(ROOT), "README.md's roadmap table is stale: run `python -m roadmap_tools roadmap`"


def test_notebooks_are_lint_clean_python():
    # ruff runs in tools/test.sh; here, that no notebook hides a clone-only path (Colab has only the .ipynb)
    import nbformat

    for rel in NOTEBOOKS:
        nb = nbformat.read(ROOT / rel, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "/work/" not in code and "../" not in code, f"{rel} refers to a path that exists only in a clone"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert "bash .ci/run" in workflow and "pull_request" in workflow and "cache: pip" in workflow


def test_the_library_package_excludes_the_tooling():
    """What Colab installs (`llm-roadmap @ git+...`) is llm_roadmap alone; no lesson needs the tooling."""
    import tomllib

    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packaged = find_packages(str(ROOT), include=config["include"])
    assert "llm_roadmap" in packaged and "llm_roadmap.data" in packaged
    assert not [p for p in packaged if not p.startswith("llm_roadmap")], packaged
    imports_tooling = re.compile(r"^\s*(from|import)\s+roadmap_tools\b", re.MULTILINE)
    for path in (ROOT / "llm_roadmap").rglob("*.py"):
        assert not imports_tooling.search(path.read_text()), f"{path} imports the tooling"
    import nbformat

    for rel in NOTEBOOKS:
        code = "\n".join(c.source for c in nbformat.read(ROOT / rel, as_version=4).cells if c.cell_type == "code")
        assert not imports_tooling.search(code), f"{rel} imports the tooling, which Colab lacks"
