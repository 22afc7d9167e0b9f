"""Static checks of the course: each returns a list of problems (empty when all is well)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from . import course
from .execute import denied_in
from .lessons import VIDEO_FILE, notebooks_on_disk, read_video_file
from .runner import METADATA_KEY, RUNTIME_PHRASE, header_seconds

MAX_NOTEBOOK_BYTES = 1_500_000
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# an install command, not the words "pip install" inside a message: %pip / !pip lines, or ["pip", "install"] lists
_INSTALLS = re.compile(r"^\s*[%!]\s*pip\s+install|[\"']pip[\"']\s*,\s*[\"']install[\"']", re.MULTILINE)
_COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^)\s\"']+")


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def check_notebook(root: Path, rel_path: str) -> list[str]:
    """Structure of one notebook: format, kernel, parameters, badge, setup cell, clean committed outputs, size."""
    path = root / rel_path
    problems: list[str] = []
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        problems.append(f"{size / 1e6:.2f} MB on disk (limit 1.5 MB): shrink figures or printed output")
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # noqa: BLE001 - any parse/validation failure is the finding itself
        return problems + [f"not a valid notebook: {type(err).__name__}: {err}"]
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel != "python3":
        problems.append(f"kernelspec is {kernel!r}, expected 'python3'")
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(params) != 1:
        problems.append(f"{len(params)} cells tagged 'parameters' (exactly one is needed)")
    if any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells):
        problems.append("a papermill 'injected-parameters' cell is committed: refresh with `run --inplace`")
    # The badge: the first Markdown cell links to this notebook's own Colab address.
    expected = course.colab_url(rel_path)
    markdown = "\n".join(_source(c) for c in nb.cells if c.cell_type == "markdown")
    badges = _COLAB_LINK.findall(markdown)
    if BADGE_IMAGE not in markdown or not badges:
        problems.append("no 'Open in Colab' badge")
    for url in badges:
        if url != expected:
            problems.append(f"Colab link {url} does not match this notebook; expected {expected}")
    # The setup cell installs the course package with the lesson's extras, only in Colab, and covers its imports.
    setup = [c for c in code if 'google.colab" in sys.modules' in _source(c)]
    if not setup:
        problems.append('no Colab-only setup cell (a code cell testing `"google.colab" in sys.modules`)')
    else:
        problems += colab_problems(nb, _source(setup[0]))
    for cell in code:
        src = _source(cell)
        if _INSTALLS.search(src) and 'google.colab" in sys.modules' not in src:
            problems.append("a cell installs packages outside the Colab-only setup cell")
    # Outputs committed from a clean top-to-bottom run.
    counts = [c.execution_count for c in code if _source(c).strip()]
    if counts and counts != list(range(1, len(counts) + 1)):
        problems.append(f"execution counts {counts} are not 1..{len(counts)}: commit a clean run (`run --inplace`)")
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i} has a committed error output ({out.get('ename')}: {out.get('evalue')})")
    problems += [f"a committed output holds a warning that means wrong results: {w}" for w in denied_in(nb)]
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", "")) if out.get("name") == "stderr" else ""
            if "warn" in text.lower():
                problems.append(f"cell {i} has a warning in a committed stderr output ({text.strip()[:120]!r}): fix "
                                "its cause, or catch it where the lesson explains why it is harmless")
    problems += runtime_problems(nb)
    problems += precision_problems(nb)
    return problems


TRAINER_CONFIGS = {"TrainingArguments", "Seq2SeqTrainingArguments", "SFTConfig", "DPOConfig", "GRPOConfig",
                   "RewardConfig", "PPOConfig", "KTOConfig", "ORPOConfig", "CPOConfig"}


def _code_cells_ast(nb):
    import ast

    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = [line for line in _source(cell).splitlines() if not line.lstrip().startswith(("%", "!"))]
        try:
            yield ast.parse("\n".join(lines))
        except SyntaxError:
            continue


def precision_problems(nb) -> list[str]:
    """Every Trainer/TRL config must take its precision flags from llm_roadmap.config.trainer_precision.

    TRL's configs default to bf16=True: a notebook that switches it off only for the CPU runs emulated bf16 on a T4
    (or fails) in the full config, which a CPU never executes. The rule is checked statically for that reason: a
    `**trainer_precision(device)` splat in the call, directly or through a variable assigned from it.
    """
    import ast

    trees = list(_code_cells_ast(nb))
    assigned: dict[str, str] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                assigned[node.targets[0].id] = ast.unparse(node.value)

    def uses_rule(text: str, depth: int = 3) -> bool:
        if "trainer_precision(" in text:
            return True
        names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
        return depth > 0 and any(uses_rule(assigned[name], depth - 1) for name in assigned if name in names)

    problems = []
    for tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name in TRAINER_CONFIGS and not any(k.arg is None and uses_rule(ast.unparse(k.value))
                                                   for k in node.keywords):
                problems.append(f"{name}(...) does not take **trainer_precision(device) (llm_roadmap.config): TRL "
                                "defaults to bf16, which the full config on a GPU then gets wrong")
    return problems


def colab_problems(nb, setup: str) -> list[str]:
    """The setup cell is the course's template for its extras (install line, placeholder stop, pip errors shown),
    its extras cover every import Colab lacks, and the config goes through pick_config (for the full-path run)."""
    from .colab import import_problems, setup_extras
    from .scaffold import setup_cell_source

    extras = setup_extras(setup)
    if extras is None:
        return [f"the Colab setup cell does not install {course.install_spec(extras=['...'])!r}"]
    problems = []
    if setup.strip() != setup_cell_source(extras).strip():
        problems.append(f"the Colab setup cell is not the course's template for extras {extras}: replace it with "
                        f"roadmap_tools.scaffold.setup_cell_source({extras})")
    problems += import_problems(nb, setup)
    code = "\n".join(_source(c) for c in nb.cells if c.cell_type == "code")
    if "CONFIGS" in code and "pick_config(CONFIGS" not in code:
        problems.append("the config is not chosen with llm_roadmap.config.pick_config(CONFIGS, size), which the "
                        "full-path run needs to cap it")
    return problems


def runtime_problems(nb) -> list[str]:
    """The header's small-config runtime must be the one the harness measured when it made the committed outputs."""
    measured = nb.metadata.get(METADATA_KEY, {}).get("small_cpu_s")
    if measured is None:
        return ["no measured runtime in the metadata: refresh the outputs with `make refresh ARGS=<notebook>`"]
    header = _source(nb.cells[0]) if nb.cells else ""
    found = RUNTIME_PHRASE.search(header)
    want = f"small config ~{header_seconds(measured)} s on a 2-core CPU"
    if not found:
        return [f"the header lacks the runtime phrase '{want}'"]
    if found.group(0) != want:
        return [f"the header says '{found.group(0)}' but the harness measured {measured} s of CPU time: '{want}' "
                "(`make refresh` writes it)"]
    return []


def markdown_links(root: Path) -> list[str]:
    """Relative links in the course's Markdown files and notebook Markdown cells that point to nothing."""
    problems = []
    sources: list[tuple[Path, str]] = [(p, p.read_text()) for p in sorted(root.glob("*.md"))]
    for folder in course.PHASE_DIRS:
        sources += [(p, p.read_text()) for p in sorted((root / folder).glob("*.md"))]
        for nb_path in sorted((root / folder).glob("*.ipynb")):
            nb = nbformat.read(nb_path, as_version=4)
            sources.append((nb_path, "\n".join(_source(c) for c in nb.cells if c.cell_type == "markdown")))
    for path, text in sources:
        for target in _LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # URLs, mailto:, in-page anchors
            file_part = target.split("#", 1)[0]
            if file_part and not (path.parent / file_part).exists():
                problems.append(f"{path.relative_to(root)}: link to {target} points to nothing")
    return problems


def video_files(root: Path) -> list[str]:
    """Every phase has a video file; each entry's notebook exists; each notebook has an entry and a README link.

    Each check runs whatever the others found: a broken video file in one phase does not hide an unlisted
    notebook in another."""
    problems = []
    listed_paths: dict[str, set[str]] = {}  # phase folder -> notebooks its video file lists (readable files only)
    for folder in course.PHASE_DIRS:
        phase_dir = root / folder
        if not (phase_dir / "README.md").exists():
            problems.append(f"{folder}/README.md is missing")
        try:
            entries = read_video_file(phase_dir)
        except (OSError, ValueError) as err:
            problems.append(str(err))
            continue
        listed = [e["notebook"] for e in entries]
        listed_paths[folder] = set(listed)
        if len(set(listed)) != len(listed):
            problems.append(f"{folder}/{VIDEO_FILE} lists a notebook twice")
        for name in listed:
            if not (phase_dir / name).exists():
                problems.append(f"{folder}/{VIDEO_FILE} lists {name}, which does not exist")
    for rel in notebooks_on_disk(root):
        folder, name = rel.split("/", 1)
        if folder in listed_paths and name not in listed_paths[folder]:
            problems.append(f"{rel} has no entry in its phase's {VIDEO_FILE}")
        readme = root / folder / "README.md"
        if readme.exists() and f"]({name})" not in readme.read_text():
            problems.append(f"{folder}/README.md does not link to {name}")
    return problems


def chapter_problems(root: Path) -> list[str]:
    """Each videos.yaml entry's chapters: valid, increasing timestamps naming `## ` sections the notebook has; once
    the video's URL is set, the notebook's header lists them as videos.yaml says (`python -m roadmap_tools
    roadmap` writes it)."""
    from . import chapters

    problems = []
    for folder in course.PHASE_DIRS:
        try:
            entries = read_video_file(root / folder)
        except (OSError, ValueError):
            continue  # video_files reports it
        for entry in entries:
            path = root / folder / entry["notebook"]
            if "chapters" not in entry or not path.exists():
                continue
            cells = chapters.notebook_cells(path)
            found = chapters.problems(entry, chapters.section_headings(cells))
            problems += [f"{folder}/{VIDEO_FILE}: {p}" for p in found]
            if not found and cells:
                header = _source(cells[0])
                if chapters.header_with_chapters(header, entry) != header:
                    problems.append(f"{folder}/{entry['notebook']}: the header's chapter list differs from "
                                    f"{VIDEO_FILE}: run `python -m roadmap_tools roadmap`")
    return problems
