"""Video chapters (roadmap_tools/chapters.py): timestamps, the static check that each names a `## ` section of its
notebook, and the header's chapter list, written only once the video's URL is set."""

from __future__ import annotations

import nbformat
import pytest
import yaml

from roadmap_tools import chapters, checks, roadmap

URL = "https://www.youtube.com/watch?v=abcdefghijk"


def test_timestamps():
    assert chapters.seconds("0:00") == 0 and chapters.seconds("3:15") == 195
    assert chapters.seconds("1:02:03") == 3723 and chapters.seconds("75:00") == 4500
    for bad in ["3:75", "1:60:00", "3", "3:5", "a:bc", ""]:
        with pytest.raises(ValueError):
            chapters.seconds(bad)
    assert chapters.video_at(URL, 195) == URL + "&t=195s"
    assert chapters.video_at("https://youtu.be/abc", 5) == "https://youtu.be/abc?t=5s"


def test_problems_name_the_bad_chapter():
    headings = ["1. Bytes", "2. Merging"]
    good = {"notebook": "n.ipynb", "chapters": [{"at": "0:10", "section": "1. Bytes"},
                                                {"at": "2:00", "section": "2. Merging"}]}
    assert chapters.problems(good, headings) == []
    assert chapters.problems({"notebook": "n.ipynb"}, headings) == []
    cases = {
        "not a '## ' heading": [{"at": "0:10", "section": "3. Nowhere"}],
        "does not come after": [{"at": "2:00", "section": "1. Bytes"}, {"at": "2:00", "section": "2. Merging"}],
        "not a timestamp": [{"at": "soon", "section": "1. Bytes"}],
        "exactly 'at' and 'section'": [{"at": "0:10"}],
        "must be a list": "1. Bytes",
    }
    for phrase, bad in cases.items():
        found = chapters.problems({"notebook": "n.ipynb", "chapters": bad}, headings)
        assert len(found) == 1 and phrase in found[0], (phrase, found)


def test_header_list_round_trips_and_stays_dormant_without_a_url():
    header = "# 1.1 Demo\n\n[badge](x)\n\n**Video:** coming.\n\n**You will learn**\n- a"
    entry = {"video": None, "chapters": [{"at": "0:30", "section": "1. A"}]}
    assert chapters.header_with_chapters(header, entry) == header  # no URL yet: nothing written
    entry["video"] = URL
    written = chapters.header_with_chapters(header, entry)
    assert f"- [0:30]({URL}&t=30s) 1. A" in written
    assert written.index("**Video:**") < written.index(chapters.START) < written.index("**You will learn**")
    assert chapters.header_with_chapters(written, entry) == written  # idempotent
    assert chapters.header_with_chapters(written, {"video": URL}) == header  # chapters removed: back as it was


def _with_chapters(root, rel, video, chapter_list):
    nb = nbformat.read(root / rel, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("## 1. A first idea\n\nText."))
    nbformat.write(nb, root / rel)
    videos = root / "phase01_foundations" / "videos.yaml"
    data = yaml.safe_load(videos.read_text())
    data["lessons"][0].update(video=video, chapters=chapter_list)
    videos.write_text(yaml.safe_dump(data, sort_keys=False))


def test_static_check_and_header_refresh(tmp_course, add_lesson):
    rel = add_lesson(tmp_course)
    _with_chapters(tmp_course, rel, None, [{"at": "0:30", "section": "1. A first idea"}])
    assert checks.chapter_problems(tmp_course) == []  # chapters without a URL: valid, dormant
    assert roadmap.write_chapters(tmp_course) == []
    _with_chapters(tmp_course, rel, URL, [{"at": "0:30", "section": "1. A first idea"},
                                          {"at": "0:20", "section": "2. Missing"}])
    found = checks.chapter_problems(tmp_course)
    assert len(found) == 2 and "does not come after" in found[0] and "'2. Missing'" in found[1], found
    _with_chapters(tmp_course, rel, URL, [{"at": "0:30", "section": "1. A first idea"}])
    assert any("run `python -m roadmap_tools roadmap`" in p for p in checks.chapter_problems(tmp_course))
    assert roadmap.write_chapters(tmp_course) == [rel]
    assert checks.chapter_problems(tmp_course) == []
    header = nbformat.read(tmp_course / rel, as_version=4).cells[0].source
    assert f"[0:30]({URL}&t=30s) 1. A first idea" in header and roadmap.write_chapters(tmp_course) == []
