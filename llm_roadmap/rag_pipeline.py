"""Phase 5's RAG pipeline as one importable piece (lessons 5.2 and 5.3), for phase 10's RAG assistant.

`llm_roadmap.rag` holds the retrieval primitives (passages, `Embedder`, `BM25`, RRF, metrics); this module holds what
the two lessons build on top of them, each equal to the lesson's teaching copy
(tests/test_teaching_copies_rag_pipeline.py):

- chunking (5.2): `Chunk` spans, `recursive_chunks` (the lesson's retrieval corpus: split at paragraph, line,
  sentence, word boundaries, then merge up to a size), `fixed_chunks`, span relevance (`chunk_covers`,
  `chunk_relevance`, `quote_span`);
- retrieval (5.2, 5.3): `HybridRetriever` (dense + BM25 fused by reciprocal rank fusion), `rerank`, the
  `CrossEncoderReranker` wrapper and the `MaxSimReranker` (late interaction on the encoder's token vectors,
  `encode_tokens`);
- the answer (5.3): `build_prompt` with numbered sources, `parse_answer` (citations, the refusal `REFUSAL`),
  `generate_answers` (chat template, greedy, batched), the extractive reader (`extractive_answer`), the injection
  filter `filter_instructions`;
- the checks (5.3): `claims`, `citation_support` (citation precision), `is_faithful` (every content word of a claim
  is in the source it cites) and its broken twin `cites_existing_source`, `grade` (EM, F1, refusal, citation
  precision, faithfulness);
- `RAGPipeline`: chunks -> hybrid retrieval -> rerank -> filter -> reader, one `RAGAnswer` per question with the
  seconds spent in each stage.

Torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from llm_roadmap.rag import (
    BM25,
    bm25_tokenize,
    exact_match,
    normalize_answer,
    reciprocal_rank_fusion,
    token_f1,
    top_k,
)

# --- chunking (lesson 5.2) --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A retrievable unit: `key` is the text that is embedded and indexed, [start, end) of `topic` is what it
    returns (equal for every chunker here)."""

    topic: str
    start: int
    end: int
    key: str


def quote_span(quote: str, text: str) -> tuple[int, int]:
    """Where a quote sits in a text, whitespace-insensitively (quotes may re-wrap lines); ValueError if absent."""
    match = re.search(r"\s+".join(re.escape(word) for word in quote.split()), text)
    if match is None:
        raise ValueError(f"quote not found: {quote[:60]!r}")
    return match.span()


def chunk_covers(chunk: Chunk, span: tuple[str, int, int]) -> bool:
    """True when the chunk lies in the span's topic and covers at least half of the span's characters."""
    topic, start, end = span
    return chunk.topic == topic and min(chunk.end, end) - max(chunk.start, start) >= 0.5 * (end - start)


def chunk_relevance(chunks: Sequence[Chunk], spans: Sequence[tuple[str, int, int]]) -> list[set[int]]:
    """For each evidence span (topic, start, end), the ids of the chunks relevant to it (`chunk_covers`)."""
    return [{i for i, c in enumerate(chunks) if chunk_covers(c, span)} for span in spans]


def fixed_chunks(texts: Mapping[str, str], size: int, overlap: int) -> list[Chunk]:
    """Windows of `size` characters every `size - overlap` characters, per topic, blind to structure."""
    if not 0 <= overlap < size:
        raise ValueError(f"need 0 <= overlap < size, got overlap={overlap}, size={size}")
    step = size - overlap
    return [Chunk(t, s, min(s + size, len(x)), x[s:s + size])
            for t, x in texts.items() for s in range(0, max(len(x) - overlap, 1), step)]


def trim_span(texts: Mapping[str, str], topic: str, start: int, end: int) -> Chunk | None:
    """The span as a chunk without its surrounding whitespace (None when nothing is left)."""
    piece = texts[topic][start:end]
    lead = len(piece) - len(piece.lstrip())
    body = piece.strip()
    return Chunk(topic, start + lead, start + lead + len(body), body) if body else None


def split_spans(text: str, start: int, end: int, size: int,
                separators: Sequence[str] = ("\n\n", "\n", ". ", " ")) -> list[tuple[int, int]]:
    """LangChain-style recursive splitting of [start, end) of text into spans of at most `size` characters;
    separators stay with the piece before them; neighbouring pieces are merged greedily up to `size`."""
    if end - start <= size:
        return [(start, end)]
    if not separators:
        return [(s, min(s + size, end)) for s in range(start, end, size)]  # no separator left: hard cuts
    inner = [start + m.end() for m in re.finditer(re.escape(separators[0]), text[start:end])]
    cuts = [start] + [c for c in inner if c < end] + [end]
    out: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for a, b in zip(cuts, cuts[1:], strict=False):
        if b - a > size:  # a piece too big on its own: split it with the next separator
            out += ([current] if current else []) + split_spans(text, a, b, size, separators[1:])
            current = None
        elif current and b - current[0] > size:
            out.append(current)
            current = (a, b)
        else:
            current = (current[0], b) if current else (a, b)
    return out + ([current] if current else [])


def recursive_chunks(texts: Mapping[str, str], size: int = 600) -> list[Chunk]:
    """Lesson 5.2's retrieval corpus: every topic split recursively by structure, at most `size` characters a chunk,
    surrounding whitespace trimmed."""
    if size < 1:
        raise ValueError(f"size must be at least 1 character, got {size}")
    spans = [(t, s, e) for t, x in texts.items() for s, e in split_spans(x, 0, len(x), size)]
    return [c for c in (trim_span(texts, *span) for span in spans) if c]


# --- dense token vectors, reranking (lesson 5.2) ----------------------------------------------------------------------


def encode_tokens(embedder: Any, texts: Sequence[str], prefix: str = "") -> tuple[np.ndarray, list[np.ndarray]]:
    """Mean-pooled unit vectors (as `Embedder.encode`) and each text's unit token vectors, special tokens dropped."""
    import torch

    tok, model, device = embedder.tokenizer, embedder.model, embedder.device
    order = np.argsort([len(t) for t in texts], kind="stable")
    pooled = np.zeros((len(texts), embedder.dim), np.float32)
    tokens: list[np.ndarray] = [np.zeros((0, embedder.dim), np.float32)] * len(texts)
    with torch.inference_mode():
        for s in range(0, len(texts), embedder.batch_size):
            idx = order[s:s + embedder.batch_size]
            batch = tok([prefix + texts[i] for i in idx], padding=True, truncation=True,
                        max_length=embedder.max_length, return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled[idx] = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).cpu().numpy()
            special = torch.isin(batch["input_ids"], torch.tensor(tok.all_special_ids, device=device))
            keep = batch["attention_mask"].bool() & ~special
            unit = torch.nn.functional.normalize(hidden, dim=-1)
            for row, i in enumerate(idx):
                tokens[i] = unit[row][keep[row]].cpu().numpy()
    return pooled, tokens


def maxsim(query_tokens: np.ndarray, doc_tokens: np.ndarray) -> float:
    """ColBERT's late interaction: the sum over query tokens of the best cosine with any document token."""
    return float((query_tokens @ doc_tokens.T).max(1).sum())


def rerank(ranking: Sequence[int], score: Callable[[np.ndarray], np.ndarray], depth: int) -> np.ndarray:
    """The first `depth` ids reordered by `score(head)` (best first, stable), the rest left as they were."""
    head = np.asarray(ranking[:depth])
    scores = np.asarray(score(head))
    return np.concatenate([head[np.argsort(-scores, kind="stable")], np.asarray(ranking[depth:], dtype=head.dtype)])


class Reranker(Protocol):
    """Scores candidate texts for a query (higher = more relevant); `index` may precompute per-text work."""

    def scores(self, query: str, texts: Sequence[str]) -> np.ndarray: ...


class CrossEncoderReranker:
    """A cross-encoder (Nogueira & Cho 2019): query and text through one transformer, the first logit is the score.

    E.g. `cross-encoder/ms-marco-MiniLM-L6-v2`; `batch_size` candidates per forward pass."""

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: Any = None, max_length: int = 512,
                 batch_size: int = 64):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, dtype=dtype or torch.float32).to(device).eval()
        self.device, self.max_length, self.batch_size = device, max_length, batch_size

    def scores(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """The relevance logit of each (query, text) pair, float32."""
        import torch

        out = []
        for s in range(0, len(texts), self.batch_size):
            part = list(texts[s:s + self.batch_size])
            batch = self.tokenizer([query] * len(part), part, padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                out.append(self.model(**batch).logits[:, 0].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class MaxSimReranker:
    """Late interaction (ColBERT's MaxSim) on a bi-encoder's token vectors: `index` precomputes the texts' token
    vectors (indexing time); unindexed texts are encoded when first scored."""

    def __init__(self, embedder: Any):
        self.embedder = embedder
        self.token_vectors: dict[str, np.ndarray] = {}

    def index(self, texts: Sequence[str]) -> np.ndarray:
        """Token vectors of the texts (kept); returns their pooled vectors, equal to the dense index's."""
        pooled, tokens = encode_tokens(self.embedder, texts, self.embedder.passage_prefix)
        self.token_vectors.update(zip(texts, tokens, strict=True))
        return pooled

    def scores(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """MaxSim of the query against each text."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.token_vectors]
        if missing:
            self.index(missing)
        query_tokens = encode_tokens(self.embedder, [query], self.embedder.query_prefix)[1][0]
        return np.array([maxsim(query_tokens, self.token_vectors[t]) for t in texts], dtype=np.float64)


# --- hybrid retrieval (lessons 5.2, 5.3) ------------------------------------------------------------------------------


class HybridRetriever:
    """Dense (cosine with a bi-encoder) and BM25 rankings of the same texts, fused by reciprocal rank fusion.

    Without an `embedder` only BM25 is available (mode "bm25"). `vectors`: the texts' unit vectors if already
    computed (e.g. by `MaxSimReranker.index`), else the embedder encodes them as passages."""

    MODES = ("dense", "bm25", "hybrid")

    def __init__(self, texts: Sequence[str], embedder: Any = None, vectors: np.ndarray | None = None,
                 k1: float = 1.5, b: float = 0.75, rrf_k: int = 60):
        if not texts:
            raise ValueError("HybridRetriever needs at least one text")
        self.embedder, self.rrf_k = embedder, rrf_k
        self.bm25 = BM25([bm25_tokenize(t) for t in texts], k1=k1, b=b)
        if vectors is None and embedder is not None:
            vectors = embedder.encode_passages(list(texts))
        if vectors is not None and len(vectors) != len(texts):
            raise ValueError(f"{len(vectors)} vectors for {len(texts)} texts")
        self.vectors = vectors

    def rankings(self, query: str, depth: int = 100, mode: str = "hybrid",
                 clock: Callable[[], float] = time.perf_counter) -> tuple[list[int], dict[str, float]]:
        """The ranking (ids, best first) of `mode` and the seconds spent per stage (dense, bm25, fusion)."""
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if mode != "bm25" and self.vectors is None:
            raise ValueError(f"mode {mode!r} needs a dense index: pass an embedder (or vectors and an embedder)")
        timings, lists = {}, []
        if mode != "bm25":
            t0 = clock()
            lists.append(top_k(self.vectors @ self.embedder.encode_queries([query])[0], depth).tolist())
            timings["dense"] = clock() - t0
        if mode != "dense":
            t0 = clock()
            lists.append(top_k(self.bm25.scores(bm25_tokenize(query)), depth).tolist())
            timings["bm25"] = clock() - t0
        if mode != "hybrid":
            return lists[0], timings
        t0 = clock()
        fused = reciprocal_rank_fusion(lists, k=self.rrf_k)
        timings["fusion"] = clock() - t0
        return fused, timings


# --- the prompt, the answer, refusal (lesson 5.3) ---------------------------------------------------------------------

REFUSAL = "I don't know"
INSTRUCTIONS = ("Answer the question using only the numbered sources. After each claim, cite its source as [n]. "
                f"If the sources do not contain the answer, reply exactly: {REFUSAL}")


def build_prompt(question: str, sources: Sequence[str]) -> str:
    """The user message: instructions, the numbered sources, the question."""
    numbered = "\n".join(f"[{n}] {text}" for n, text in enumerate(sources, 1)) or "(no sources)"
    return f"{INSTRUCTIONS}\n\nSources:\n{numbered}\n\nQuestion: {question}\nAnswer:"


def parse_answer(text: str) -> dict:
    """The answer without its citation marks, the cited numbers, and whether it is a refusal (it contains
    `REFUSAL`, after SQuAD normalisation)."""
    cited = [int(n) for n in re.findall(r"\[(\d+)\]", text)]
    answer = re.sub(r"\s*\[\d+\]", "", text).strip().rstrip(".").strip()
    refused = normalize_answer(REFUSAL) in normalize_answer(text)
    return dict(answer=answer, cited=cited, refused=refused)


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                     batch_size: int = 16) -> list[str]:
    """Greedy answers through the tokenizer's chat template, batched with left padding (sets padding_side)."""
    import torch

    tokenizer.padding_side = "left"
    answers = []
    for start in range(0, len(prompts), batch_size):
        chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts[start:start + batch_size]]
        batch = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


INSTRUCTION_CUES = re.compile(r"\b(assistant|ignore|disregard|instructions?|answer|reply|respond|you must)\b", re.I)


def filter_instructions(sources: Sequence[str]) -> list[str]:
    """Lesson 5.3's injection defence: drop every source that addresses the model or gives orders."""
    return [s for s in sources if not INSTRUCTION_CUES.search(s)]


# --- faithfulness and citation precision (lesson 5.3) -----------------------------------------------------------------

STOPWORDS = frozenset("a an the of is are was be to in on for and or by as with it its this that which what".split())


def content_words(text: str) -> set[str]:
    """The SQuAD-normalised words of a text, stopwords removed."""
    return set(normalize_answer(text).split()) - STOPWORDS


def claims(answer: str) -> list[tuple[str, list[int]]]:
    """(claim text, cited numbers) for each run of text followed by citation marks; uncited text gets []."""
    found, rest = [], answer
    for match in re.finditer(r"([^\[\]]*?)((?:\s*\[\d+\])+)", answer):
        found.append((match.group(1).strip(" .,;"), [int(n) for n in re.findall(r"\d+", match.group(2))]))
        rest = rest.replace(match.group(0), " ", 1)
    if content_words(rest):
        found.append((rest.strip(), []))  # text outside any citation: an unsupported claim
    return found


def citation_support(answer: str, sources: Sequence[str]) -> list[bool]:
    """For each (claim, cited source) pair, whether every content word of the claim is in that source; an uncited
    claim counts as one unsupported pair."""
    pairs = []
    for text, cited in claims(answer):
        if not cited:
            pairs.append(False)
        for n in cited:
            pairs.append(1 <= n <= len(sources) and bool(content_words(text))
                         and content_words(text) <= content_words(sources[n - 1]))
    return pairs


def is_faithful(answer: str, sources: Sequence[str]) -> bool:
    """Every claim is supported by every source it cites (and there is at least one citation)."""
    support = citation_support(answer, sources)
    return bool(support) and all(support)


def cites_existing_source(answer: str, sources: Sequence[str]) -> bool:
    """The broken twin of `is_faithful`: only checks that the cited numbers exist (it passes invented facts)."""
    cited = [n for _, c in claims(answer) for n in c]
    return bool(cited) and all(1 <= n <= len(sources) for n in cited)


def grade(answers: Sequence[str], golds: Sequence[Sequence[str]], source_lists: Sequence[Sequence[str]]) -> dict:
    """EM / F1 (best over each question's gold answers) on answerable golds, refusal rate on unanswerable ones
    (gold `[REFUSAL]`) and on answerable ones, citation precision over the (claim, source) pairs of the answers
    that do not refuse, faithfulness of the attempted answerable ones. NaN where a share has no denominator."""
    parsed = [parse_answer(a) for a in answers]
    ans = [i for i, g in enumerate(golds) if list(g) != [REFUSAL]]
    unans = [i for i, g in enumerate(golds) if list(g) == [REFUSAL]]
    support = [s for a, p, src in zip(answers, parsed, source_lists, strict=True) if not p["refused"]
               for s in citation_support(a, src)]
    attempted = [i for i in ans if not parsed[i]["refused"]]
    nan = float("nan")
    return dict(
        em=float(np.mean([exact_match(parsed[i]["answer"], golds[i]) for i in ans])) if ans else nan,
        f1=float(np.mean([token_f1(parsed[i]["answer"], golds[i]) for i in ans])) if ans else nan,
        refusal_unanswerable=float(np.mean([parsed[i]["refused"] for i in unans])) if unans else nan,
        refusal_answerable=float(np.mean([parsed[i]["refused"] for i in ans])) if ans else nan,
        citation_precision=float(np.mean(support)) if support else nan,
        faithful=float(np.mean([is_faithful(answers[i], source_lists[i]) for i in attempted])) if attempted else nan)


# --- readers: text answers with [n] citations (lesson 5.3) ------------------------------------------------------------


def answer_sentences(text: str) -> list[str]:
    """A text's sentences (split after . : ; and at blank lines), whitespace collapsed, longer than 10 characters."""
    return [s for s in re.split(r"(?<=[.:;])\s+|\n\s*\n", " ".join(text.split())) if len(s) > 10]


def extractive_answer(question: str, texts: Sequence[str], idf: Mapping[str, float]) -> tuple[str, int, float]:
    """The best sentence of the texts by IDF-weighted word overlap with the question, the index of its text (-1 when
    no text has a sentence) and its score; ties go to the earlier text and sentence."""
    q_words = set(bm25_tokenize(question))
    best = (-1.0, "", -1)
    for index, text in enumerate(texts):
        for s in answer_sentences(text):
            score = sum(idf.get(w, 0.0) for w in q_words & set(bm25_tokenize(s)))
            best = max(best, (score, s, index), key=lambda b: b[0])
    return best[1], best[2], best[0]


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    """True when a normalised gold answer (or alias) occurs in the normalised text."""
    return any(normalize_answer(a) in normalize_answer(text) for a in answers)


class Reader(Protocol):
    """Turns questions and their numbered sources into text answers that cite `[n]` (or say `REFUSAL`)."""

    def __call__(self, questions: Sequence[str], source_lists: Sequence[Sequence[str]]) -> list[str]: ...


class ExtractiveReader:
    """Lesson 5.3's baseline reader, made to cite: the best sentence of the sources (`extractive_answer`) followed by
    `[n]`, its source's number. Refusal rule: `REFUSAL` when there is no source, or when the best sentence's
    IDF-weighted overlap with the question is at most `min_score` (0: it shares no indexed word with the question).
    Raise `min_score` on a development split to refuse more."""

    def __init__(self, idf: Mapping[str, float], min_score: float = 0.0):
        self.idf, self.min_score = idf, min_score

    def __call__(self, questions: Sequence[str], source_lists: Sequence[Sequence[str]]) -> list[str]:
        out = []
        for question, sources in zip(questions, source_lists, strict=True):
            sentence, index, score = extractive_answer(question, sources, self.idf)
            out.append(f"{sentence} [{index + 1}]" if index >= 0 and score > self.min_score else REFUSAL)
        return out


class LLMReader:
    """A chat LLM reading `build_prompt`'s numbered sources (`generate_answers`: greedy, batched)."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 48, batch_size: int = 16):
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def __call__(self, questions: Sequence[str], source_lists: Sequence[Sequence[str]]) -> list[str]:
        prompts = [build_prompt(q, s) for q, s in zip(questions, source_lists, strict=True)]
        return generate_answers(self.model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size)


# --- the pipeline -----------------------------------------------------------------------------------------------------


@dataclass
class Retrieval:
    """What the retrieval half of the pipeline found for one query: the chunk ids given to the reader (best first),
    their reranker scores (empty without a reranker), the ranking before the filter, and seconds per stage."""

    query: str
    chunk_ids: list[int]
    sources: list[str]
    rerank_scores: list[float]
    ranking: list[int]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class RAGAnswer:
    """One answered question: the reader's text (with `[n]` marks), its parse, the sources it saw, the chunk ids
    behind them, and the seconds spent per stage (dense, bm25, fusion, rerank, filter, read; total)."""

    question: str
    query: str
    text: str
    answer: str
    cited: list[int]
    refused: bool
    sources: list[str]
    chunk_ids: list[int]
    timings: dict[str, float]


class RAGPipeline:
    """Chunks -> first stage (`mode`: dense, bm25 or hybrid, `candidates` deep) -> rerank the top `depth` (optional)
    -> `source_filter` (optional, e.g. `filter_instructions`) -> the top `k` as numbered sources -> `reader`.

    Refusal: the reader's own rule (an LLM told to say `REFUSAL`; `ExtractiveReader`'s overlap threshold), plus an
    optional gate: with a reranker and `refuse_below` set, a question whose best reranker score is below it is
    answered `REFUSAL` without reading (calibrate it on a development split). Timings use `clock` (wall time)."""

    def __init__(self, chunks: Sequence[Chunk], retriever: HybridRetriever, reader: Reader,
                 reranker: Reranker | None = None, k: int = 5, candidates: int = 30, depth: int = 20,
                 mode: str = "hybrid", source_filter: Callable[[Sequence[str]], list[str]] | None = None,
                 refuse_below: float | None = None, clock: Callable[[], float] = time.perf_counter):
        if k < 1 or candidates < k:
            raise ValueError(f"need 1 <= k <= candidates, got k={k}, candidates={candidates}")
        if refuse_below is not None and reranker is None:
            raise ValueError("refuse_below gates on reranker scores: pass a reranker too")
        self.chunks, self.retriever, self.reader, self.reranker = list(chunks), retriever, reader, reranker
        self.k, self.candidates, self.depth, self.mode = k, candidates, depth, mode
        self.source_filter, self.refuse_below, self.clock = source_filter, refuse_below, clock

    @classmethod
    def from_texts(cls, texts: Mapping[str, str], embedder: Any = None, chunk_chars: int = 600,
                   reader: Reader | None = None, reranker: Reranker | None = None, **options: Any) -> RAGPipeline:
        """Recursive chunks of `chunk_chars` characters, indexed for hybrid retrieval (BM25 alone without an
        embedder); the reader defaults to `ExtractiveReader` with the index's IDF. A `MaxSimReranker` indexes the
        chunks' token vectors in the same encoder pass as the dense index."""
        chunks = recursive_chunks(texts, chunk_chars)
        keys = [c.key for c in chunks]
        vectors = reranker.index(keys) if isinstance(reranker, MaxSimReranker) else None
        retriever = HybridRetriever(keys, embedder, vectors=vectors)
        options.setdefault("mode", "hybrid" if embedder is not None else "bm25")
        return cls(chunks, retriever, reader or ExtractiveReader(retriever.bm25.idf), reranker, **options)

    def source(self, chunk_id: int) -> str:
        """The text of a chunk as the reader sees it."""
        return self.chunks[chunk_id].key

    def retrieve(self, query: str) -> Retrieval:
        """The first stage, reranking and the filter for one query."""
        ranking, timings = self.retriever.rankings(query, self.candidates, self.mode, self.clock)
        scores: dict[int, float] = {}
        if self.reranker is not None:
            t0 = self.clock()

            def score(head: np.ndarray) -> np.ndarray:
                values = self.reranker.scores(query, [self.source(int(i)) for i in head])
                scores.update(zip((int(i) for i in head), (float(v) for v in values), strict=True))
                return values

            ranking = rerank(ranking, score, self.depth).tolist()
            timings["rerank"] = self.clock() - t0
        kept = ranking
        if self.source_filter is not None:
            t0 = self.clock()
            allowed = set(self.source_filter([self.source(i) for i in ranking]))
            kept = [i for i in ranking if self.source(i) in allowed]
            timings["filter"] = self.clock() - t0
        ids = [int(i) for i in kept[:self.k]]
        return Retrieval(query, ids, [self.source(i) for i in ids], [scores[i] for i in ids if i in scores],
                         [int(i) for i in ranking], timings)

    def refuses(self, retrieval: Retrieval) -> bool:
        """The gate: nothing to read, or the best reranker score below `refuse_below`."""
        if not retrieval.sources:
            return True
        return self.refuse_below is not None and (not retrieval.rerank_scores
                                                  or max(retrieval.rerank_scores) < self.refuse_below)

    def answer_batch(self, questions: Sequence[str], queries: Sequence[str] | None = None) -> list[RAGAnswer]:
        """Answer the questions (retrieving with `queries`, default the questions themselves); the reader runs once
        over the batch and each answer's "read" time is the batch's read time divided by its size."""
        queries = list(questions) if queries is None else list(queries)
        if len(queries) != len(questions):
            raise ValueError(f"{len(queries)} queries for {len(questions)} questions")
        retrievals = [self.retrieve(q) for q in queries]
        to_read = [i for i, r in enumerate(retrievals) if not self.refuses(r)]
        t0 = self.clock()
        texts = self.reader([questions[i] for i in to_read], [retrievals[i].sources for i in to_read]) \
            if to_read else []
        read_share = (self.clock() - t0) / max(len(to_read), 1)
        read = dict(zip(to_read, texts, strict=True))
        out = []
        for i, (question, r) in enumerate(zip(questions, retrievals, strict=True)):
            text = read.get(i, REFUSAL)
            timings = {**r.timings, "read": read_share if i in read else 0.0}
            timings["total"] = sum(timings.values())
            parsed = parse_answer(text)
            out.append(RAGAnswer(question, r.query, text, parsed["answer"], parsed["cited"], parsed["refused"],
                                 r.sources, r.chunk_ids, timings))
        return out

    def answer(self, question: str, query: str | None = None) -> RAGAnswer:
        """Answer one question (retrieving with `query`, default the question)."""
        return self.answer_batch([question], None if query is None else [query])[0]
