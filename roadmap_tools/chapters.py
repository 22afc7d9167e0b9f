"""Video chapters: a videos.yaml entry may list, per notebook section, the moment of the video that covers it.

    - notebook: 01_tokenization.ipynb
      title: '3.1 Tokenization: byte-level BPE and SentencePiece'
      video: https://www.youtube.com/watch?v=...
      chapters:
      - {at: "0:00", section: "1. Bytes, and splitting text before merging"}
      - {at: "3:15", section: "2. Training BPE, the naive way"}

A section is the text of a `## ` heading of the notebook. Once the video's URL is set, the notebook's header lists the
chapters (written by `python -m roadmap_tools roadmap`) and the website links each section to its moment. Standard
library only: the website's environment (.venv-site) imports this too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_STAMP = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{2})$")  # m:ss or h:mm:ss
START = "<!-- chapters:start (written from videos.yaml by `python -m roadmap_tools roadmap`) -->"
END = "<!-- chapters:end -->"


def seconds(stamp: str) -> int:
    """'3:15' -> 195, '1:02:03' -> 3723; ValueError for anything else (minutes/seconds past 59, missing digits)."""
    found = _STAMP.match(str(stamp).strip())
    if not found:
        raise ValueError(f"{stamp!r} is not a timestamp like 3:15 or 1:02:03")
    hours, minutes, secs = int(found.group(1) or 0), int(found.group(2)), int(found.group(3))
    if secs > 59 or (found.group(1) is not None and minutes > 59):
        raise ValueError(f"{stamp!r} is not a timestamp like 3:15 or 1:02:03")
    return hours * 3600 + minutes * 60 + secs


def video_at(url: str, at: int) -> str:
    """The video URL that starts playing at `at` seconds (YouTube's and most players' `t` parameter)."""
    return f"{url}{'&' if '?' in url else '?'}t={at}s"


def section_headings(cells: list[dict]) -> list[str]:
    """The `## ` headings of a notebook's Markdown cells (cells as in the .ipynb JSON), in order."""
    found = []
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        src = cell.get("source", "")
        for line in ("".join(src) if isinstance(src, list) else src).splitlines():
            if line.startswith("## "):
                found.append(line[3:].strip())
    return found


def notebook_cells(path: Path) -> list[dict]:
    """A notebook's cells, read as plain JSON (no nbformat needed)."""
    return json.loads(path.read_text(encoding="utf-8")).get("cells", [])


def problems(entry: dict, headings: list[str]) -> list[str]:
    """What is wrong with an entry's chapters: the shape, a timestamp, the order, a section the notebook lacks."""
    chapters = entry.get("chapters")
    if chapters is None:
        return []
    name = entry.get("notebook", "?")
    if not isinstance(chapters, list):
        return [f"{name}: chapters must be a list of {{at: 'm:ss', section: '<a ## heading>'}}"]
    found, last = [], -1
    for i, chapter in enumerate(chapters):
        if not isinstance(chapter, dict) or set(chapter) != {"at", "section"}:
            found.append(f"{name}: chapter {i} must have exactly 'at' and 'section', got {chapter!r}")
            continue
        try:
            at = seconds(chapter["at"])
        except ValueError as err:
            found.append(f"{name}: chapter {i}: {err}")
            continue
        if at <= last:
            found.append(f"{name}: chapter {i} at {chapter['at']} does not come after the previous one")
        last = at
        if chapter["section"] not in headings:
            found.append(f"{name}: chapter {i} names section {chapter['section']!r}, which is not a '## ' heading of "
                         "the notebook")
    return found


def markdown(entry: dict) -> str:
    """The header's chapter list (between the markers), or '' while the entry has no video URL or no chapters."""
    if not entry.get("video") or not entry.get("chapters"):
        return ""
    lines = [START, "**Chapters** (each opens the video at its moment):"]
    for chapter in entry["chapters"]:
        at = seconds(chapter["at"])
        lines.append(f"- [{chapter['at']}]({video_at(entry['video'], at)}) {chapter['section']}")
    return "\n".join([*lines, END])


def header_with_chapters(header: str, entry: dict) -> str:
    """The header cell's text with its chapter list set to what the entry says: replaced when present, else put
    after the **Video:** line (or at the end); removed when the entry has none (no URL yet, or no chapters)."""
    block = markdown(entry)
    if START in header and END in header:
        head, rest = header.split(START, 1)
        tail = rest.split(END, 1)[1]
        if block:
            return f"{head}{block}{tail}"
        return head.rstrip("\n") + ("\n\n" + tail.lstrip("\n") if tail.strip() else "")
    if not block:
        return header
    lines = header.split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith("**Video:**")), None)
    if at is None:
        return header.rstrip("\n") + "\n\n" + block
    return "\n".join([*lines[: at + 1], "", block, *lines[at + 1:]])


def section_links(entry: dict) -> dict[str, str]:
    """section heading -> the video URL at its moment (empty without a URL)."""
    if not entry.get("video"):
        return {}
    return {c["section"]: video_at(entry["video"], seconds(c["at"])) for c in entry.get("chapters") or []}
