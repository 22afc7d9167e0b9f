"""Lesson 6.2's teaching copies must agree with llm_roadmap.alignment, which the phase 10 alignment capstone imports.

Lesson 6.2 writes the log-probability helpers, SFT, sampling, the DPO and IPO losses and the preference trainer in
cells starting `# teaching-copy: dpo` (and checks the losses against TRL's DPOTrainer there). These tests execute only
those cells and compare them with the package on the same tiny Llama and the same inputs, plus a few closed forms
of the losses and the package-only extensions (chunked reference pass, a loss given as a function).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_teaching_copies import load_teaching_copy  # tests/ is on sys.path (pytest rootdir)

from llm_roadmap import alignment

NOTEBOOK = Path(__file__).resolve().parents[1] / "phase06_alignment" / "02_dpo_grpo.ipynb"
VOCAB, EOS, BOS = 12, 2, 1


@pytest.fixture(scope="module")
def nb():
    module = load_teaching_copy(NOTEBOOK, "# teaching-copy: dpo")
    module.device = "cpu"  # the lesson's cells read the device from the notebook's globals
    return module


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32, bos_token_id=BOS,
                         eos_token_id=EOS, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def random_pairs(n: int, seed: int = 0):
    """(prompt, chosen, rejected) id lists of varied lengths, every completion ending in EOS."""
    rng = np.random.default_rng(seed)

    def completion():
        return [int(t) for t in rng.integers(3, VOCAB, size=rng.integers(1, 8))] + [EOS]

    return [([BOS] + [int(t) for t in rng.integers(3, VOCAB, size=rng.integers(0, 3))], completion(), completion())
            for _ in range(n)]


def test_teaching_copy_defines_the_components(nb):
    names = ("batch_tensors", "token_logps", "sequence_logps", "sample", "sft", "dpo_loss", "ipo_loss", "pair_loss",
             "preference_train")
    assert not [n for n in names if not hasattr(nb, n)], "the teaching-copy cells no longer define them all"


def test_same_tensors_and_log_probs(nb):
    model, pairs = tiny_llama(), random_pairs(20)
    prompts, completions = [p for p, _, _ in pairs], [c for _, c, _ in pairs]
    for ours, theirs in zip(alignment.batch_tensors(prompts, completions), nb.batch_tensors(prompts, completions)):
        assert torch.equal(ours, theirs)
    with torch.no_grad():
        ours, ours_mask = alignment.token_logps(model, prompts, completions)
        theirs, theirs_mask = nb.token_logps(model, prompts, completions)
        assert torch.equal(ours_mask, theirs_mask)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        torch.testing.assert_close(alignment.sequence_logps(model, prompts, completions),
                                   nb.sequence_logps(model, prompts, completions), rtol=0, atol=0)


def test_sequence_log_probs_equal_a_brute_force_sum():
    model, pairs = tiny_llama(), random_pairs(6, seed=1)
    with torch.no_grad():
        ours = alignment.sequence_logps(model, [p for p, _, _ in pairs], [c for _, c, _ in pairs])
        for row, (prompt, completion, _) in enumerate(pairs):  # one unpadded sequence at a time
            logp = model(input_ids=torch.tensor([prompt + completion])).logits[0].double().log_softmax(-1)
            brute = sum(logp[len(prompt) + t - 1, tok].item() for t, tok in enumerate(completion))
            assert ours[row].item() == pytest.approx(brute, abs=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_same_losses(nb, beta):
    gen = torch.Generator().manual_seed(0)
    pi_w, pi_l, ref_w, ref_l = (torch.randn(16, generator=gen) * 5 for _ in range(4))
    len_w, len_l = (torch.randint(1, 9, (16,), generator=gen).float() for _ in range(2))
    assert (alignment.dpo_loss(pi_w, pi_l, ref_w, ref_l, beta).item()
            == nb.dpo_loss(pi_w, pi_l, ref_w, ref_l, beta).item())
    assert (alignment.ipo_loss(pi_w, pi_l, ref_w, ref_l, beta, len_w, len_l).item()
            == nb.ipo_loss(pi_w, pi_l, ref_w, ref_l, beta, len_w, len_l).item())


def test_loss_closed_forms():
    x = torch.tensor([-3.0, -7.5])
    assert alignment.dpo_loss(x, x, x, x, 0.1).item() == pytest.approx(math.log(2))  # pi = ref: log 2
    margin = 2.0  # one pair, log-ratio gap 2 nats: -log sigmoid(beta * 2)
    value = alignment.dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), torch.zeros(1), torch.zeros(1), 0.5).item()
    assert value == pytest.approx(math.log1p(math.exp(-0.5 * margin)))
    one = torch.ones(1)  # IPO at h = 0: (1 / (2 tau))^2
    assert alignment.ipo_loss(one, one, one, one, 0.25, one, one).item() == pytest.approx(4.0)


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_same_training(nb, kind):
    """Both trainers from the same weights, pairs and seed: the same loss history and the same final weights."""
    ref, pairs = tiny_llama(1), random_pairs(40, seed=2)
    ours, ours_hist = alignment.preference_train(kind, copy.deepcopy(ref), ref, pairs, 5, 1e-2, 8, 0.3, seed=4,
                                                 ref_chunk=7)  # a chunked reference pass: same numbers
    theirs, theirs_hist = nb.preference_train(kind, copy.deepcopy(ref), ref, pairs, 5, 1e-2, 8, 0.3, 4)
    np.testing.assert_allclose(ours_hist, theirs_hist, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert ours_hist[0] != pytest.approx(ours_hist[-1])  # it trained


def test_a_loss_function_and_its_broken_twin():
    """pair_loss accepts a function of (pi_w, pi_l, ref_w, ref_l, beta, len_w, len_l) with lengths in tokens."""
    policy, ref, pairs = tiny_llama(2), tiny_llama(3), random_pairs(12, seed=3)
    with torch.no_grad():
        ref_w, ref_l = alignment.sequence_logps(ref, [p for p, _, _ in pairs] * 2,
                                                [c for _, c, _ in pairs] + [r for _, _, r in pairs]).chunk(2)
        seen = {}

        def spy(pi_w, pi_l, rw, rl, beta, len_w, len_l):
            seen.update(len_w=len_w.tolist(), len_l=len_l.tolist())
            return alignment.dpo_loss(pi_w, pi_l, rw, rl, beta)

        assert alignment.pair_loss(spy, policy, pairs, ref_w, ref_l, 0.2).item() == pytest.approx(
            alignment.pair_loss("dpo", policy, pairs, ref_w, ref_l, 0.2).item())
        assert seen == {"len_w": [float(len(c)) for _, c, _ in pairs], "len_l": [float(len(r)) for _, _, r in pairs]}
        with pytest.raises(ValueError):
            alignment.pair_loss("dpo-typo", policy, pairs, ref_w, ref_l, 0.2)


def test_same_sft_and_sampling(nb):
    pairs = random_pairs(30, seed=5)
    prompts, completions = [p for p, _, _ in pairs], [c for _, c, _ in pairs]
    ours = alignment.sft(tiny_llama(4), prompts, completions, 4, 1e-2, 8, seed=6)
    theirs = nb.sft(tiny_llama(4), prompts, completions, 4, 1e-2, 8, 6)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    same_len = [[BOS, 5]] * 6
    torch.manual_seed(7)
    ours_samples = alignment.sample(ours, same_len, 6, EOS)
    torch.manual_seed(7)
    assert ours_samples == nb.sample(ours, same_len, 6, EOS)
    assert all(EOS not in s[:-1] for s in ours_samples)  # cut at the first end token


def test_shared_reference_logps():
    """Reference log-probs computed once and passed in train exactly as the ones preference_train computes itself;
    a wrong count is refused with the reason."""
    ref, pairs = tiny_llama(1), random_pairs(20, seed=5)
    own, own_hist = alignment.preference_train("dpo", copy.deepcopy(ref), ref, pairs, 3, 1e-2, 8, 0.3, seed=1)
    shared = alignment.reference_logps(ref, pairs)
    given, given_hist = alignment.preference_train("dpo", copy.deepcopy(ref), ref, pairs, 3, 1e-2, 8, 0.3, seed=1,
                                                   ref_logps=shared)
    assert own_hist == given_hist
    swapped = (shared[1], shared[0])  # the rejected side's log-probs as the chosen's: a different loss
    _, swapped_hist = alignment.preference_train("dpo", copy.deepcopy(ref), ref, pairs, 3, 1e-2, 8, 0.3, seed=1,
                                                 ref_logps=swapped)
    assert swapped_hist[0] != pytest.approx(own_hist[0])
    with pytest.raises(ValueError, match="one of each per pair"):
        alignment.preference_train("dpo", copy.deepcopy(ref), ref, pairs, 1, 1e-2, 8, 0.3, seed=1,
                                   ref_logps=(shared[0][:-1], shared[1]))
