"""Static checks of every notebook, the phases' video files and READMEs, Markdown links, the roadmap table."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_roadmap import course
from llm_roadmap.checks import check_notebook, markdown_links, video_files
from llm_roadmap.lessons import lessons, notebooks_on_disk
from llm_roadmap.roadmap import readme_is_fresh

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


def test_markdown_links_resolve():
    problems = markdown_links(ROOT)
    assert not problems, "\n".join(problems)


def test_readme_roadmap_is_fresh():
    assert readme_is_fresh(ROOT), "README.md's roadmap table is stale: run `python -m llm_roadmap roadmap`"


def test_notebooks_are_lint_clean_python():
    # ruff runs in tools/test.sh; here, that no notebook hides a clone-only path (Colab has only the .ipynb)
    import nbformat

    for rel in NOTEBOOKS:
        nb = nbformat.read(ROOT / rel, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "/work/" not in code and "../" not in code, f"{rel} refers to a path that exists only in a clone"
