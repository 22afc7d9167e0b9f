"""A new lesson's skeleton: the notebook with header, badge, setup and parameters, its video-file entry."""

from __future__ import annotations

from pathlib import Path

import nbformat
import yaml

from . import course
from .checks import BADGE_IMAGE
from .lessons import VIDEO_FILE


def setup_cell_source(extras: list[str] | None = None) -> str:
    """The Colab-only setup cell: installs the course's library with the lesson's extras from the repository.

    While the repository address is still the placeholder, it stops with what to do instead of a pip error; a pip
    failure is reported with pip's own message and what to check. Locally it installs nothing.
    """
    return SETUP_TEMPLATE.replace("<SPEC>", course.install_spec(extras=extras)).replace(
        "<PLACEHOLDER>", course.PLACEHOLDER_OWNER)


SETUP_TEMPLATE = """\
# Setup. In Colab, install this course's library with the extras this lesson needs; locally this installs
# nothing (`make install` did).
import subprocess
import sys

if "google.colab" in sys.modules:
    SPEC = "<SPEC>"
    if "/<PLACEHOLDER>/" in SPEC:
        raise RuntimeError("This copy of the course does not name its GitHub repository yet, so Colab cannot "
                           "install its library. In a clone, run `python -m roadmap_tools slug OWNER/REPO` "
                           "(the repository you publish it in), push, and open the lesson from there.")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", SPEC], capture_output=True, text=True)
    if pip.returncode != 0:
        raise RuntimeError(f"pip could not install {SPEC}:\\n{pip.stderr[-2000:]}\\nCheck that the "
                           "repository is public and that this runtime reaches the internet.")"""


def header_source(path: str, title: str) -> str:
    """The notebook's first Markdown cell: title, badge, video, objectives, prerequisites, runtime."""
    return (
        f"# {title}\n\n"
        f"[![Open In Colab]({BADGE_IMAGE})]({course.colab_url(path)})\n\n"
        "**Video:** coming.\n\n"
        "**You will learn**\n- ...\n\n"
        "**Prerequisites:** ...\n\n"
        "**Runtime:** small config ~N s on a 2-core CPU (offline; `make refresh` writes the measured N); "
        "full config ~M min on a Colab T4."
    )


def new_lesson(root: Path, phase: str, notebook: str, title: str) -> Path:
    """Create phase/notebook from the template and list it in the phase's video file and README."""
    if phase not in course.PHASE_DIRS:
        raise ValueError(f"unknown phase {phase!r}; one of {course.PHASE_DIRS}")
    if not notebook.endswith(".ipynb"):
        raise ValueError(f"{notebook!r}: the notebook's file name ends in .ipynb")
    path = root / phase / notebook
    if path.exists():
        raise FileExistsError(f"{path} exists already")
    rel = f"{phase}/{notebook}"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell('SIZE = "auto"  # "small" (CPU, offline), "full" (GPU, hub), "auto"\nSEED = 0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell(header_source(rel, title)),
        nbformat.v4.new_code_cell(setup_cell_source(["hf"])),
        params,
        nbformat.v4.new_code_cell(
            "from llm_roadmap.config import describe_runtime, pick_config, resolve_size, seed_everything\n\n"
            "CONFIGS = {\"small\": dict(), \"full\": dict()}\n"
            "size = resolve_size(SIZE)\ncfg = pick_config(CONFIGS, size)\nseed_everything(SEED)\n"
            "print(size, cfg, \"|\", describe_runtime())"),
    ]
    nbformat.write(nb, path)
    video_file = root / phase / VIDEO_FILE
    text = video_file.read_text()
    data = yaml.safe_load(text) or {}
    data.setdefault("lessons", []).append({"notebook": notebook, "title": title, "video": None})
    comments = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))  # keep the header comment
    video_file.write_text(comments + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    readme = root / phase / "README.md"
    readme.write_text(readme.read_text().rstrip("\n") + f"\n\n## [{title}]({notebook})\n\nNotes to come.\n")
    return path


def rewrite_slug(root: Path, new_slug: str, new_branch: str | None = None) -> list[Path]:
    """Point every badge and install line (and course.py) at another repository; return the files changed."""
    if new_slug.count("/") != 1 or " " in new_slug:
        raise ValueError(f"{new_slug!r} is not OWNER/REPO")
    branch = new_branch or course.BRANCH
    pairs = [(f"github/{course.REPO_SLUG}/blob/{course.BRANCH}/", f"github/{new_slug}/blob/{branch}/"),
             (f"github.com/{course.REPO_SLUG}@{course.BRANCH}", f"github.com/{new_slug}@{branch}"),
             (f"github.com/{course.REPO_SLUG}", f"github.com/{new_slug}"),
             (f'REPO_SLUG = "{course.REPO_SLUG}"', f'REPO_SLUG = "{new_slug}"'),
             (f'BRANCH = "{course.BRANCH}"', f'BRANCH = "{branch}"')]
    changed = []
    files = [*root.glob("*.md"), root / "roadmap_tools" / "course.py"]
    for folder in course.PHASE_DIRS:
        files += [*(root / folder).glob("*.md"), *(root / folder).glob("*.ipynb")]
    for file in files:
        text = file.read_text()
        new = text
        for old, repl in pairs:
            new = new.replace(old, repl)
        if new != text:
            file.write_text(new)
            changed.append(file)
    return changed


def slug_problems(root: Path, slug: str) -> list[str]:
    """Badges, install lines and links to GitHub that do not point at `slug` (OWNER/REPO)."""
    import re

    problems = []
    if course.REPO_SLUG.lower() != slug.lower():
        problems.append(f"roadmap_tools/course.py names {course.REPO_SLUG}: run `python -m roadmap_tools slug {slug}`")
    pattern = re.compile(r"(?:colab\.research\.google\.com/github|github\.com)/([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)")
    files = [*root.glob("*.md")]
    for folder in course.PHASE_DIRS:
        files += [*(root / folder).glob("*.md"), *(root / folder).glob("*.ipynb")]
    for file in files:
        for found in sorted(set(pattern.findall(file.read_text()))):
            if found.lower() != slug.lower() and found.split("/")[0] == course.REPO_SLUG.split("/")[0]:
                problems.append(f"{file.relative_to(root)} points at {found}")
    return problems
