"""The course's lessons as the repository holds them: phase folders, their video files, their notebooks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .course import PHASES

VIDEO_FILE = "videos.yaml"


def repo_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder above `start` (default: the working folder) holding phase01_*."""
    here = (start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        if (folder / PHASES[0][0]).is_dir() and (folder / "requirements.txt").is_file():
            return folder
    raise FileNotFoundError(f"no course repository found at or above {here}; run this from a clone of the course")


@dataclass(frozen=True)
class Lesson:
    """One notebook and its entry in the phase's video file."""

    phase: str  # folder name, e.g. phase01_foundations
    notebook: str  # file name inside the phase folder
    title: str
    video: str | None

    @property
    def path(self) -> str:
        """Path relative to the repository root, with forward slashes."""
        return f"{self.phase}/{self.notebook}"


def read_video_file(phase_dir: Path) -> list[dict]:
    """The entries of a phase's video file; a clear error when the file is malformed."""
    path = phase_dir / VIDEO_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: every phase folder has a {VIDEO_FILE} (it may list no lessons)")
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("lessons") or []
    for i, entry in enumerate(entries):
        missing = {"notebook", "title", "video"} - set(entry)
        if missing:
            raise ValueError(f"{path}: entry {i} lacks {sorted(missing)} (each needs notebook, title, video)")
        if entry["video"] is not None and not str(entry["video"]).startswith("https://"):
            raise ValueError(f"{path}: entry {entry['notebook']!r} has video {entry['video']!r}: an https URL or null")
    return entries


def lessons(root: Path) -> list[Lesson]:
    """Every lesson of the course in reading order, as listed by the phases' video files."""
    found = []
    for folder, _, _ in PHASES:
        for entry in read_video_file(root / folder):
            found.append(Lesson(folder, entry["notebook"], entry["title"], entry["video"]))
    return found


def notebooks_on_disk(root: Path) -> list[str]:
    """Paths of every notebook in the phase folders (relative to root), whether listed or not."""
    return sorted(str(p.relative_to(root)) for folder, _, _ in PHASES for p in (root / folder).glob("*.ipynb"))


def select(root: Path, targets: list[str]) -> list[Lesson]:
    """The lessons named by phase folders, phase numbers ("3", "phase03"), or notebook paths; all when empty."""
    every = lessons(root)
    if not targets:
        return every
    chosen: list[Lesson] = []
    for target in targets:
        t = target.rstrip("/")
        hits = [
            lesson for lesson in every
            if t in (lesson.phase, lesson.path, lesson.notebook)
            or (t.isdigit() and lesson.phase.startswith(f"phase{int(t):02d}_"))
            or lesson.phase.startswith(t + "_")
            or str((root / lesson.path).resolve()) == str(Path(t).resolve())
        ]
        if not hits:
            raise ValueError(f"{target!r} names no lesson; give a phase folder, a phase number or a notebook path")
        chosen += [h for h in hits if h not in chosen]
    return chosen
