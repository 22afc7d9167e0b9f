"""A new lesson's skeleton: the notebook with header, badge, setup and parameters, its video-file entry."""

from __future__ import annotations

from pathlib import Path

import nbformat
import yaml

from . import course
from .checks import BADGE_IMAGE
from .lessons import VIDEO_FILE


def setup_cell_source(extra_packages: list[str] | None = None) -> str:
    """The Colab-only install cell: the course package from the repository, plus what the lesson needs."""
    packages = ", ".join(repr(p) for p in [course.install_spec(), *(extra_packages or [])])
    return (
        "# Setup. In Colab, install what it lacks (this course's helper package); locally this installs nothing.\n"
        "import subprocess\n"
        "import sys\n\n"
        'if "google.colab" in sys.modules:\n'
        f'    subprocess.run([sys.executable, "-m", "pip", "install", "-q", {packages}], check=True)'
    )


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
        nbformat.v4.new_code_cell(setup_cell_source()),
        params,
        nbformat.v4.new_code_cell(
            "from llm_roadmap.config import describe_runtime, resolve_size, seed_everything\n\n"
            "CONFIGS = {\"small\": dict(), \"full\": dict()}\n"
            "size = resolve_size(SIZE)\ncfg = CONFIGS[size]\nseed_everything(SEED)\n"
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
