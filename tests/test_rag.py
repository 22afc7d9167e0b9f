"""llm_roadmap.rag against independent references: bm25s, sentence-transformers, hand-computed metrics, SQuAD."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm_roadmap import rag
from llm_roadmap.data import pydoc_topics, python_docs_questions


@pytest.fixture(scope="module")
def passages():
    return rag.python_docs_passages()


def test_passages_cover_every_topic_and_keep_the_text(passages):
    topics = pydoc_topics()
    assert {p.topic for p in passages} <= set(topics)
    assert [p.id for p in passages] == list(range(len(passages)))
    for p in passages[::97]:
        assert p.text in topics[p.topic] and len(p.text) >= 40
    subset = rag.python_docs_passages(["if", "while"])
    assert {p.topic for p in subset} == {"if", "while"} and subset[0].id == 0
    with pytest.raises(ValueError, match="unknown help topics"):
        rag.python_docs_passages(["no-such-topic"])


def test_every_evidence_quote_lies_in_a_passage_of_its_topic(passages):
    for question in python_docs_questions():
        found = rag.evidence_passages(question, passages)
        assert len(found) == len(question["evidence"]), question["id"]
        for item, ids in zip(question["evidence"], found):
            assert ids, f"{question['id']}: no passage of {item['topic']!r} holds its quote"
            assert all(passages[i].topic == item["topic"] for i in ids)


def test_bm25_equals_bm25s_lucene(passages):
    bm25s = pytest.importorskip("bm25s")
    docs = [rag.bm25_tokenize(p.text) for p in passages[:400]]
    ours = rag.BM25(docs, k1=1.2, b=0.6)
    reference = bm25s.BM25(method="lucene", k1=1.2, b=0.6)
    reference.index(docs, show_progress=False)
    for question in python_docs_questions()[:20]:
        query = rag.bm25_tokenize(question["question"])
        np.testing.assert_allclose(ours.scores(query), reference.get_scores(query), rtol=1e-5, atol=1e-5)


def test_bm25_closed_form_on_a_toy_corpus():
    docs = [["a", "cat", "sat"], ["the", "dog", "sat", "sat"], ["a", "bird"]]
    scores = rag.BM25(docs, k1=1.5, b=0.75).scores(["sat"])
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    avgdl = 3.0
    expected = [idf * 1 / (1 + 1.5 * (0.25 + 0.75 * 3 / avgdl)), idf * 2 / (2 + 1.5 * (0.25 + 0.75 * 4 / avgdl)), 0]
    np.testing.assert_allclose(scores, expected)
    with pytest.raises(ValueError):
        rag.BM25([])


def test_top_k_breaks_ties_by_index():
    assert rag.top_k(np.array([0.5, 0.9, 0.5, 0.9]), 3).tolist() == [1, 3, 0]


def test_reciprocal_rank_fusion_by_hand():
    fused = rag.reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=60)
    # 1: 1/61 + 1/62; 3: 1/63 + 1/61; 2: 1/62; 4: 1/63
    assert fused == [1, 3, 2, 4]


def test_ranking_metrics_by_hand():
    ranking = [7, 3, 5, 1]
    assert rag.recall_at_k(ranking, {3, 1}, 2) == 0.5
    assert rag.recall_at_k(ranking, {3, 1}, 4) == 1.0
    assert rag.reciprocal_rank(ranking, {5}) == pytest.approx(1 / 3)
    assert rag.reciprocal_rank(ranking, {9}) == 0.0
    assert rag.ndcg_at_k(ranking, {3}, 10) == pytest.approx(1 / math.log2(3))
    assert rag.ndcg_at_k([3, 1], {3, 1}, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        rag.recall_at_k(ranking, set(), 5)


def test_squad_answer_metrics():
    assert rag.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert rag.exact_match("a SyntaxError.", ["SyntaxError"]) == 1.0
    assert rag.exact_match("ValueError", ["SyntaxError"]) == 0.0
    # prediction "raises syntaxerror" vs gold "syntaxerror": precision 1/2, recall 1
    assert rag.token_f1("raises SyntaxError", ["SyntaxError"]) == pytest.approx(2 / 3)
    assert rag.token_f1("", [""]) == 1.0 and rag.token_f1("x", ["y"]) == 0.0


def test_embedder_equals_sentence_transformers():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["How do I open a file?", "The with statement wraps a block in a context manager.", "x" * 3000]
    ours = rag.Embedder(rag.minilm_path(), batch_size=2).encode(texts)
    reference = sentence_transformers.SentenceTransformer(rag.minilm_path(), device="cpu").encode(
        texts, normalize_embeddings=True)
    assert ours.dtype == np.float32 and ours.shape == (3, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    with pytest.raises(TypeError, match="list of texts"):
        rag.Embedder.encode(None, "one text")
    with pytest.raises(ValueError, match="pooling"):
        rag.Embedder(rag.minilm_path(), pooling="max")
