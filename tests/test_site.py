"""The course website (roadmap_tools/site.py): the real course builds with a page per lesson and every link
resolving; Chromium renders the home page and a lesson (title, equations, figures, the Colab and video links, search)
and screenshots land in build/site-artefacts/; the build fails on a notebook that does not render, a broken internal
link and a lesson without a page; chapters link sections to the video.

Run by `make site-test` in the website's environment (.venv-site, with Debian's chromium and chromium-driver): CI's
own step in .ci/run and .github/workflows/site.yml. `make test` collects and skips them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from roadmap_tools import course, site
from roadmap_tools.lessons import lessons

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    os.environ.get("SITE_TESTS") != "1",
    reason="the website's tests run in their own environment and CI step: `make site-test`")


@pytest.fixture(scope="module")
def built() -> Path:
    """The real course's site, built as `make site` builds it (into build/site/)."""
    problems = site.build(ROOT)
    assert not problems, "the site does not build cleanly:\n" + "\n".join(problems)
    return ROOT / site.OUT


@pytest.fixture(scope="module")
def every_lesson(built) -> list:
    """The lessons the build saw (read from the staged tree: lessons may land while the tests run)."""
    staged = ROOT / site.SOURCE
    return [lesson for lesson in lessons(ROOT) if (staged / lesson.path).exists()]


def _page(path: Path) -> site._Page:
    return site._parse(path)


def test_every_lesson_has_a_page_reached_from_the_home_page(built, every_lesson):
    home = _page(built / "index.html")
    hrefs = {url.split("#")[0] for tag, url in home.refs if tag == "a"}
    every = every_lesson
    assert len(every) >= 20
    for lesson in every:
        page = Path(lesson.path).with_suffix(".html")
        assert (built / page).exists(), f"{lesson.path} has no page"
        assert page.as_posix() in hrefs, f"the home page does not link to {page}"
        html = (built / page).read_text()
        assert course.colab_url(lesson.path) in html and "Video:" in html
    # roadmap order: the home page lists the phases as course.PHASES does
    phases = [url for tag, url in home.refs if tag == "a" and url.endswith("/README.html")]
    first_seen = list(dict.fromkeys(p.split("/")[0] for p in phases))
    assert first_seen == course.PHASE_DIRS, first_seen
    assert not site.link_problems(built)


def test_chromium_renders_the_home_page_and_a_lesson(built, every_lesson):
    report = site.browser(ROOT, built)
    home, page = report["home"], report["lesson_page"]
    assert "Roadmap" in home["title"] and home["table_rows"] >= len(every_lesson), home
    title = next(lesson.title for lesson in every_lesson if lesson.path == report["lesson"])
    assert page["title"].startswith(title) and page["h1"].startswith(title), (title, page)
    assert page["equations"] > 0 and page["equation_errors"] == 0, page  # MathJax typeset them: offline, no CDN
    assert page["figures"] > 0 and page["figures_loaded"] == page["figures"], page
    assert page["colab_links"] >= 1 and page["video_line"].startswith("Video:"), page
    assert report["search"]["results"] > 0, report["search"]
    assert site.browser_problems(report) == []
    for name in ("home", "home-roadmap", "lesson", "lesson-figure", "lesson-equation", "search"):
        shot = Path(report["screenshots"][name])
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000, shot


def test_the_results_tag_is_the_librarys():
    from llm_roadmap.report import RESULTS_MIME

    assert site.RESULTS_MIME == RESULTS_MIME


# --- the build fails when it should (a throw-away course each) -------------------------------------------------
def _build(root: Path) -> list[str]:
    return site.build(root)


def test_a_clean_small_course_builds(tmp_course, add_lesson):
    add_lesson(tmp_course)
    assert _build(tmp_course) == []
    assert (tmp_course / site.OUT / "phase01_foundations" / "01_demo.html").exists()


def test_a_notebook_that_does_not_parse_fails_the_build(tmp_course, add_lesson):
    rel = add_lesson(tmp_course)
    path = tmp_course / rel
    path.write_text(path.read_text()[:-40])  # a truncated file
    problems = _build(tmp_course)
    assert any(rel in p for p in problems), problems


def test_an_output_the_page_cannot_show_fails_the_build(tmp_course, add_lesson):
    rel = add_lesson(tmp_course)
    nb = json.loads((tmp_course / rel).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"][-1]
    code["outputs"] = [{"output_type": "display_data", "metadata": {},
                        "data": {"application/x-unknown-widget": {"state": 1}}}]
    (tmp_course / rel).write_text(json.dumps(nb))
    problems = _build(tmp_course)
    assert any("01_demo.ipynb" in p and "mime" in p for p in problems), problems


@pytest.mark.parametrize("target", ["02_missing.ipynb", "../phase02_ml_dl/README.md#no-such-heading"])
def test_a_broken_internal_link_fails_the_build(tmp_course, add_lesson, target):
    add_lesson(tmp_course)
    notes = tmp_course / "phase01_foundations" / "README.md"
    notes.write_text(notes.read_text() + f"\nSee [the next lesson]({target}).\n")
    problems = _build(tmp_course)
    assert any("phase01_foundations/README.md" in p for p in problems), problems


def test_a_lesson_without_a_page_fails_the_build(tmp_course, add_lesson):
    add_lesson(tmp_course)
    videos = tmp_course / "phase01_foundations" / "videos.yaml"
    (tmp_course / "phase01_foundations" / "02_unlisted.ipynb").write_text(
        (tmp_course / "phase01_foundations" / "01_demo.ipynb").read_text())
    assert "02_unlisted" not in videos.read_text()
    problems = _build(tmp_course)
    assert any("02_unlisted.ipynb has no page" in p for p in problems), problems


def test_chapters_link_each_section_to_its_moment(tmp_course, add_lesson):
    rel = add_lesson(tmp_course)
    nb = json.loads((tmp_course / rel).read_text())
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "## 1. A first idea\n\nText."})
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "## 2. A second idea\n\nMore."})
    (tmp_course / rel).write_text(json.dumps(nb))
    videos = tmp_course / "phase01_foundations" / "videos.yaml"
    data = yaml.safe_load(videos.read_text())
    url = "https://www.youtube.com/watch?v=abcdefghijk"
    data["lessons"][0].update(video=url, chapters=[{"at": "0:30", "section": "1. A first idea"},
                                                   {"at": "1:15", "section": "2. A second idea"}])
    videos.write_text(yaml.safe_dump(data, sort_keys=False))
    assert _build(tmp_course) == []
    page = _page(tmp_course / site.OUT / "phase01_foundations" / "01_demo.html")
    hrefs = [url for tag, url in page.refs if tag == "a"]
    assert f"{url}&t=30s" in hrefs and f"{url}&t=75s" in hrefs, hrefs
