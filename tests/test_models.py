"""The package's reusable components: the GPT of lesson 3.2 and the synthetic language with a known entropy rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_roadmap.data.synthetic import MarkovLanguage
from llm_roadmap.models.gpt import GPT, GPTConfig, filter_logits


@pytest.fixture(scope="module")
def tiny_hf_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # move weights off the 0.02 init, where exact and tanh GELU differ by only ~6e-6
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_gpt_matches_hf_gpt2_logits(tiny_hf_gpt2):
    ours = GPT.from_hf_gpt2(tiny_hf_gpt2).eval()
    idx = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = tiny_hf_gpt2(idx).logits
        mine, _ = ours(idx)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    import torch.nn.functional as F

    mlp = ours.h[0].mlp
    x = torch.randn(2, 5, 48)
    with torch.no_grad():  # control: the exact GELU would be visible at this tolerance
        tanh_out = mlp(x)
        exact_out = mlp.c_proj(F.gelu(mlp.c_fc(x)))
    assert (tanh_out - exact_out).abs().max() > 1e-4
    assert ours.num_params(non_embedding=False) == sum(p.numel() for p in tiny_hf_gpt2.parameters())


def test_gpt_greedy_generation_matches_hf(tiny_hf_gpt2):
    ours = GPT.from_hf_gpt2(tiny_hf_gpt2).eval()
    prompt = torch.tensor([[5, 17, 42]])
    mine = ours.generate(prompt, max_new_tokens=10, temperature=0)
    theirs = tiny_hf_gpt2.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert mine.tolist() == theirs.tolist()


def test_gpt_loss_is_cross_entropy_and_block_size_enforced():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))
    x = torch.randint(0, 11, (2, 8))
    logits, loss = model(x, x)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), x.reshape(-1))
    torch.testing.assert_close(loss, ref)
    assert abs(loss.item() - np.log(11)) < 0.3, "a freshly initialised model predicts near-uniformly"
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)


def test_filter_logits_top_k_and_top_p_against_brute_force():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[True, True, False, False, False]]
    probs = logits.softmax(-1)[0].tolist()  # 0.535, 0.197, 0.119, 0.073, 0.027
    for p in [0.3, 0.6, 0.75, 0.9, 0.99]:
        # brute force: the smallest prefix (by descending probability) whose mass reaches p
        n, mass = 0, 0.0
        while mass < p:
            mass += probs[n]
            n += 1
        kept = torch.isfinite(filter_logits(logits, top_p=p))[0].tolist()
        assert kept == [True] * n + [False] * (5 - n), p


def test_markov_language_entropy_rate_is_the_true_models_loss():
    lang = MarkovLanguage(vocab_size=16, order=2, concentration=0.2, seed=3)
    P = lang.transition
    assert np.allclose(P.sum(1), 1)
    # stationarity: pushing pi through the context chain gives pi back
    V, n_ctx = 16, 256
    nxt = (np.arange(n_ctx)[:, None] * V + np.arange(V)[None, :]) % n_ctx
    pushed = np.bincount(nxt.ravel(), weights=(lang.stationary[:, None] * P).ravel(), minlength=n_ctx)
    assert np.allclose(pushed, lang.stationary, atol=1e-10)
    stream = lang.sample(100_000, seed=1)
    assert stream.min() >= 0 and stream.max() < 16
    assert abs(-lang.log_prob(stream) - lang.entropy_rate()) < 0.02
    assert lang.unigram_entropy() > lang.entropy_rate() + 0.3, "context must matter for this language"
    freq = np.bincount(stream, minlength=16) / len(stream)
    assert np.abs(freq - lang.unigram_distribution()).max() < 0.01
    with pytest.raises(ValueError):
        MarkovLanguage(vocab_size=1)
