"""Lesson 3.1's BPE tokenizer and lesson 4.3's quantizers must agree with llm_roadmap.tokenizer / .quantization.

Lesson 3.1 writes the byte-level BPE in cells starting `# teaching-copy: bpe`; lesson 4.3 writes its quantizers in
cells starting `# teaching-copy: quant`. These tests execute only those cells and compare them with the package on
the same inputs (merges, ids, integers and perplexities equal, not merely close), so that neither copy can drift.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from test_teaching_copies import load_teaching_copy  # tests/ is on sys.path (pytest rootdir)

from llm_roadmap import quantization as quant
from llm_roadmap import tokenizer as bpe
from llm_roadmap.data import pydoc_text
from llm_roadmap.models.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
BPE_NAMES = ("GPT2_SPLIT", "GPT4_SPLIT", "bytes_to_unicode", "to_bytelevel", "from_bytelevel", "chunk_counts",
             "merge_pair", "identity_rank", "train_bpe_naive", "train_bpe_fast", "BytePairTokenizer")
QUANT_NAMES = ("grid", "to_int", "quantize_to_grid", "fake_quantize", "rel_error", "hessian", "gptq_quantize",
               "awq_quantize", "lm_loss", "perplexity", "quantizable_linears", "calibration_inputs",
               "weight_only_methods", "quantize_model", "model_bytes", "mean_bits", "quantization_table",
               "dynamic_int8", "serialized_bytes")


def quiet_load(notebook: Path, marker: str):
    """The teaching copy, without the demo prints of its cells."""
    with contextlib.redirect_stdout(io.StringIO()):
        return load_teaching_copy(notebook, marker)


@pytest.fixture(scope="module")
def nb_bpe():
    return quiet_load(ROOT / "phase03_llms" / "01_tokenization.ipynb", "# teaching-copy: bpe")


@pytest.fixture(scope="module")
def nb_quant():
    return quiet_load(ROOT / "phase04_efficient" / "03_quantization.ipynb", "# teaching-copy: quant")


@pytest.fixture(scope="module")
def corpus():
    text = pydoc_text()
    return text[100_000:140_000], text[200_000:210_000]  # train, held-out


def unicode_strings(n: int, seed: int) -> list[str]:
    """Strings mixing ASCII, Latin-1, combining marks, Cyrillic, CJK, emoji and any code point (no surrogates)."""
    blocks = [(0x20, 0x7E), (0xA0, 0xFF), (0x300, 0x36F), (0x400, 0x4FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF),
              (0x0, 0x10FFFF)]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        chars = []
        for _ in range(int(torch.randint(1, 30, (1,), generator=g))):
            lo, hi = blocks[int(torch.randint(len(blocks), (1,), generator=g))]
            cp = int(torch.randint(lo, hi + 1, (1,), generator=g))
            chars.append(chr(0xFFFD if 0xD800 <= cp <= 0xDFFF else cp))
        out.append("".join(chars))
    return out


# ---------------------------------------------------------------------------------------------- 3.1: byte-level BPE

def test_bpe_teaching_copy_defines_the_components(nb_bpe):
    assert not [n for n in BPE_NAMES if not hasattr(nb_bpe, n)], "the teaching-copy cells no longer define them all"
    assert (nb_bpe.GPT2_SPLIT, nb_bpe.GPT4_SPLIT) == (bpe.GPT2_SPLIT, bpe.GPT4_SPLIT)
    assert nb_bpe.bytes_to_unicode() == bpe.bytes_to_unicode()
    data = bytes(range(256)) + "wörld 你好 👋".encode()
    assert nb_bpe.to_bytelevel(data) == bpe.to_bytelevel(data)
    assert nb_bpe.from_bytelevel(bpe.to_bytelevel(data)) == data


def test_chunking_and_merge_pair_agree(nb_bpe, corpus):
    train, _ = corpus
    for pattern in (bpe.GPT2_SPLIT, bpe.GPT4_SPLIT):
        assert nb_bpe.chunk_counts(train, pattern) == bpe.chunk_counts(train, pattern)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):  # small alphabets, so pairs and overlapping runs ("aaa") are frequent
        ids = torch.randint(0, 3, (int(torch.randint(0, 12, (1,), generator=g)),), generator=g).tolist()
        pair = tuple(torch.randint(0, 3, (2,), generator=g).tolist())
        assert nb_bpe.merge_pair(ids, pair, 99) == bpe.merge_pair(ids, pair, 99), (ids, pair)


@pytest.mark.parametrize("rank", ["identity", "tokenizers"])
def test_trainer_learns_the_notebooks_merges(nb_bpe, corpus, rank):
    counts = bpe.chunk_counts(corpus[0])
    rank_fn = {"identity": bpe.identity_rank, "tokenizers": bpe.tokenizers_rank}[rank]
    ours = bpe.train_bpe(counts, 500, rank_fn)
    assert nb_bpe.train_bpe_fast(counts, 500, rank_fn) == ours  # merges, pair counts, tokens saved
    assert nb_bpe.train_bpe_naive(counts, 120, rank_fn) == tuple(part[:120] for part in ours)  # the slow reference
    # the comparison can fail: the other tie-break learns a different list from the same counts
    other = bpe.tokenizers_rank if rank == "identity" else bpe.identity_rank
    assert bpe.train_bpe(counts, 500, other)[0] != ours[0]


def test_tokenizer_encodes_and_decodes_like_the_notebook(nb_bpe, corpus):
    train, held = corpus
    merges, _, _ = bpe.train_bpe(bpe.chunk_counts(train), 1024 - 257)
    ours, theirs = bpe.BytePairTokenizer(merges), nb_bpe.BytePairTokenizer(merges)
    assert ours.vocab == theirs.vocab and ours.special == theirs.special and ours.merges == theirs.merges
    texts = [held, held[:500] + "<|endoftext|>" + held[500:900] + "<|endoftext|>", *unicode_strings(200, seed=1)]
    for text in texts:
        for allowed in (True, False):
            assert ours.encode(text, allowed_special=allowed) == theirs.encode(text, allowed_special=allowed)
        ids = ours.encode(text)
        assert ours.decode(ids) == theirs.decode(ids) == text
    assert ours.decode([0xE4, 0xBD]) == theirs.decode([0xE4, 0xBD])  # half a character: same replacement
    # the comparison can fail: dropping the last merge changes the ids of the held-out text
    assert bpe.BytePairTokenizer(merges[:-1]).encode(held) != theirs.encode(held)


# ------------------------------------------------------------------------------------------------ 4.3: quantization

def test_quant_teaching_copy_defines_the_components(nb_quant):
    assert not [n for n in QUANT_NAMES if not hasattr(nb_quant, n)], "the teaching-copy cells no longer define them"


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("symmetric", [True, False])
def test_grids_and_fake_quantization_agree(nb_quant, bits, symmetric):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(48, 96, generator=g) * torch.rand(48, 1, generator=g) + 0.3 * torch.rand(1, 96, generator=g)
    ours, theirs = quant.grid(w, bits, symmetric), nb_quant.grid(w, bits, symmetric)
    assert all(torch.equal(a, b) for a, b in zip(ours[:2], theirs[:2])) and ours[2:] == theirs[2:]
    assert torch.equal(quant.to_int(w, *ours), nb_quant.to_int(w, *theirs))
    assert torch.equal(quant.quantize_to_grid(w, *ours), nb_quant.quantize_to_grid(w, *theirs))
    for granularity in ("tensor", "channel", "group"):
        expected = nb_quant.fake_quantize(w, bits, granularity, 32, symmetric)
        assert torch.equal(quant.fake_quantize(w, bits, granularity, 32, symmetric), expected), granularity
    assert quant.rel_error(w, w + 0.1) == nb_quant.rel_error(w, w + 0.1)


@pytest.mark.parametrize("group_size, block_size", [(None, 32), (16, 8), (32, 32), (24, 16)])
def test_gptq_and_awq_agree(nb_quant, group_size, block_size):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, 96, generator=g) / 10
    x = torch.randn(300, 12, generator=g) @ torch.randn(12, 96, generator=g) + 0.1 * torch.randn(300, 96, generator=g)
    assert torch.equal(quant.hessian(x), nb_quant.hessian(x))
    for bits in (4, 3):
        ours = quant.gptq_quantize(w, x, bits, group_size, block_size=block_size)
        assert torch.equal(ours, nb_quant.gptq_quantize(w, x, bits, group_size, block_size=block_size)), bits
        assert not torch.equal(ours, quant.gptq_quantize(w, x, bits, group_size, symmetric=True))  # can fail
    if group_size in (16, 32):
        (w_ours, a_ours), (w_nb, a_nb) = quant.awq_quantize(w, x, 4, group_size), nb_quant.awq_quantize(w, x, 4,
                                                                                                         group_size)
        assert a_ours == a_nb and torch.equal(w_ours, w_nb)


def tiny_gpt_and_windows(seed: int = 0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=48, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():  # away from the init, so that quantization moves the perplexity
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    windows = torch.randint(0, 48, (24, 17), generator=torch.Generator().manual_seed(seed + 1))
    return model, windows[:8], windows[8:]


def test_model_quantization_table_agrees(nb_quant):
    model, calib, evaluation = tiny_gpt_and_windows()
    with contextlib.redirect_stderr(io.StringIO()):  # the notebook's copy draws a progress bar
        theirs = nb_quant.quantization_table(model, calib, evaluation, 16, max_tokens=96)
    ours = quant.quantization_table(model, calib, evaluation, 16, max_tokens=96, progress=False)
    assert list(ours) == list(theirs) and ours == theirs  # perplexities, bits per weight and sizes, exactly
    assert len({row["ppl"] for row in ours.values()}) == len(ours)  # every method moved the perplexity: can fail
    c_ours, c_nb = quant.calibration_inputs(model, calib, 50), nb_quant.calibration_inputs(model, calib, 50)
    assert list(c_ours) == list(c_nb) and all(torch.equal(c_ours[n], c_nb[n]) for n in c_ours)
    dyn_ours, dyn_nb = quant.dynamic_int8(model), nb_quant.dynamic_int8(model)
    assert quant.serialized_bytes(dyn_ours) == nb_quant.serialized_bytes(dyn_nb)
    with torch.no_grad():
        assert torch.equal(dyn_ours(evaluation[:, :-1])[0], dyn_nb(evaluation[:, :-1])[0])


def test_perplexity_of_a_hugging_face_model_agrees(nb_quant):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    windows = torch.randint(0, 64, (6, 12), generator=torch.Generator().manual_seed(0))
    assert quant.perplexity(llama, windows, batch_size=4) == nb_quant.perplexity(llama, windows, batch_size=4)
    assert list(quant.quantizable_linears(llama)) == list(nb_quant.quantizable_linears(llama))
