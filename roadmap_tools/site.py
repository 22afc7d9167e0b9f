"""The course website: the phases' notes and their executed notebooks as one book, built offline with Sphinx and
MyST-NB (`make site`), checked in the built HTML and in a headless Chromium (`make site-test`).

`build` stages a Sphinx source tree in build/site-src/ from what the repository holds (course.PHASES and the
videos.yaml files decide the pages and their order, so a new lesson appears without hand edits), runs Sphinx with
warnings as errors into build/site/, then checks the HTML: every lesson has a page with its Colab link, video line and
outputs, and every internal link and asset resolves. `browser` opens the home page, a lesson page and a search in
Chromium and saves screenshots to build/site-artefacts/.

Runs in the website's environment (.venv-site: Sphinx, MyST-NB, the book theme, PyYAML, selenium); it needs neither
nbformat nor the lessons' stack, so it imports only course, lessons and chapters from this package.
"""

from __future__ import annotations

import html.parser
import http.server
import importlib.metadata
import json
import posixpath
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import chapters, course
from .lessons import VIDEO_FILE, notebooks_on_disk, read_video_file

SOURCE = "build/site-src"
OUT = "build/site"
ARTEFACTS = "build/site-artefacts"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"  # checks.BADGE_IMAGE (checks needs nbformat)
GITHUB = f"https://github.com/{course.REPO_SLUG}"
# the README's learner-facing part ends here; the rest (layout, tests, adding a lesson) stays on GitHub
README_CUT = "## How the repository is organised"
# llm_roadmap.report.RESULTS_MIME: record_results' tag for the runner; its Markdown table is what the page shows
RESULTS_MIME = "application/vnd.llm-roadmap.results+json"
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
# Links of the form [text](target "title") and ![alt](target): only the target is rewritten
_TARGET = re.compile(r"\]\(([^)\s]+)((?:\s+\"[^\"]*\")?)\)")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)

CONF = '''\
# Written by `python -m roadmap_tools site` (roadmap_tools/site.py); do not edit: the next build rewrites it.
project = {project!r}
author = "the course's contributors"
copyright = "the course's contributors (MIT licence)"
extensions = ["myst_nb"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the committed small-config outputs, never re-executed at build time
nb_merge_streams = True
html_theme = "sphinx_book_theme"
html_title = project
html_static_path = ["_static"]
html_css_files = ["site.css"]
html_copy_source = False
html_show_sourcelink = False
mathjax_path = "mathjax/tex-svg-full.js"  # MathJax 3 from the sphinx-mathjax-offline wheel: no CDN
html_theme_options = {{
    "repository_url": {github!r},
    "repository_branch": {branch!r},
    "use_repository_button": True,
    "use_download_button": False,
    "home_page_in_toc": True,
    "show_toc_level": 2,
}}
exclude_patterns = [".doctrees"]
'''

# The Colab badge drawn locally, so that the site loads nothing from elsewhere (the link still goes to Colab).
BADGE_SVG = '''<svg xmlns="http://www.w3.org/2000/svg" width="117" height="20" role="img" aria-label="Open in Colab">
<rect width="117" height="20" rx="3" fill="#555"/><rect x="24" width="93" height="20" rx="3" fill="#444"/>
<circle cx="8" cy="10" r="4.5" fill="none" stroke="#F9AB00" stroke-width="2.5"/>
<circle cx="16" cy="10" r="4.5" fill="none" stroke="#F9AB00" stroke-width="2.5"/>
<text x="70" y="14" fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11"
 text-anchor="middle">Open in Colab</text></svg>
'''


# the badge keeps its size in the roadmap table's narrow column
SITE_CSS = 'img[alt="Open In Colab"] { width: 117px; max-width: none; }\n'


# --- staging ---------------------------------------------------------------------------------------------------
def _mathjax_dir() -> Path:
    """MathJax 3's files as the sphinx-mathjax-offline wheel ships them (a folder named with hyphens)."""
    dist = importlib.metadata.distribution("sphinx-mathjax-offline")
    return Path(dist.locate_file("sphinx-mathjax-offline/static/mathjax"))


def _rewrite_links(text: str, doc_dir: str, staged: set[str], root: Path) -> str:
    """Relative links of a Markdown text (in doc_dir, relative to the root) kept when they point at a page of the
    site (the course README becomes the home page), sent to GitHub when they point at another file of the
    repository, and kept as they are when they point at nothing (for Sphinx to report); the Colab badge drawn
    locally."""

    def fix(match: re.Match) -> str:
        target, title = match.group(1), match.group(2)
        if target == BADGE_IMAGE:
            return f"]({posixpath.relpath('_static/colab-badge.svg', doc_dir or '.')}{title})"
        if _SCHEME.match(target) or target.startswith("#"):
            return match.group(0)
        file_part, _, anchor = target.partition("#")
        path = posixpath.normpath(posixpath.join(doc_dir, file_part))
        if path == "README.md":
            path = "index.md"
        if path in staged:
            new = posixpath.relpath(path, doc_dir or ".")
        elif (root / path).exists() and not path.startswith(".."):
            new = f"{GITHUB}/{'tree' if (root / path).is_dir() else 'blob'}/{course.BRANCH}/{path}"
        else:
            return match.group(0)
        return f"]({new}{'#' + anchor if anchor else ''}{title})"

    return _TARGET.sub(fix, text)


def _toctree(entries: list[str], caption: str | None = None) -> str:
    lines = ["", "```{toctree}", ":hidden:", ":maxdepth: 2"]
    if caption:
        lines.append(f":caption: {caption}")
    return "\n".join([*lines, "", *entries, "```", ""])


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


def _source_text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _lesson_notebook(raw: str, doc_dir: str, staged: set[str], entry: dict, root: Path) -> str:
    """The notebook as the site shows it: links fixed, and with a video URL, the header's chapter list and a
    link under each section heading to its moment in the video."""
    nb = json.loads(raw)
    links = chapters.section_links(entry)
    for i, cell in enumerate(nb.get("cells", [])):
        for output in cell.get("outputs", []):
            output.get("data", {}).pop(RESULTS_MIME, None)  # the runner's copy; the page shows the Markdown table
        if cell.get("cell_type") != "markdown":
            continue
        text = _source_text(cell)
        if i == 0:
            text = chapters.header_with_chapters(text, entry)
        if links:
            lines = []
            for line in text.split("\n"):
                lines.append(line)
                section = line[3:].strip() if line.startswith("## ") else None
                if section in links:
                    at = next(c["at"] for c in entry["chapters"] if c["section"] == section)
                    lines += ["", f"[▶ this section in the video ({at})]({links[section]})", ""]
            text = "\n".join(lines)
        cell["source"] = _rewrite_links(text, doc_dir, staged, root)
    return json.dumps(nb, ensure_ascii=False, indent=1) + "\n"


def home_page(root: Path, staged: set[str]) -> str:
    """The home page: the README's learner-facing part (what the course is, how to run it, the roadmap table)."""
    readme = (root / "README.md").read_text(encoding="utf-8")
    text = readme.split(README_CUT, 1)[0].rstrip()
    text += (f"\n\nHow the repository is organised, what its tests enforce and how to add a lesson: the "
             f"[repository's README]({GITHUB}#readme).\n")
    return _rewrite_links(text, "", staged, root)


def stage(root: Path, src: Path) -> tuple[list[str], list[str]]:
    """Write the Sphinx source tree for the course at root into src; return (lesson page paths, problems)."""
    problems: list[str] = []
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    phases: list[tuple[str, list[dict]]] = []
    for folder in course.PHASE_DIRS:
        try:
            entries = read_video_file(root / folder)
        except (OSError, ValueError) as err:
            problems.append(str(err))
            entries = []
        present = []
        for entry in entries:
            if (root / folder / entry["notebook"]).exists():
                present.append(entry)
            else:
                problems.append(f"{folder}/{VIDEO_FILE} lists {entry['notebook']}, which does not exist: no page")
        phases.append((folder, present))
    lessons = [f"{folder}/{e['notebook']}" for folder, entries in phases for e in entries]
    staged = {"index.md", *lessons, *(f"{folder}/README.md" for folder, _ in phases)}
    for rel in notebooks_on_disk(root):
        if rel not in staged:
            problems.append(f"{rel} has no page: it is not listed in its phase's {VIDEO_FILE}")

    _write(src / "conf.py", CONF.format(project=_title(root), github=GITHUB, branch=course.BRANCH))
    _write(src / "_static" / "colab-badge.svg", BADGE_SVG)
    _write(src / "_static" / "site.css", SITE_CSS)
    mathjax = _mathjax_dir()
    _write(src / "_static" / "mathjax" / "tex-svg-full.js", (mathjax / "tex-svg-full.js").read_bytes())
    for part in ("ui", "a11y"):  # loaded on demand by the page's MathJax (menu, assistive MathML)
        shutil.copytree(mathjax / part, src / "_static" / "mathjax" / part)
    home = home_page(root, staged) + _toctree([f"{folder}/README" for folder, _ in phases], caption="Phases")
    _write(src / "index.md", home)
    for folder, entries in phases:
        pages = []
        for entry in entries:
            raw = (root / folder / entry["notebook"]).read_text(encoding="utf-8")
            try:
                page = _lesson_notebook(raw, folder, staged, entry, root)
            except (json.JSONDecodeError, AttributeError, TypeError) as err:
                problems.append(f"{folder}/{entry['notebook']} is not a readable notebook, so it has no page: {err}")
                continue  # the rest of the site still builds, and reports what else is wrong
            _write(src / folder / entry["notebook"], page)
            pages.append(Path(entry["notebook"]).stem)
        notes = root / folder / "README.md"
        text = notes.read_text(encoding="utf-8") if notes.exists() else f"# {folder}\n"
        text = _rewrite_links(text, folder, staged, root)
        _write(src / folder / "README.md", text + ("\n" + _toctree(pages) if pages else ""))
    return lessons, problems


def _title(root: Path) -> str:
    first = (root / "README.md").read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("# ").strip() if first.startswith("# ") else "The course"


# --- checking the built HTML -----------------------------------------------------------------------------------
class _Page(html.parser.HTMLParser):
    """The ids, the links and asset references of one HTML page, and the images inside notebook outputs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str]] = []  # (tag, url)
        self.output_images = 0
        self.outputs = 0
        self._stack: list[bool] = []  # per open div: inside a cell output?
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        inside = bool(self._stack and self._stack[-1])
        if tag == "div":
            classes = (attrs.get("class") or "").split()
            opens = "cell_output" in classes
            self.outputs += opens
            self._stack.append(inside or opens)
        for key in ("href", "src"):
            if attrs.get(key) and tag in ("a", "link", "script", "img", "source", "iframe"):
                self.refs.append((tag, attrs[key]))
        if tag == "img" and inside:
            self.output_images += 1

    def handle_endtag(self, tag):
        if tag == "div" and self._stack:
            self._stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def link_problems(out: Path) -> list[str]:
    """Every internal link and asset of every page resolves (the file, and the #anchor in a page); no page loads a
    script, style sheet or image from elsewhere (the site works offline)."""
    # the theme ships Jinja macro files as .html under _static/: templates, not pages
    pages = {p: _parse(p) for p in out.rglob("*.html") if "_static" not in p.relative_to(out).parts}
    problems = []
    for path, page in pages.items():
        rel = path.relative_to(out)
        for tag, url in page.refs:
            if url.startswith(("mailto:", "javascript:", "data:")):
                continue
            if _SCHEME.match(url) or url.startswith("//"):
                if tag != "a":
                    problems.append(f"{rel}: <{tag}> loads {url} from elsewhere: the site must work offline")
                continue
            file_part, _, anchor = url.partition("#")
            file_part = file_part.split("?", 1)[0]
            target = (path.parent / file_part).resolve() if file_part else path
            if target.is_dir():
                target = target / "index.html"
            if not target.exists() or out.resolve() not in [target, *target.parents]:
                problems.append(f"{rel}: link to {url} points to nothing")
            elif anchor and target.suffix == ".html" and target in pages and anchor not in pages[target].ids:
                problems.append(f"{rel}: link to {url}: no element with id {anchor!r} there")
    return problems


def lesson_problems(root: Path, out: Path, lessons: list[str]) -> list[str]:
    """Each lesson has its page, with the Colab link, the video line, and as many figures and outputs as the
    committed notebook holds."""
    problems = []
    for rel in lessons:
        page_path = out / Path(rel).with_suffix(".html")
        if not page_path.exists():
            problems.append(f"{rel}: no page {page_path.relative_to(out)} in the built site")
            continue
        page = _parse(page_path)
        hrefs = {url for tag, url in page.refs if tag == "a"}
        if course.colab_url(rel) not in hrefs:
            problems.append(f"{rel}: its page lacks the Open in Colab link {course.colab_url(rel)}")
        text = " ".join(page.text)
        if "Video:" not in text:
            problems.append(f"{rel}: its page lacks the video line ('Video: ...')")
        cells = json.loads((root / rel).read_text(encoding="utf-8")).get("cells", [])
        outputs = [o for c in cells for o in c.get("outputs", [])]
        figures = sum(1 for o in outputs if any(m in o.get("data", {}) for m in IMAGE_MIMES))
        if page.output_images < figures:
            problems.append(f"{rel}: the notebook holds {figures} figures, its page shows {page.output_images}")
        if outputs and not page.outputs:
            problems.append(f"{rel}: the notebook holds {len(outputs)} outputs, its page shows none")
    return problems


def build(root: Path, out: Path | None = None, src: Path | None = None) -> list[str]:
    """Stage, build with Sphinx (warnings are errors) and check the site; return the problems (empty: all is well)."""
    out = out or root / OUT
    src = src or root / SOURCE
    lessons, problems = stage(root, src)
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going", "-d", str(src / ".doctrees"),
           str(src), str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        # Sphinx names the staged file: name the repository's instead
        report = (run.stderr or run.stdout).replace(f"{src}/", "")
        problems += [f"sphinx: {line}" for line in report.strip().splitlines()] or ["sphinx failed"]
        return problems
    return problems + lesson_problems(root, out, lessons) + link_problems(out)


# --- the browser check -----------------------------------------------------------------------------------------
def _lesson_to_show(root: Path, lessons: list[str]) -> str:
    """The first lesson whose notebook has both an equation in its Markdown and a figure in its outputs."""
    for rel in lessons:
        cells = json.loads((root / rel).read_text(encoding="utf-8")).get("cells", [])
        has_math = any("$" in _source_text(c) for c in cells if c.get("cell_type") == "markdown")
        has_figure = any(m in o.get("data", {}) for c in cells for o in c.get("outputs", []) for m in IMAGE_MIMES)
        if has_math and has_figure:
            return rel
    raise ValueError("no lesson has both an equation and a figure to show")


def browser(root: Path, out: Path | None = None, artefacts: Path | None = None, lesson: str | None = None) -> dict:
    """Open the home page, a lesson page and a search in headless Chromium (Debian's chromium and chromium-driver,
    through selenium, the site served on 127.0.0.1); report what they rendered and save screenshots."""
    import functools
    import os
    import threading

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = out or root / OUT
    artefacts = artefacts or root / ARTEFACTS
    artefacts.mkdir(parents=True, exist_ok=True)
    lessons = [f"{folder}/{e['notebook']}" for folder in course.PHASE_DIRS for e in read_video_file(root / folder)]
    lesson = lesson or _lesson_to_show(root, lessons)
    handler = functools.partial(_QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000", "--force-device-scale-factor=1",
                 # nothing but the local server: proves the pages render offline
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for a driver on the network
    driver = webdriver.Chrome(options=options,
                              service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")))
    report: dict = {"base": base, "lesson": lesson, "screenshots": {}}
    try:
        driver.set_script_timeout(60)
        driver.get(f"{base}/index.html")
        report["home"] = _page_facts(driver, WebDriverWait, By)
        _shot(driver, artefacts / "home.png", report)
        driver.execute_script("const t = document.getElementById('roadmap'); if (t) t.scrollIntoView();")
        time.sleep(0.3)
        _shot(driver, artefacts / "home-roadmap.png", report)
        driver.get(f"{base}/{Path(lesson).with_suffix('.html').as_posix()}")
        facts = _page_facts(driver, WebDriverWait, By)
        facts["colab_links"] = len(driver.find_elements(By.CSS_SELECTOR, f'a[href="{course.colab_url(lesson)}"]'))
        facts["video_line"] = driver.execute_script(
            "const p = [...document.querySelectorAll('p')].find(e => e.textContent.trim().startsWith('Video:'));"
            "return p ? p.textContent.trim() : null;")
        report["lesson_page"] = facts
        _shot(driver, artefacts / "lesson.png", report)
        driver.execute_script(
            "const m = document.querySelector('.cell_output img');"
            "if (m) m.scrollIntoView({block: 'center'});")
        time.sleep(0.3)
        _shot(driver, artefacts / "lesson-figure.png", report)
        driver.execute_script(
            "const m = document.querySelector('mjx-container[display=\"true\"]') || "
            "document.querySelector('mjx-container');"
            "if (m) m.scrollIntoView({block: 'center'});")
        time.sleep(0.3)
        _shot(driver, artefacts / "lesson-equation.png", report)
        driver.get(f"{base}/search.html?q=attention")
        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results ul.search li")
            or "did not match" in d.find_element(By.ID, "search-results").text)
        report["search"] = {"query": "attention",
                            "results": len(driver.find_elements(By.CSS_SELECTOR, "#search-results ul.search li"))}
        _shot(driver, artefacts / "search.png", report)
    finally:
        driver.quit()
        server.shutdown()
    (artefacts / "browser-report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """The built site over HTTP, without a log line per request."""

    def log_message(self, *_):
        pass


def _page_facts(driver, wait_cls, by) -> dict:
    """Title, rendered equations (MathJax's elements after its typesetting finished), images that loaded."""
    wait_cls(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    wait_cls(driver, 60).until(lambda d: d.execute_script(
        "return !window.MathJax || !document.querySelector('.math') || "
        "(MathJax.startup && MathJax.startup.document && MathJax.startup.promise && "
        "document.querySelectorAll('mjx-container').length > 0)"))
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "if (window.MathJax && MathJax.startup && MathJax.startup.promise) MathJax.startup.promise.then(() => "
        "done(true)); else done(false);")
    return driver.execute_script("""
        const imgs = [...document.querySelectorAll('.cell_output img')];
        return {
          title: document.title,
          h1: (document.querySelector('h1') || {}).textContent || null,
          math_source: document.querySelectorAll('.math').length,
          equations: document.querySelectorAll('mjx-container').length,
          equation_errors: document.querySelectorAll('mjx-merror').length,
          figures: imgs.length,
          figures_loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
          broken_images: [...document.images].filter(i => i.complete && i.naturalWidth === 0).map(i => i.src),
          table_rows: document.querySelectorAll('table tbody tr').length,
          nav_links: document.querySelectorAll('nav.bd-links a').length,
        };""")


def _shot(driver, path: Path, report: dict) -> None:
    driver.save_screenshot(str(path))
    report["screenshots"][path.stem] = str(path)


# --- command line ----------------------------------------------------------------------------------------------
def main(root: Path, out: str | None, check_browser: bool) -> int:
    """`python -m roadmap_tools site [--out DIR] [--browser]`: build and check; with --browser, the Chromium checks
    on the built site too."""
    out_dir = Path(out).resolve() if out else root / OUT
    started = time.perf_counter()
    problems = build(root, out_dir)
    seconds = time.perf_counter() - started
    for problem in problems:
        print("PROBLEM", problem)
    if problems:
        print(f"the site has {len(problems)} problems (built in {seconds:.0f} s)")
        return 1
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    pages = len([p for p in out_dir.rglob("*.html") if "_static" not in p.relative_to(out_dir).parts])
    print(f"site built in {seconds:.0f} s into {out_dir}: {pages} pages, {size / 1e6:.1f} MB; links and lesson "
          "pages checked")
    if check_browser:
        report = browser(root, out_dir)
        print(json.dumps(report, indent=1))
        bad = browser_problems(report)
        for problem in bad:
            print("PROBLEM", problem)
        return 1 if bad else 0
    return 0


def browser_problems(report: dict) -> list[str]:
    """What the browser report shows wrong: no title, an equation not rendered, a figure not loaded, the Colab
    link or the video line missing, a search without results."""
    problems = []
    home, page = report["home"], report["lesson_page"]
    if "Roadmap" not in (home["title"] or "") or home["table_rows"] < 1:
        problems.append(f"home page: title {home['title']!r}, {home['table_rows']} roadmap rows")
    for name, facts in (("home page", home), ("lesson page", page)):
        if facts["math_source"] and (facts["equations"] < 1 or facts["equation_errors"]):
            problems.append(f"{name}: {facts['math_source']} equations, {facts['equations']} rendered, "
                            f"{facts['equation_errors']} MathJax errors")
        if facts["broken_images"]:
            problems.append(f"{name}: images that did not load: {facts['broken_images']}")
    heading = (page["h1"] or "").strip().rstrip("#").strip()
    if not heading or heading not in page["title"]:
        problems.append(f"lesson page: title {page['title']!r} and heading {page['h1']!r}")
    if page["equations"] < 1:
        problems.append("lesson page: no rendered equation")
    if page["figures"] < 1 or page["figures_loaded"] < page["figures"]:
        problems.append(f"lesson page: {page['figures_loaded']} of {page['figures']} figures loaded")
    if page["colab_links"] < 1:
        problems.append("lesson page: no Open in Colab link to the notebook")
    if not page["video_line"]:
        problems.append("lesson page: no 'Video:' line")
    if report["search"]["results"] < 1:
        problems.append("search: no result for 'attention'")
    return problems
