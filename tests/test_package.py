"""Unit tests of the helper package: config, data, results, lessons, checks, scaffold, slug, runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest

from llm_roadmap.config import pick_dtype, resolve_size, seed_everything, trainer_precision
from llm_roadmap.data import FullConfigUnavailable, load_hub_dataset, pydoc_text, pydoc_topics, stdlib_docstrings
from llm_roadmap.report import RESULTS_MIME, record_results, results_from_notebook
from roadmap_tools import checks, course, roadmap, scaffold
from roadmap_tools.lessons import lessons, select

ROOT = Path(__file__).resolve().parents[1]


# --- config -------------------------------------------------------------------------------------------------------
def test_resolve_size(monkeypatch):
    monkeypatch.delenv("LLM_ROADMAP_SIZE", raising=False)
    assert resolve_size("small") == "small" and resolve_size("full") == "full"
    import torch

    assert resolve_size("auto") == ("full" if torch.cuda.is_available() else "small")
    monkeypatch.setenv("LLM_ROADMAP_SIZE", "small")
    assert resolve_size("auto") == "small"
    assert resolve_size("full") == "full", "an explicit SIZE wins over the environment"
    with pytest.raises(ValueError, match="SIZE must be"):
        resolve_size("medium")
    monkeypatch.setenv("LLM_ROADMAP_SIZE", "huge")
    with pytest.raises(ValueError, match="LLM_ROADMAP_SIZE"):
        resolve_size("auto")


def test_seed_everything_repeats_all_generators():
    import random

    import torch

    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_everything(3)
    first = draw()
    seed_everything(3)
    assert draw() == first
    seed_everything(4)
    assert draw() != first


def test_pick_dtype_cpu():
    import torch

    assert pick_dtype("cpu") == torch.float32
    assert trainer_precision("cpu") == {"bf16": False, "fp16": False, "use_cpu": True}


def test_trainer_precision_follows_the_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a T4
    assert trainer_precision("cuda") == {"bf16": False, "fp16": True, "use_cpu": False}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # an A100, an H100
    assert trainer_precision("cuda") == {"bf16": True, "fp16": False, "use_cpu": False}


# --- data ---------------------------------------------------------------------------------------------------------
def test_offline_text_is_real_and_stable():
    topics = pydoc_topics()
    assert len(topics) > 50 and "for" in topics
    text = pydoc_text()
    assert len(text) > 300_000 and "The \"for\" statement" in text
    assert pydoc_text() == text
    doc = stdlib_docstrings(max_chars=50_000)
    assert len(doc) == 50_000 and doc == stdlib_docstrings(max_chars=50_000)


def test_hub_loader_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FullConfigUnavailable, match="SIZE='small'"):
        load_hub_dataset("karpathy/tiny_shakespeare")


# --- results ------------------------------------------------------------------------------------------------------
def test_record_results_roundtrip(capsys):
    import torch

    clean = record_results(loss=torch.tensor(1.23456789), acc=np.float32(0.5), name="x", n=3)
    assert clean == {"loss": 1.23457, "acc": 0.5, "name": "x", "n": 3}
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("display_data", data={RESULTS_MIME: {"loss": 2.0}, "text/plain": "x"}),
                    nbformat.v4.new_output("display_data", data={RESULTS_MIME: {"loss": 1.0, "acc": 0.9}})]
    nb.cells = [cell]
    assert results_from_notebook(nb) == {"loss": 1.0, "acc": 0.9}


def test_scaffolded_lesson_passes_static_checks(tmp_course, add_lesson):
    rel = add_lesson(tmp_course)
    assert checks.check_notebook(tmp_course, rel) == []
    assert checks.video_files(tmp_course) == []
    assert checks.markdown_links(tmp_course) == []
    assert roadmap.readme_is_fresh(tmp_course)
    assert [lesson.path for lesson in lessons(tmp_course)] == [rel]
    assert select(tmp_course, ["1"]) == select(tmp_course, ["phase01_foundations"]) == lessons(tmp_course)
    with pytest.raises(ValueError, match="names no lesson"):
        select(tmp_course, ["phase99"])


def test_checks_catch_broken_notebooks(tmp_course, add_lesson):
    rel = add_lesson(tmp_course)
    path = tmp_course / rel
    pristine = nbformat.read(path, as_version=4)

    def problems_after(edit) -> str:
        nb = nbformat.read(path, as_version=4)
        edit(nb)
        nbformat.write(nb, path)
        found = checks.check_notebook(tmp_course, rel)
        nbformat.write(pristine, path)
        return "\n".join(found)

    def stale_count(nb):
        nb.cells[-1].execution_count = 7

    def error_output(nb):
        nb.cells[-1].outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="boom", traceback=[])]

    def wrong_badge(nb):
        nb.cells[0].source = nb.cells[0].source.replace("01_demo.ipynb", "02_other.ipynb")

    def no_parameters(nb):
        for cell in nb.cells:
            cell.metadata.pop("tags", None)

    def install_outside_colab(nb):
        nb.cells.append(nbformat.v4.new_code_cell("%pip install foo"))

    def wrong_kernel(nb):
        nb.metadata["kernelspec"]["name"] = "julia"

    assert "not 1.." in problems_after(stale_count)
    assert "committed error output" in problems_after(error_output)
    assert "does not match this notebook" in problems_after(wrong_badge)
    assert "0 cells tagged 'parameters'" in problems_after(no_parameters)
    assert "outside the Colab-only setup cell" in problems_after(install_outside_colab)
    assert "kernelspec" in problems_after(wrong_kernel)
    assert checks.check_notebook(tmp_course, rel) == []


def test_video_file_and_readme_consistency(tmp_course, add_lesson):
    rel = add_lesson(tmp_course)
    (tmp_course / rel).rename(tmp_course / "phase01_foundations" / "99_orphan.ipynb")
    found = "\n".join(checks.video_files(tmp_course))
    assert "lists 01_demo.ipynb, which does not exist" in found
    assert "99_orphan.ipynb has no entry" in found and "does not link to 99_orphan.ipynb" in found
    (tmp_course / "phase02_ml_dl" / "README.md").write_text("see [missing](nowhere.md)\n")
    assert any("nowhere.md" in p for p in checks.markdown_links(tmp_course))


def test_stale_readme_is_detected(tmp_course, add_lesson):
    add_lesson(tmp_course)
    readme = tmp_course / "README.md"
    readme.write_text(readme.read_text().replace("1.1 Demo", "1.1 Renamed"))
    assert not roadmap.readme_is_fresh(tmp_course)
    roadmap.write_readme(tmp_course)
    assert roadmap.readme_is_fresh(tmp_course)


def test_slug_rewrite_changes_every_badge_and_install_line(tmp_course, add_lesson, monkeypatch):
    rel = add_lesson(tmp_course)
    (tmp_course / "roadmap_tools").mkdir()
    shutil.copy(ROOT / "roadmap_tools" / "course.py", tmp_course / "roadmap_tools" / "course.py")
    changed = scaffold.rewrite_slug(tmp_course, "someone/their-fork")
    assert tmp_course / rel in changed and tmp_course / "README.md" in changed
    text = (tmp_course / rel).read_text() + (tmp_course / "README.md").read_text()
    assert course.REPO_SLUG not in text
    assert "github/someone/their-fork/blob/main/phase01_foundations/01_demo.ipynb" in text
    assert "git+https://github.com/someone/their-fork@main" in text
    assert 'REPO_SLUG = "someone/their-fork"' in (tmp_course / "roadmap_tools" / "course.py").read_text()
    monkeypatch.setattr(course, "REPO_SLUG", "someone/their-fork")
    assert checks.check_notebook(tmp_course, rel) == []
    with pytest.raises(ValueError):
        scaffold.rewrite_slug(tmp_course, "not a slug")


def test_runner_keeps_going_past_a_failing_notebook(tmp_course, add_lesson, monkeypatch):
    from roadmap_tools.__main__ import main

    add_lesson(tmp_course, "from llm_roadmap.report import record_results\nrecord_results(answer=SEED + 41)",
                name="01_ok.ipynb")
    add_lesson(tmp_course, "x = 1\n\nassert x == 2, 'x is not two'", name="02_broken.ipynb")
    add_lesson(tmp_course, "print(SIZE)", name="03_after.ipynb")
    monkeypatch.chdir(tmp_course)
    code = main(["run", "phase01_foundations", "-p", "SEED=1"])
    assert code == 1
    summary = (tmp_course / "runs" / "small" / "summary.md").read_text()
    assert "| phase01_foundations/01_ok.ipynb | ok |" in summary and "answer=42" in summary
    assert "| phase01_foundations/03_after.ipynb | ok |" in summary, "the run stopped at the failing notebook"
    assert "`phase01_foundations/02_broken.ipynb`, cell 4: AssertionError: x is not two" in summary


def test_full_config_downloads_fail_clearly_offline(monkeypatch, tmp_path):
    from llm_roadmap.data import download_text, tiny_shakespeare

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LLM_ROADMAP_CACHE", str(tmp_path))
    with pytest.raises(FullConfigUnavailable, match="SIZE='small'"):
        tiny_shakespeare()
    # a cached copy is used without the network
    import hashlib

    url = "https://example.invalid/corpus.txt"
    (tmp_path / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".txt")).write_text("cached text")
    assert download_text(url, "a corpus") == "cached text"


def test_install_detection_ignores_messages(tmp_course, add_lesson):
    rel = add_lesson(tmp_course, 'print("run `pip install vllm` on a GPU machine first")')
    assert checks.check_notebook(tmp_course, rel) == []
    sneaky = 'import subprocess, sys\nsubprocess.run([sys.executable, "-m", "pip", "install", "x"])'
    rel2 = add_lesson(tmp_course, sneaky, name="02_sneaky.ipynb")
    assert any("outside the Colab-only" in p for p in checks.check_notebook(tmp_course, rel2))


def test_capped_full_config_keeps_the_full_path_with_small_counts(monkeypatch):
    from llm_roadmap.config import pick_config

    configs = {"small": dict(steps=30, model=None, lr=1e-3, tiny=dict(n_layer=2, d=64), fp16=False, lens=(8, 16)),
               "full": dict(steps=5000, model="org/name", lr=3e-4, tiny=dict(n_layer=12, d=768), fp16=True, extra=7,
                            lens=(512, 1024, 2048))}
    monkeypatch.delenv("LLM_ROADMAP_CAPPED", raising=False)
    assert pick_config(configs, "full") is configs["full"]
    monkeypatch.setenv("LLM_ROADMAP_CAPPED", "1")
    assert pick_config(configs, "full") == dict(steps=30, model="org/name", lr=3e-4, tiny=dict(n_layer=2, d=64),
                                                fp16=True, extra=7, lens=(8, 16))
    assert pick_config(configs, "small") is configs["small"]
    with pytest.raises(ValueError, match="no config named"):
        pick_config(configs, "medium")


def test_python_docs_questions_are_grounded_in_the_help_topics():
    import re
    from collections import Counter

    from llm_roadmap.data import _question_problem, python_docs_questions

    questions = python_docs_questions()
    topics = pydoc_topics()
    kinds = Counter(q["kind"] for q in questions)
    assert len(questions) >= 60 and min(kinds["paraphrase"], kinds["multi"], kinds["unanswerable"]) >= 10, kinds
    assert len({q["id"] for q in questions}) == len(questions), "duplicate ids"
    for q in questions:
        for item in q["evidence"]:
            assert item["quote"] in topics.get(item["topic"], ""), f"{q['id']}: quote not verbatim in {item['topic']!r}"
        if q["kind"] == "unanswerable":
            assert q["answer"] is None and q["evidence"] == [], q["id"]
        else:
            answer = " ".join(q["answer"].split()).lower()
            assert any(answer in " ".join(e["quote"].split()).lower() for e in q["evidence"]), q["id"]
        if q["kind"] == "multi":
            assert len(q["evidence"]) >= 2, q["id"]

    # Paraphrases must really be reworded: the share of a question's content words found in its evidence is lower
    stopwords = {"what", "which", "when", "where", "does", "that", "this", "with", "from", "into", "there", "their",
                 "they", "have", "been", "will", "would", "should", "could", "than", "then", "also", "about", "some",
                 "each", "other", "only", "both", "after", "before", "such", "many", "much", "more", "most", "python"}

    def content_words(text: str) -> set[str]:
        return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4 and w not in stopwords}

    def overlap(q: dict) -> float:
        words = content_words(q["question"])
        return len(words & content_words(" ".join(e["quote"] for e in q["evidence"]))) / max(len(words), 1)

    means = {kind: float(np.mean([overlap(q) for q in questions if q["kind"] == kind]))
             for kind in ("lookup", "paraphrase")}
    print(f"content-word overlap with evidence: lookup {means['lookup']:.3f}, paraphrase {means['paraphrase']:.3f}")
    assert means["paraphrase"] < means["lookup"] - 0.15, means

    # The validator catches planted mistakes, naming what is wrong
    good = next(q for q in questions if q["kind"] == "multi")
    assert _question_problem(good) is None
    planted = {"answer not in its quotes": dict(good, answer="no such words anywhere"),
               "multi with one quote": dict(good, evidence=good["evidence"][:1]),
               "unanswerable with an answer": dict(good, kind="unanswerable"),
               "unknown kind": dict(good, kind="trivia"),
               "quote too short": dict(good, evidence=[{"topic": "assert", "quote": "assert"}] * 2)}
    for name, record in planted.items():
        assert _question_problem(record) is not None, f"the validator missed: {name}"
