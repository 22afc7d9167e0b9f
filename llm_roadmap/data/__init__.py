"""Data that is always there offline (Python's own documentation), and the full config's hub loaders.

The hub loaders have one switch for tests: when LLM_ROADMAP_STANDIN names a folder built by the course's stand-in hub
(a command of the course's tooling, in the repository), data sets come from its tiny parquet files under the same
ids, splits and columns, and models from its Hugging Face cache (HF_HUB_CACHE), so a full config's code path runs
offline.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys

# Modules whose import has side effects (opening windows, printing, starting servers) or is slow.
_SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "test", "pydoc_data",
                 "ensurepip", "venv", "__main__", "xxsubtype", "_xxtestfuzz", "msilib", "winreg", "winsound"}


def pydoc_topics() -> dict[str, str]:
    """Python's help topics (the text behind `help("FOR")`): {topic: text}, in sorted topic order."""
    from pydoc_data.topics import topics

    return {name: topics[name] for name in sorted(topics)}


def pydoc_text() -> str:
    """All of Python's help topics as one text (~465 K characters of real English technical prose)."""
    return "\n\n".join(pydoc_topics().values())


def stdlib_docstrings(max_chars: int | None = None) -> str:
    """Docstrings of the standard library's pure-Python modules, in a fixed order (~1.6 MB in all)."""
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names
                   and not m.name.startswith("_") and m.name not in _SKIP_MODULES)
    chunks: list[str] = []
    total = 0
    seen: set[int] = set()
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - platform-specific modules legitimately fail to import; skip them
            continue
        members = [v for _, v in sorted(vars(module).items()) if inspect.isclass(v) or inspect.isfunction(v)]
        for obj in [module, *members]:
            if getattr(obj, "__module__", name) not in (name, None) and obj is not module:
                continue
            doc = inspect.getdoc(obj)
            if not doc or id(doc) in seen:
                continue
            seen.add(id(doc))
            chunks.append(doc)
            total += len(doc) + 2
            if max_chars is not None and total >= max_chars:
                return "\n\n".join(chunks)[:max_chars]
    return "\n\n".join(chunks)


def hub_offline() -> bool:
    """True when the Hugging Face hub is switched off (HF_HUB_OFFLINE) for this process."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}


class FullConfigUnavailable(RuntimeError):
    """The full config needs something this machine lacks (a GPU, the network, the hub)."""


STANDIN_ENV = "LLM_ROADMAP_STANDIN"


def standin_folder():
    """The stand-in hub's folder when LLM_ROADMAP_STANDIN names one, else None."""
    from pathlib import Path

    folder = os.environ.get(STANDIN_ENV, "").strip()
    return Path(folder) if folder else None


def require_hub(what: str) -> None:
    """Fail early, with what to do, when a full-config resource cannot be reached."""
    if hub_offline() and standin_folder() is None:
        raise FullConfigUnavailable(
            f"{what} comes from the Hugging Face hub, which is switched off here (HF_HUB_OFFLINE=1). "
            "The full config needs a GPU and network (e.g. Colab); run with SIZE='small'.")


def load_hub_dataset(path: str, *args, **kwargs):
    """`datasets.load_dataset` for the full config, with a clear error when the hub cannot be reached."""
    require_hub(f"the data set {path!r}")
    from datasets import load_dataset

    if standin_folder() is not None:
        return _load_standin_dataset(path, *args, **kwargs)
    try:
        return load_dataset(path, *args, **kwargs)
    except (ConnectionError, OSError) as err:
        raise FullConfigUnavailable(
            f"could not download the data set {path!r} ({type(err).__name__}: {err}). "
            "The full config needs network access; run with SIZE='small'.") from err


def _load_standin_dataset(path: str, name: str | None = None, split: str | None = None, **kwargs):
    """The stand-in of hub data set `path` (subset `name`): its parquet files, one per split."""
    from datasets import load_dataset

    folder = standin_folder() / "datasets" / path.replace("/", "--")
    if name is not None:
        folder = folder / name
    files = {file.stem: str(file) for file in sorted(folder.glob("*.parquet"))}
    if not files:
        raise FullConfigUnavailable(f"the stand-in hub at {standin_folder()} has no data set {path!r}"
                                    + (f" (subset {name!r})" if name else "")
                                    + ": add it to roadmap_tools/standin_hub.py and rebuild the stand-in hub")
    return load_dataset("parquet", data_files=files, split=split)


TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def download_text(url: str, what: str, cache_dir: str | os.PathLike | None = None, timeout: float = 30.0) -> str:
    """A text file from the web for the full config, cached on disk; a clear error when there is no network."""
    import hashlib
    import urllib.error
    import urllib.request
    from pathlib import Path

    folder = Path(cache_dir or os.environ.get("LLM_ROADMAP_CACHE", Path.home() / ".cache" / "llm_roadmap"))
    path = folder / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".txt")
    if path.exists():
        return path.read_text(encoding="utf-8")
    if hub_offline():
        raise FullConfigUnavailable(f"{what} must be downloaded, and this process is offline (HF_HUB_OFFLINE=1). "
                                    "The full config needs a GPU and network (e.g. Colab); run with SIZE='small'.")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as err:
        raise FullConfigUnavailable(f"could not download {what} from {url} ({err}). "
                                    "The full config needs network access; run with SIZE='small'.") from err
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return text


def tiny_shakespeare() -> str:
    """Karpathy's TinyShakespeare (1.1 M characters; the file nanoGPT's char-level example uses), for full configs."""
    return download_text(TINY_SHAKESPEARE_URL, "TinyShakespeare")


QUESTION_KINDS = ("lookup", "paraphrase", "multi", "unanswerable")


def python_docs_questions() -> list[dict]:
    """A labelled question set over Python's help topics (`pydoc_topics()`), for evaluating retrieval and RAG.

    Each record: `id`, `question`, `answer` (a short span of the evidence, None when unanswerable), `aliases`
    (other acceptable answers), `evidence` (a list of {"topic", "quote"}: a verbatim 40-300 character excerpt of
    `pydoc_topics()[topic]` that contains the answer) and `kind`: "lookup" (worded like the passage), "paraphrase"
    (reworded so that few of its words appear in the passage), "multi" (needs two passages) or "unanswerable" (on
    topic, but the help topics do not say). Written by hand for this course about details of the documentation's
    text rather than common knowledge; every quote was checked to be verbatim in the help topics of Python 3.11 and
    3.13 (the course's test re-checks them on the running Python).
    """
    import json
    from importlib import resources

    text = resources.files(__package__).joinpath("python_docs_qa.jsonl").read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    seen: set[str] = set()
    for number, record in enumerate(records, 1):
        problem = _question_problem(record)
        rid = record.get("id", f"line {number}") if isinstance(record, dict) else f"line {number}"
        if problem is None and rid in seen:
            problem = "duplicate id"
        if problem is not None:
            raise ValueError(f"python_docs_qa.jsonl, record {rid}: {problem}")
        seen.add(rid)
    return records


def _question_problem(record) -> str | None:
    """What is wrong with one question record, or None when it is well formed."""
    fields = {"id", "question", "answer", "aliases", "evidence", "kind"}
    if not isinstance(record, dict) or set(record) != fields:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        return f"expected exactly the fields {sorted(fields)}, got {keys}"
    if not isinstance(record["id"], str) or not record["id"]:
        return "id must be a non-empty string"
    if not isinstance(record["question"], str) or not record["question"].strip():
        return "question must be a non-empty string"
    if record["kind"] not in QUESTION_KINDS:
        return f"kind {record['kind']!r} is not one of {QUESTION_KINDS}"
    if not isinstance(record["aliases"], list) or not all(isinstance(a, str) for a in record["aliases"]):
        return "aliases must be a list of strings"
    evidence = record["evidence"]
    if not isinstance(evidence, list):
        return "evidence must be a list"
    for item in evidence:
        if not isinstance(item, dict) or set(item) != {"topic", "quote"}:
            return f"each evidence item needs exactly 'topic' and 'quote', got {item!r}"
        if not isinstance(item["topic"], str) or not isinstance(item["quote"], str):
            return "evidence topic and quote must be strings"
        if not 40 <= len(item["quote"]) <= 300:
            return f"quote from {item['topic']!r} is {len(item['quote'])} characters (expected 40-300)"
    if record["kind"] == "unanswerable":
        if record["answer"] is not None or evidence:
            return "an unanswerable question has answer null and no evidence"
        return None
    if not isinstance(record["answer"], str) or not record["answer"].strip():
        return "answer must be a non-empty string"
    if not evidence:
        return "an answerable question needs evidence"
    if record["kind"] == "multi" and len(evidence) < 2:
        return "a multi question needs at least two evidence quotes"
    answer = " ".join(record["answer"].split()).lower()
    if not any(answer in " ".join(item["quote"].split()).lower() for item in evidence):
        return f"answer {record['answer']!r} appears in none of its quotes"
    return None
