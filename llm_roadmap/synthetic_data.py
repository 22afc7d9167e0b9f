"""Cleaning synthetic (or scraped) training text: MinHash + LSH near-duplicate removal, n-gram decontamination against
an evaluation set, and distinct-n diversity. Taught in phase08_advanced/04_synthetic_data.ipynb (a test checks that
the notebook's teaching copies and these functions agree); reused by phase 10's text-LLM capstone.

MinHash follows datasketch >= 2.0's default "affine32" scheme, so the signatures equal `datasketch.MinHash`'s for the
same permutations: a shingle's 32-bit SHA-1 hash, mixed by MurmurHash3's finalizer, then permuted by
h -> (a h + b) mod 2^32 with odd a (a bijection on 32-bit values).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections import defaultdict
from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np


def char_shingles(text: str, n: int = 4) -> set[str]:
    """The set of character n-grams of a text (the whole text if it is shorter than n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return {text[i:i + n] for i in range(max(1, len(text) - n + 1))}


def word_shingles(text: str, n: int = 2) -> set[str]:
    """The set of word n-grams of a text after normalisation (lower case, punctuation and extra spaces dropped)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tokens = words(text)
    return {" ".join(tokens[i:i + n]) for i in range(max(1, len(tokens) - n + 1))}


def shingles(text: str, n: int, unit: str) -> set[str]:
    """Character n-grams of the raw text (unit="char") or word n-grams of the normalised text (unit="word")."""
    if unit not in ("char", "word"):
        raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")
    return char_shingles(text, n) if unit == "char" else word_shingles(text, n)


def jaccard(a: set, b: set) -> float:
    """|A & B| / |A | B| (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def sha1_hash32(data: bytes) -> int:
    """The first 4 bytes of SHA-1, little-endian (datasketch's default hash function)."""
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, a bijection that spreads similar inputs over all 32 bits."""
    h = np.asarray(h, dtype=np.uint32)
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def minhash_permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of num_perm permutations h -> (a h + b) mod 2^32, a odd; drawn as datasketch draws them for a seed."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def minhash_signature(shingles: Iterable[str], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The MinHash signature: for each permutation, the minimum permuted hash over the shingles (uint32)."""
    hashes = fmix32(np.array([sha1_hash32(s.encode("utf-8")) for s in shingles], dtype=np.uint32))
    if hashes.size == 0:
        return np.full(len(a), np.iinfo(np.uint32).max, dtype=np.uint32)
    return (a[:, None] * hashes[None, :] + b[:, None]).min(axis=1)  # uint32 arithmetic wraps: mod 2^32


def minhash_signatures(texts: Sequence[str], num_perm: int = 64, n: int = 4, seed: int = 1,
                       unit: str = "char") -> np.ndarray:
    """(len(texts), num_perm) uint32 signatures of the texts' shingles (see `shingles`)."""
    a, b = minhash_permutations(num_perm, seed)
    return np.stack([minhash_signature(shingles(t, n, unit), a, b) for t in texts]) if len(texts) else \
        np.empty((0, num_perm), dtype=np.uint32)


def lsh_candidates(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs (i < j) whose signatures agree on all `rows` values of at least one of `bands` disjoint bands."""
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} hashes, signatures have "
                         f"{signatures.shape[1]}")
    candidates: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for doc, values in enumerate(signatures[:, band * rows:(band + 1) * rows]):
            buckets[values.tobytes()].append(doc)
        for bucket in buckets.values():
            candidates.update(combinations(bucket, 2))
    return candidates


def s_curve(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that a pair with Jaccard s becomes an LSH candidate: 1 - (1 - s^r)^b."""
    return 1 - (1 - np.asarray(s, dtype=float) ** rows) ** bands


def near_duplicate_groups(texts: Sequence[str], threshold: float = 0.8, num_perm: int = 64, bands: int = 8,
                          rows: int = 8, n: int = 4, seed: int = 1, unit: str = "char") -> list[int]:
    """A group id per text: LSH candidate pairs whose exact Jaccard reaches `threshold`, joined transitively
    (union-find); the id is the group's first index."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    shingle_sets = [shingles(t, n, unit) for t in texts]
    signatures = minhash_signatures(texts, num_perm, n, seed, unit)
    for i, j in sorted(lsh_candidates(signatures, bands, rows)):
        if jaccard(shingle_sets[i], shingle_sets[j]) >= threshold:
            ri, rj = root(i), root(j)
            parent[max(ri, rj)] = min(ri, rj)
    return [root(i) for i in range(len(texts))]


def deduplicate(texts: Sequence[str], **kwargs) -> list[int]:
    """Indices of the texts to keep: the first of each near-duplicate group (see near_duplicate_groups)."""
    groups = near_duplicate_groups(texts, **kwargs)
    return [i for i, g in enumerate(groups) if g == i]


def words(text: str) -> list[str]:
    """Lower-cased word and number tokens, punctuation dropped (the unit of n-gram decontamination)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of word n-grams of a text (empty when it has fewer than n words)."""
    tokens = words(text)
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def contaminated(train_texts: Sequence[str], eval_texts: Sequence[str], n: int = 13) -> list[bool]:
    """For each training text: does it share a word n-gram with any evaluation text (GPT-3's rule used n = 13)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    eval_grams: set[tuple[str, ...]] = set().union(*(word_ngrams(t, n) for t in eval_texts)) if eval_texts else set()
    return [not word_ngrams(t, n).isdisjoint(eval_grams) for t in train_texts]


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams over the texts (0.0 when there are none)."""
    grams = [tuple(ws[i:i + n]) for ws in map(words, texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
