"""Unit tests of llm_roadmap.tokenizer and llm_roadmap.quantization against independent references.

Tokenizer: Hugging Face `tokenizers` (its BpeTrainer's merges, its BPE model's ids), `transformers`' save/reload,
the trainer's closed-form token count, lossless round trips, JSON save/load, clear errors. Quantization: the
half-step error bound, PyTorch's own quantizers, brute-force optimal brain surgery for GPTQ, the closed forms of
bits per weight and bytes, and perplexity of a uniform model.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn as nn

from llm_roadmap import quantization as quant
from llm_roadmap import tokenizer as bpe
from llm_roadmap.data import pydoc_text
from llm_roadmap.models.gpt import GPT, GPTConfig


@pytest.fixture(scope="module")
def corpus():
    text = pydoc_text()
    return text[:50_000], text[300_000:312_000]  # train, held-out


@pytest.fixture(scope="module")
def trained(corpus):
    return bpe.BytePairTokenizer.train(corpus[0], vocab_size=700)


def random_strings(n: int, seed: int) -> list[str]:
    """Code points from ASCII, Latin-1, combining marks, Greek/Cyrillic, CJK, emoji, spaces; no surrogates."""
    blocks = [(0x20, 0x7E), (0xA0, 0xFF), (0x300, 0x36F), (0x370, 0x4FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF)]
    g = torch.Generator().manual_seed(seed)
    strings = []
    for _ in range(n):
        chars = []
        for _ in range(int(torch.randint(1, 40, (1,), generator=g))):
            lo, hi = blocks[int(torch.randint(len(blocks), (1,), generator=g))]
            chars.append(" " if torch.rand(1, generator=g) < 0.15 else chr(int(torch.randint(lo, hi + 1, (1,),
                                                                                               generator=g))))
        strings.append("".join(chars))
    return strings


# ------------------------------------------------------------------------------------------------------- tokenizer

def library_merges(tok) -> list[tuple[bytes, bytes]]:
    raw = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(bpe.from_bytelevel(s) for s in (m if isinstance(m, list) else m.split(" "))) for m in raw]


def test_trainer_reproduces_tokenizers_bpetrainer(corpus):
    from tokenizers import Tokenizer, decoders, models, trainers
    from tokenizers.pre_tokenizers import ByteLevel

    lib = Tokenizer(models.BPE())
    lib.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=True)
    lib.decoder = decoders.ByteLevel()
    lib.train_from_iterator([corpus[0]], trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|endoftext|>"], show_progress=False, initial_alphabet=ByteLevel.alphabet()))
    ours = bpe.BytePairTokenizer.train(corpus[0], vocab_size=700, rank=bpe.tokenizers_rank)
    ours_bytes = [(ours.vocab[a], ours.vocab[b]) for a, b in ours.merge_list]
    assert ours_bytes == library_merges(lib)
    assert ours.encode(corpus[1]) != [] and len(ours.encode(corpus[1])) == len(lib.encode(corpus[1]).ids)
    # the tie-break matters: the byte-value order learns a different list from the same text
    assert bpe.BytePairTokenizer.train(corpus[0], vocab_size=700).merge_list != ours.merge_list


def test_trainer_predicts_the_encoded_length(corpus):
    counts = bpe.chunk_counts(corpus[0])
    merges, merge_counts, saved = bpe.train_bpe(counts, 400)
    n_bytes = len(corpus[0].encode("utf-8"))
    assert len(bpe.BytePairTokenizer(merges).encode_ordinary(corpus[0])) == n_bytes - sum(saved)
    assert all(s <= c for s, c in zip(saved, merge_counts)) and merge_counts == sorted(merge_counts, reverse=True)


def test_training_on_several_texts_counts_their_chunks_together(corpus):
    parts = [corpus[0][:20_000], corpus[0][20_000:]]
    counts = bpe.chunk_counts(parts[0]) + bpe.chunk_counts(parts[1])
    assert bpe.BytePairTokenizer.train(parts, vocab_size=500).merge_list == bpe.train_bpe(counts, 500 - 257)[0]


def test_round_trip_specials_and_vocab_size(trained):
    assert trained.vocab_size == 700 and trained.special == {"<|endoftext|>": 699}
    for s in random_strings(300, seed=0):
        assert trained.decode(trained.encode(s)) == s
        assert trained.decode(trained.encode(s + "<|endoftext|>" + s)) == s + "<|endoftext|>" + s
    text = "def f(x):<|endoftext|>return x"
    atomic, spelled = trained.encode(text), trained.encode(text, allowed_special=False)
    assert atomic.count(699) == 1 and 699 not in spelled and len(spelled) > len(atomic)
    assert trained.decode(trained.encode("你好")[:1]) == "\ufffd"  # a token holding part of a character


def test_special_tokens_none_and_overlapping(corpus):
    merges, _, _ = bpe.train_bpe(bpe.chunk_counts(corpus[0]), 200)
    plain = bpe.BytePairTokenizer(merges, special_tokens=())
    assert plain.encode(corpus[1]) == plain.encode_ordinary(corpus[1])  # no specials: nothing is cut out
    two = bpe.BytePairTokenizer(merges, special_tokens=("<|fim|>", "<|fim|>x"))
    assert two.encode("a<|fim|>xb") == [*two.encode("a"), two.special["<|fim|>x"], *two.encode("b")]


@pytest.mark.parametrize("pattern", [bpe.GPT2_SPLIT, bpe.GPT4_SPLIT])
def test_same_ids_through_tokenizers_and_transformers(corpus, pattern, tmp_path):
    from transformers import AutoTokenizer

    ours = bpe.BytePairTokenizer.train(corpus[0], vocab_size=600, pattern=pattern)
    lib = ours.to_tokenizers()
    samples = [corpus[1], corpus[1][:300] + "<|endoftext|>" + corpus[1][300:600], *random_strings(200, seed=2)]
    for s in samples:
        assert lib.encode(s).ids == ours.encode(s), repr(s[:60])
    ours.to_transformers().save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(samples[1])["input_ids"] == ours.encode(samples[1])
    assert reloaded.decode(ours.encode(samples[1])) == samples[1] and reloaded.eos_token == "<|endoftext|>"
    assert reloaded.eos_token_id == ours.special["<|endoftext|>"] and len(reloaded) == ours.vocab_size
    with pytest.raises(ValueError, match="eos_token"):
        ours.to_transformers(eos_token="</s>")


def test_save_load_json(trained, corpus, tmp_path):
    path = trained.save(tmp_path / "bpe.json")
    data = json.loads(path.read_text(encoding="utf-8"))  # plain JSON, no pickle
    assert data["format"] == bpe.FORMAT and len(data["merges"]) == 700 - 257
    loaded = bpe.BytePairTokenizer.load(path)
    assert loaded.vocab == trained.vocab and loaded.encode(corpus[1]) == trained.encode(corpus[1])
    (tmp_path / "other.json").write_text(json.dumps({"merges": []}))
    with pytest.raises(ValueError, match="format"):
        bpe.BytePairTokenizer.load(tmp_path / "other.json")


def test_tokenizer_clear_errors(trained):
    with pytest.raises(ValueError, match="vocab_size"):
        bpe.BytePairTokenizer.train("abc", vocab_size=200)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        trained.decode([10_000])
    with pytest.raises(TypeError, match="str"):
        trained.encode(b"bytes")
    with pytest.raises(ValueError, match="not defined"):
        bpe.BytePairTokenizer([(97, 300)])
    with pytest.raises(ValueError, match="repeats"):
        bpe.BytePairTokenizer([(97, 98), (97, 98)])
    with pytest.raises(ValueError, match="distinct"):
        bpe.BytePairTokenizer([], special_tokens=("<a>", "<a>"))
    with pytest.raises(ValueError, match="n_merges"):
        bpe.train_bpe({"ab": 1}, -1)
    twice = bpe.BytePairTokenizer([(97, 98), (256, 99), (98, 99), (97, 258)])  # "abc" learned along two paths
    assert twice.vocab[257] == twice.vocab[259] == b"abc" and twice.decode(twice.encode("abc abc")) == "abc abc"
    with pytest.raises(ValueError, match="same bytes"):
        twice.to_tokenizers()


# ---------------------------------------------------------------------------------------------------- quantization

@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_round_to_nearest_error_within_half_a_step(bits, symmetric, granularity):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(32, 64, generator=g) * torch.rand(32, 1, generator=g) + 0.2
    w_hat = quant.fake_quantize(w, bits, granularity, 16, symmetric)
    rows = {"tensor": w.reshape(1, -1), "channel": w, "group": w.reshape(-1, 16)}[granularity]
    scale = quant.grid(rows, bits, symmetric)[0]
    err = (rows - w_hat.reshape(rows.shape)).abs()
    assert (err <= scale / 2 * (1 + 1e-5)).all()  # every weight lies inside its grid's range
    assert (err.amax(-1, keepdim=True) > scale / 20).any()  # and rounding really happened (can fail)
    levels = quant.to_int(rows, *quant.grid(rows, bits, symmetric)).unique()
    assert len(levels) <= 2**bits - (1 if symmetric else 0)
    zero = torch.zeros(1, 8)
    assert torch.equal(quant.fake_quantize(torch.cat([w[:1, :56], zero], 1), bits, "channel", symmetric=symmetric)
                       [:, 56:], zero)  # zero is exact on both grids


def test_integers_equal_torchs_quantizers():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g) * torch.rand(64, 1, generator=g)
    for symmetric, dtype in ((True, torch.qint8), (False, torch.quint8)):
        scale, zero, qmin, qmax = quant.grid(w, 8, symmetric)
        with warnings.catch_warnings():  # torch 2.13 deprecates quantized tensors; they still work
            warnings.simplefilter("ignore")
            theirs = torch.quantize_per_channel(w, scale.flatten().double(), zero.flatten().long(), 0, dtype)
        ours = quant.to_int(w, scale, zero, qmin, qmax)
        ratio = w / scale
        near_tie = ((ratio - ratio.floor()) - 0.5).abs() < 1e-4  # float32 division vs torch's double reciprocal
        differ = theirs.int_repr().float() != ours
        assert not (differ & ~near_tie).any() and (theirs.int_repr().float() - ours).abs().max() <= 1


def obs_bruteforce(w, x, bits):
    """Sequential optimal brain surgery with a fresh inverse of the remaining columns' Hessian at every step."""
    w, h, g = w.double().clone(), quant.hessian(x), quant.grid(w.double(), bits, False)
    q = torch.zeros_like(w)
    for j in range(w.shape[1]):
        h_inv = torch.linalg.inv(h[j:, j:])
        q[:, j] = quant.quantize_to_grid(w[:, j:j + 1], *g)[:, 0]
        w[:, j:] -= ((w[:, j] - q[:, j]) / h_inv[0, 0])[:, None] * h_inv[0][None, :]
    return q.float()


def test_gptq_equals_brute_force_obs_and_reduces_to_rtn():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 24, generator=g)
    mixing = torch.randn(6, 24, generator=g)
    draw = lambda n: torch.randn(n, 6, generator=g) @ mixing + 0.1 * torch.randn(n, 24, generator=g)  # noqa: E731
    x, x_test = draw(200), draw(200)  # calibration, held-out: correlated features
    q = quant.gptq_quantize(w, x, 3, block_size=8)
    assert torch.allclose(q, obs_bruteforce(w, x, 3), atol=1e-5)
    rtn = quant.fake_quantize(w, 3, "channel", symmetric=False)
    assert torch.allclose(quant.gptq_quantize(w, torch.eye(24) * 3.0, 3), rtn, atol=1e-6)  # H ~ I: nothing to fix
    assert not torch.allclose(q, rtn)
    # and on held-out inputs of the same kind it lowers the layer's output error well below round-to-nearest
    assert quant.rel_error(x_test @ q.T, x_test @ w.T) < 0.8 * quant.rel_error(x_test @ rtn.T, x_test @ w.T)


def test_awq_never_loses_to_rtn_on_calibration_data():
    g = torch.Generator().manual_seed(2)
    salience = torch.exp(torch.randn(64, generator=g))
    x = torch.randn(512, 64, generator=g) * salience
    w = torch.randn(32, 64, generator=g) / 8
    w_hat, alpha = quant.awq_quantize(w, x, 4, 16)
    rtn = quant.fake_quantize(w, 4, "group", 16, symmetric=False)
    err = lambda v: (x @ v.T - x @ w.T).pow(2).mean().item()  # noqa: E731
    assert err(w_hat) <= err(rtn) * (1 + 1e-6)  # alpha = 0 is RTN itself, so the search cannot do worse
    assert alpha > 0 and err(w_hat) < 0.95 * err(rtn)  # and strongly salient channels make scaling pay


def test_bits_bytes_and_model_quantization_closed_forms():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=32)).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert quant.model_bytes(model) == 4 * n_params  # fp32, the tied head counted once
    methods = quant.weight_only_methods(group=16)
    for b in (4, 3):
        assert quant.mean_bits(model, methods[f"int{b} group RTN"][1]) == pytest.approx(b + (16 + b) / 16)
    linears = quant.quantizable_linears(model)
    assert "lm_head" in linears and len(linears) == 4 * 2 + 1  # c_attn, c_proj, c_fc, mlp c_proj per block + head
    linear_weights = {id(m.weight): m.weight.numel() for m in linears.values()}
    other = n_params - sum(linear_weights.values())
    per_channel = sum(m.weight.numel() * (8 + 16 / m.weight.shape[1]) / 8 for m in
                      {id(m.weight): m for m in linears.values()}.values())
    assert quant.model_bytes(model, methods["int8 per-channel"][1]) == pytest.approx(4 * other + per_channel)
    windows = torch.randint(0, 40, (8, 9), generator=torch.Generator().manual_seed(0))
    calib = quant.calibration_inputs(model, windows, max_tokens=40)
    assert all(x.shape == (40, linears[n].in_features) for n, x in calib.items())
    before = {n: p.clone() for n, p in model.state_dict().items()}
    q = quant.quantize_model(model, methods["int4 group RTN"][0], calib)
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())  # the original is untouched
    assert q.lm_head.weight is q.wte.weight  # still tied, so the embedding is quantized too
    for name, layer in quant.quantizable_linears(q).items():
        w = dict(model.named_modules())[name].weight
        assert torch.equal(layer.weight, quant.fake_quantize(w, 4, "group", 16, symmetric=False)), name
    assert torch.equal(q.wpe.weight, model.wpe.weight)  # position embeddings and LayerNorms stay float
    with pytest.raises(KeyError, match="calibration"):
        quant.quantize_model(model, methods["int4 GPTQ"][0], {})


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # zero logits: every next token has probability 1/40
    windows = torch.randint(0, 40, (5, 9), generator=torch.Generator().manual_seed(0))
    assert quant.perplexity(model, windows, batch_size=2) == pytest.approx(40, rel=1e-6)


def test_dynamic_int8_is_smaller_and_close():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).eval()
    mlp_int8 = quant.dynamic_int8(mlp)
    ratio = quant.serialized_bytes(mlp) / quant.serialized_bytes(mlp_int8)
    assert 3.0 < ratio < 4.1, ratio  # int8 for fp32, plus scales and torch.save's framing
    x = torch.randn(64, 256)
    with torch.no_grad():
        assert quant.rel_error(mlp_int8(x), mlp(x)) < 0.05


def test_quantization_clear_errors():
    w = torch.randn(8, 24)
    with pytest.raises(ValueError, match="bits"):
        quant.grid(w, 1, True)
    with pytest.raises(ValueError, match="granularity"):
        quant.fake_quantize(w, 4, "row")
    with pytest.raises(ValueError, match="divide"):
        quant.fake_quantize(w, 4, "group", 16)
    with pytest.raises(ValueError, match="calibration"):
        quant.gptq_quantize(w, torch.randn(10, 12), 4)
    with pytest.raises(ValueError, match="calibration"):
        quant.awq_quantize(w, torch.randn(10, 12), 4, 8)
    assert math.isfinite(quant.rel_error(quant.fake_quantize(torch.zeros(4, 8), 4, "channel"), torch.ones(4, 8)))
