"""Lesson 3.1's byte-level BPE tokenizer (minbpe-style), for the lessons and capstones that train their own.

- `GPT2_SPLIT`, `GPT4_SPLIT`: the pre-splitting regexes of GPT-2 and of tiktoken's `cl100k_base`.
- `bytes_to_unicode`, `to_bytelevel`, `from_bytelevel`: GPT-2's printable stand-ins for the 256 bytes (how Hugging Face
  `tokenizers` stores byte-level merges as text).
- `chunk_counts`, `merge_pair`, `train_bpe`: training on the distinct pre-split chunks with incremental pair counts
  and a lazy max-heap (the lesson proves it learns the naive recount loop's merges exactly); `tokenizers_rank` is
  the tie-break that reproduces `tokenizers`' BpeTrainer merge for merge.
- `BytePairTokenizer`: encode (merges replayed by rank, atomic special tokens), decode, `train`, JSON `save`/`load`
  (no pickle), and `to_tokenizers` / `to_transformers` (the same ids through `tokenizers` and
  `PreTrainedTokenizerFast`, so `save_pretrained` / `AutoTokenizer.from_pretrained` work).

Lesson 3.1 writes these in cells starting `# teaching-copy: bpe`; `tests/test_teaching_copies_phase3_4.py` proves the
two copies give the same merges and ids. Needs the `regex` package (a dependency of `transformers`, the `hf` extra).
"""

from __future__ import annotations

import collections
import heapq
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import regex

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_SPLIT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
              r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
EOT = "<|endoftext|>"
FORMAT = "llm_roadmap.bpe/1"  # the "format" field of a saved tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(c) for b, c in zip(printable + others, printable + [256 + k for k in range(len(others))])}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def to_bytelevel(data: bytes) -> str:
    """Bytes as GPT-2's byte-level characters (byte 32, the space, becomes 'Ġ')."""
    return "".join(BYTE_TO_CHAR[b] for b in data)


def from_bytelevel(chars: str) -> bytes:
    """The inverse of `to_bytelevel`."""
    return bytes(CHAR_TO_BYTE[c] for c in chars)


def chunk_counts(text: str, pattern: str = GPT2_SPLIT) -> collections.Counter:
    """How often each pre-split chunk occurs: BPE only ever needs the distinct chunks and their frequencies."""
    return collections.Counter(regex.findall(pattern, text))


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` in `ids`, left to right, by `new_id`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def identity_rank(token_id: int) -> int:
    """The default tie-break: among pairs with the same count, the smallest (a, b) by id (byte value) wins."""
    return token_id


_TOKENIZERS_BYTE_ORDER = {b: r for r, b in enumerate(sorted(range(256), key=lambda b: BYTE_TO_CHAR[b]))}


def tokenizers_rank(token_id: int) -> int:
    """`tokenizers`' tie-break: its byte ids follow the sorted byte-level characters; merged ids count up as ours."""
    return _TOKENIZERS_BYTE_ORDER.get(token_id, token_id)


def train_bpe(counts: dict[str, int], n_merges: int, rank: Callable[[int], int] = identity_rank
              ) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """BPE merges learned from chunk counts: (merges [(a, b)] for ids 256.., each merge's pair count, tokens it saved).

    Updates only the pairs of the words each merge touches (a lazy max-heap of counts); the highest count wins, ties
    go to the smallest (rank(a), rank(b)). Stops early when no pair is left."""
    if n_merges < 0:
        raise ValueError(f"n_merges must be >= 0, got {n_merges}")
    words = [list(w.encode("utf-8")) for w in counts]
    freqs = list(counts.values())
    pair_counts, where = collections.Counter(), collections.defaultdict(set)
    for w, ids in enumerate(words):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] += freqs[w]
            where[pair].add(w)
    heap = [(-c, rank(p[0]), rank(p[1]), p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    merges, merge_counts, tokens_saved = [], [], []
    while len(merges) < n_merges and heap:
        neg_count, _, _, best = heapq.heappop(heap)
        if pair_counts.get(best, 0) != -neg_count or neg_count == 0:
            continue  # stale entry: the pair's count changed after it was pushed
        new_id, touched, saved = 256 + len(merges), set(), 0
        for w in where.pop(best):
            old, freq = words[w], freqs[w]
            words[w] = new = merge_pair(old, best, new_id)
            saved += freq * (len(old) - len(new))
            for pair in zip(old, old[1:]):
                pair_counts[pair] -= freq
                touched.add(pair)
            for pair in zip(new, new[1:]):
                pair_counts[pair] += freq
                where[pair].add(w)
                touched.add(pair)
        merges.append(best)
        merge_counts.append(-neg_count)
        tokens_saved.append(saved)
        for pair in touched:
            if pair_counts[pair] > 0:
                heapq.heappush(heap, (-pair_counts[pair], rank(pair[0]), rank(pair[1]), pair))
    return merges, merge_counts, tokens_saved


class BytePairTokenizer:
    """A byte-level BPE tokenizer (minbpe-style): merges [(a, b)] give ids 256.., special tokens come after."""

    def __init__(self, merges: Iterable[tuple[int, int]], pattern: str = GPT2_SPLIT,
                 special_tokens: Sequence[str] = (EOT,)):
        merges = [(int(a), int(b)) for a, b in merges]
        self.merges = {pair: 256 + k for k, pair in enumerate(merges)}
        if len(self.merges) != len(merges):
            raise ValueError("the merge list repeats a pair")
        self.vocab = {i: bytes([i]) for i in range(256)}
        for (a, b), new_id in self.merges.items():
            if a not in self.vocab or b not in self.vocab:
                raise ValueError(f"merge {new_id - 256} ({a}, {b}) uses an id not defined before it")
            self.vocab[new_id] = self.vocab[a] + self.vocab[b]
        if len(set(special_tokens)) != len(special_tokens) or not all(special_tokens):
            raise ValueError(f"special tokens must be distinct non-empty strings, got {special_tokens!r}")
        self.special = {tok: 256 + len(merges) + k for k, tok in enumerate(special_tokens)}
        self.vocab.update({i: tok.encode("utf-8") for tok, i in self.special.items()})
        self.pattern = regex.compile(pattern)
        # longest first, so that a special token that contains another is cut out whole
        by_length = sorted(special_tokens, key=len, reverse=True)
        self.special_pattern = regex.compile("(" + "|".join(map(regex.escape, by_length)) + ")") if by_length else None
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int, pattern: str = GPT2_SPLIT,
              special_tokens: Sequence[str] = (EOT,), rank: Callable[[int], int] = identity_rank
              ) -> BytePairTokenizer:
        """Train on a text (or texts) so that 256 bytes + merges + special tokens make `vocab_size` ids."""
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(f"vocab_size {vocab_size} is below 256 bytes + {len(special_tokens)} special tokens")
        counts = chunk_counts(text, pattern) if isinstance(text, str) else collections.Counter()
        if not isinstance(text, str):
            for part in text:
                counts.update(chunk_counts(part, pattern))
        merges, _, _ = train_bpe(counts, n_merges, rank)
        return cls(merges, pattern, special_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + merges + special tokens (a corpus too small for all merges gives fewer)."""
        return len(self.vocab)

    @property
    def merge_list(self) -> list[tuple[int, int]]:
        """The merges in the order they were learned (id 256 + k for merge k)."""
        return list(self.merges)

    def encode_chunk(self, chunk: bytes) -> list[int]:
        """Replay the merges on one pre-split chunk: always the earliest-learned pair present first."""
        ids = list(chunk)
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, math.inf))
            if pair not in self.merges:
                break
            ids = merge_pair(ids, pair, self.merges[pair])
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token strings as plain text."""
        ids = []
        for chunk in self.pattern.findall(text):
            if chunk not in self.cache:  # chunks repeat a lot (Zipf): cache their encodings
                self.cache[chunk] = self.encode_chunk(chunk.encode("utf-8"))
            ids.extend(self.cache[chunk])
        return ids

    def encode(self, text: str, allowed_special: bool = True) -> list[int]:
        """Encode text; with allowed_special, each special-token string becomes its single reserved id."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        if not allowed_special or self.special_pattern is None:
            return self.encode_ordinary(text)
        ids = []
        for part in self.special_pattern.split(text):  # the capture group keeps the specials in the list
            ids.extend([self.special[part]] if part in self.special else self.encode_ordinary(part))
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes that the ids stand for (one token may hold part of a UTF-8 character)."""
        try:
            return b"".join(self.vocab[int(i)] for i in ids)
        except KeyError as error:
            raise ValueError(f"id {error.args[0]} is not in the vocabulary (size {len(self.vocab)})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; bytes that do not form valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        """A JSON-ready description: format tag, split pattern, special tokens, merges as [a, b] id pairs."""
        return dict(format=FORMAT, pattern=self.pattern.pattern, special_tokens=list(self.special),
                    merges=[list(pair) for pair in self.merges])

    @classmethod
    def from_dict(cls, data: dict) -> BytePairTokenizer:
        """The inverse of `to_dict` (checks the format tag)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a saved BytePairTokenizer (expected format {FORMAT!r})")
        return cls([tuple(pair) for pair in data["merges"]], data["pattern"], tuple(data["special_tokens"]))

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as JSON (no pickle); returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> BytePairTokenizer:
        """Read a tokenizer written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_tokenizers(self):
        """A `tokenizers.Tokenizer` holding these merges and ids: the same encoding from the Rust library."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        tokens = [to_bytelevel(self.vocab[i]) for i in range(256 + len(self.merges))]
        if len(set(tokens)) != len(tokens):
            raise ValueError("two merges spell the same bytes; tokenizers' BPE needs one id per token string")
        vocab = {token: i for i, token in enumerate(tokens)}
        merges = [(to_bytelevel(self.vocab[a]), to_bytelevel(self.vocab[b])) for a, b in self.merges]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        if self.pattern.pattern == GPT2_SPLIT:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:  # any other split regex, then bytes as characters
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(self.pattern.pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(list(self.special))
        return tok

    def to_transformers(self, eos_token: str | None = EOT):
        """A `transformers.PreTrainedTokenizerFast` with the same ids (`save_pretrained` / `AutoTokenizer` work)."""
        from transformers import PreTrainedTokenizerFast

        if eos_token is not None and eos_token not in self.special:
            raise ValueError(f"eos_token {eos_token!r} is not one of the special tokens {list(self.special)}")
        return PreTrainedTokenizerFast(tokenizer_object=self.to_tokenizers(), eos_token=eos_token)
