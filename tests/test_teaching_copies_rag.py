"""Phase 5's teaching copies must agree with llm_roadmap.rag, which later lessons import.

Lesson 5.1 writes the bi-encoder (mean pooling, normalisation) in cells starting `# teaching-copy: embedder`; lesson
5.2 writes BM25 (`# teaching-copy: bm25`) and reciprocal rank fusion (`# teaching-copy: rrf`). These tests execute
only those cells and compare them with the package on the same inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_teaching_copies import load_teaching_copy  # tests/ is on sys.path (pytest rootdir)

from llm_roadmap import rag
from llm_roadmap.data import python_docs_questions

PHASE = Path(__file__).resolve().parents[1] / "phase05_rag"


@pytest.fixture(scope="module")
def passages():
    return rag.python_docs_passages(["if", "while", "for", "try", "with", "import", "strings"])


def test_embedder_teaching_copy_equals_the_package(passages):
    nb = load_teaching_copy(PHASE / "01_embeddings_vector_databases.ipynb", "# teaching-copy: embedder")
    texts = [p.text for p in passages[:40]] + ["short", "x " * 400]
    package = rag.Embedder(rag.minilm_path(), batch_size=16)
    ours = package.encode(texts, prefix="query: ")
    theirs = nb.embed(texts, package.tokenizer, package.model, batch_size=16, max_length=256, prefix="query: ")
    assert theirs.dtype == np.float32 and theirs.shape == ours.shape
    np.testing.assert_allclose(theirs, ours, atol=1e-6)


def test_bm25_teaching_copy_equals_the_package(passages):
    nb = load_teaching_copy(PHASE / "02_chunking_reranking.ipynb", "# teaching-copy: bm25")
    texts = [p.text for p in passages]
    assert [nb.bm25_tokenize(t) for t in texts] == [rag.bm25_tokenize(t) for t in texts]
    docs = [rag.bm25_tokenize(t) for t in texts]
    for k1, b in [(1.5, 0.75), (0.9, 0.4), (2.0, 1.0)]:
        ours, theirs = rag.BM25(docs, k1=k1, b=b), nb.BM25(docs, k1=k1, b=b)
        for question in python_docs_questions()[:25]:
            query = rag.bm25_tokenize(question["question"]) + ["nosuchterm"]
            np.testing.assert_allclose(theirs.scores(query), ours.scores(query), rtol=1e-12, atol=1e-12)


def test_rrf_teaching_copy_equals_the_package():
    nb = load_teaching_copy(PHASE / "02_chunking_reranking.ipynb", "# teaching-copy: rrf")
    rng = np.random.default_rng(0)
    for _ in range(50):
        rankings = [list(rng.permutation(30)[: rng.integers(1, 30)]) for _ in range(rng.integers(1, 4))]
        for k in (1, 60):
            assert list(nb.reciprocal_rank_fusion(rankings, k=k)) == rag.reciprocal_rank_fusion(rankings, k=k)
