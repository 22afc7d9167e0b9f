"""llm_roadmap.synthetic_data against datasketch and brute force, and lesson 8.4's teaching copy against the package."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from test_teaching_copies import load_teaching_copy  # tests/ is on sys.path (pytest rootdir)

from llm_roadmap import synthetic_data as sd

NOTEBOOK = Path(__file__).resolve().parents[1] / "phase08_advanced" / "04_synthetic_data.ipynb"
TEXTS = ["Ada has 3 figs, gets 4 more.", "ADA HAS 3 FIGS,  GETS 4 MORE!", "Ben has 3 figs, gets 4 more.",
         "Ada had 2 cups, then found 1.", "Ada had 2 cups, then found 2.", "", "x"]


def test_signatures_equal_datasketch():
    datasketch = pytest.importorskip("datasketch")
    if int(datasketch.__version__.split(".")[0]) < 2:
        pytest.skip("datasketch < 2.0 has no affine32 scheme")
    for unit, n in (("char", 4), ("word", 2)):
        ours = sd.minhash_signatures(TEXTS, num_perm=32, n=n, seed=3, unit=unit)
        for text, row in zip(TEXTS, ours):
            m = datasketch.MinHash(num_perm=32, seed=3)
            m.update_batch([s.encode() for s in sd.shingles(text, n, unit)])
            assert np.array_equal(m.hashvalues, row)


def test_lsh_candidates_equal_datasketch_and_brute_force():
    datasketch = pytest.importorskip("datasketch")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(list("abcdefgh"), size=12)) for _ in range(60)] + TEXTS
    sig = sd.minhash_signatures(texts, num_perm=32, n=2, unit="word")
    ours = sd.lsh_candidates(sig, bands=8, rows=4)
    brute = {(i, j) for i, j in combinations(range(len(texts)), 2)
             if any(np.array_equal(sig[i, b * 4:(b + 1) * 4], sig[j, b * 4:(b + 1) * 4]) for b in range(8))}
    assert ours == brute
    if int(datasketch.__version__.split(".")[0]) >= 2:
        lsh = datasketch.MinHashLSH(num_perm=32, params=(8, 4))
        minhashes = []
        for i, t in enumerate(texts):
            m = datasketch.MinHash(num_perm=32, seed=1)
            m.update_batch([s.encode() for s in sd.word_shingles(t)])
            lsh.insert(i, m)
            minhashes.append(m)
        theirs = {(min(i, j), max(i, j)) for i, m in enumerate(minhashes) for j in lsh.query(m) if j != i}
        assert ours == theirs
    with pytest.raises(ValueError):
        sd.lsh_candidates(sig, bands=9, rows=4)


def test_dedup_finds_restatements_and_keeps_distinct_problems():
    groups = sd.near_duplicate_groups(TEXTS, threshold=0.85, num_perm=64, bands=8, rows=8, n=2, unit="word")
    assert groups[1] == 0  # case, punctuation and spacing do not matter after normalisation
    assert groups[2] == 2 and groups[4] == 4  # a different name or digit is a different problem
    assert sd.deduplicate(TEXTS, threshold=0.85, n=2, unit="word") == [0, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError):
        sd.near_duplicate_groups(TEXTS, threshold=0.0)


def test_s_curve_and_jaccard_closed_forms():
    assert sd.s_curve(1.0, 8, 8) == 1.0 and sd.s_curve(0.0, 8, 8) == 0.0
    assert np.isclose(sd.s_curve(0.5, 2, 1), 0.75)
    assert sd.jaccard({1, 2}, {2, 3}) == 1 / 3 and sd.jaccard(set(), set()) == 1.0


def test_contamination_and_distinct_n():
    evals = ["Ada has 3 figs, gets 4 more."]
    train = ["ada has 3 figs gets 4 more!", "Ben has 3 figs, gets 4 more.", "short"]
    assert sd.contaminated(train, evals, n=7) == [True, False, False]
    assert sd.contaminated(train, evals, n=13) == [False, False, False]
    assert sd.contaminated(train, evals, n=4) == [True, True, False]
    assert sd.contaminated(train, [], n=4) == [False, False, False]
    assert sd.distinct_n(["a b a b"], 2) == 2 / 3 and sd.distinct_n(["a"], 2) == 0.0
    with pytest.raises(ValueError):
        sd.contaminated(train, evals, n=0)


def test_teaching_copy_equals_the_package():
    nb = load_teaching_copy(NOTEBOOK, "# teaching-copy: minhash")
    a, b = sd.minhash_permutations(48, seed=5)
    for text in TEXTS:
        assert nb.word_shingles(text) == sd.word_shingles(text)
        shingles = sd.word_shingles(text)
        assert np.array_equal(nb.minhash_signature(shingles, a, b), sd.minhash_signature(shingles, a, b))
    sig = sd.minhash_signatures(TEXTS * 3, num_perm=48, n=2, unit="word")
    assert nb.lsh_candidates(sig, 12, 4) == sd.lsh_candidates(sig, 12, 4)
