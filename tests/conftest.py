"""Fixtures of the harness tests: a throw-away course repository and a way to add a lesson to it."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from roadmap_tools import course, roadmap, scaffold
from roadmap_tools.runner import METADATA_KEY, with_runtime

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tmp_course(tmp_path: Path) -> Path:
    """An empty course (phase folders, video files, README) in tmp_path."""
    for name in ["requirements.txt", "README.md"]:
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in course.PHASE_DIRS:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "videos.yaml").write_text("lessons: []\n")
        (tmp_path / folder / "README.md").write_text(f"# {folder}\n")
    roadmap.write_readme(tmp_path)
    return tmp_path


def _executed(nb):
    """Mark every code cell as run in order (what a clean execution leaves)."""
    count = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.strip():
            count += 1
            cell.execution_count = count
    return nb


def _add_lesson(root: Path, body: str = "x = 1\nassert x == 1", name: str = "01_demo.ipynb") -> str:
    """Scaffold a lesson in phase 1 with one more code cell; return its path relative to root."""
    path = scaffold.new_lesson(root, "phase01_foundations", name, "1.1 Demo")
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(body))
    # what a refresh records (tests/test_harness.py runs a real one)
    nb.metadata[METADATA_KEY] = {"small_cpu_s": 3.2}
    nb.cells[0].source = with_runtime(nb.cells[0].source, 3.2)
    nbformat.write(_executed(nb), path)
    roadmap.write_readme(root)
    return f"phase01_foundations/{name}"


@pytest.fixture
def add_lesson():
    """add_lesson(root, body=..., name=...) scaffolds a lesson with `body` as its last cell."""
    return _add_lesson
