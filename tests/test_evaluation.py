"""llm_roadmap.evaluation (lesson 8.5's harness): scoring against brute force and lm-eval's conventions, metrics
against closed forms and scikit-learn, and the notebook's teaching copies against the package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_teaching_copies import load_teaching_copy  # tests/ is on sys.path (pytest rootdir)

from llm_roadmap import evaluation

NOTEBOOK = Path(__file__).resolve().parents[1] / "phase08_advanced" / "05_evaluation.ipynb"


@pytest.fixture(scope="module")
def lm():
    """A tiny random Llama with a byte-level BPE tokenizer trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(["The capital of Velora is Brin.", "The flag of Tosk is pale rose pink."] * 5,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
                                         bos_token_id=0, eos_token_id=0, pad_token_id=0))
    return model.eval(), tok


REQUESTS = [("The capital of Velora is", " Brin"), ("The capital of Velora is ", "Brin"),
            ("The flag of Tosk is", " pale rose pink"), ("Q", " a much longer continuation of several words")]


def brute_force(model, tok, context, continuation):
    """log p(continuation | context) token by token, each from its own forward pass on the growing prefix."""
    context_ids, target = evaluation.encode_pair(tok, context, continuation)
    total, prefix = 0.0, list(context_ids)
    for token in target:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prefix])).logits[0, -1]
        total += float(torch.log_softmax(logits, -1)[token])
        prefix.append(token)
    return total


def test_loglikelihoods_equal_brute_force_at_any_batch_size(lm):
    model, tok = lm
    expected = [brute_force(model, tok, c, t) for c, t in REQUESTS]
    for batch_size in (1, 3, 8):
        np.testing.assert_allclose(evaluation.loglikelihoods(model, tok, REQUESTS, batch_size=batch_size), expected,
                                   atol=1e-4)


def test_encode_pair_moves_trailing_space_like_lm_eval(lm):
    _, tok = lm
    assert evaluation.encode_pair(tok, "The capital of Velora is ", "Brin") == evaluation.encode_pair(
        tok, "The capital of Velora is", " Brin")
    with pytest.raises(ValueError):
        evaluation.encode_pair(tok, "", " x")


def test_multiple_choice_metrics_normalise_by_characters():
    lls = [[-4.0, -6.0], [-3.0, -3.5]]
    choices = [["ab", "abcdef"], ["a", "bb"]]
    out = evaluation.multiple_choice_metrics(lls, choices, [1, 0])
    assert out["pred"].tolist() == [0, 0]  # the sum prefers the short choice
    assert out["pred_norm"].tolist() == [1, 1]  # per character: -1 beats -2, and -1.75 beats -3
    assert out["acc"].tolist() == [0.0, 1.0] and out["acc_norm"].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError):
        evaluation.multiple_choice_metrics([[-1.0]], [["a", "b"]], [0])


def test_exact_match_and_normalisation():
    assert evaluation.exact_match(["Brin", "brin"], ["Brin", "Brin"]).tolist() == [1.0, 0.0]
    assert evaluation.exact_match(["The Fox!", "a  owl"], ["fox", "owl"], normalize=True).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        evaluation.exact_match(["a"], [])


def test_bootstrap_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    scores = (rng.random(2000) < 0.7).astype(float)
    mean, lo, hi = evaluation.bootstrap_ci(scores, n_resamples=4000)
    half = 1.96 * scores.std(ddof=1) / np.sqrt(scores.size)
    assert lo < mean < hi and abs((hi - lo) / 2 - half) < 0.1 * half


def test_paired_bootstrap_controls():
    rng = np.random.default_rng(1)
    a = (rng.random(500) < 0.7).astype(float)
    assert evaluation.paired_bootstrap(a, a) == (0.0, 0.0, 0.0)  # a model against itself
    b = a.copy()
    b[rng.choice(np.flatnonzero(a), 60, replace=False)] = 0.0  # b loses 60 items a gets right
    diff, lo, hi = evaluation.paired_bootstrap(a, b)
    assert diff == pytest.approx(60 / 500) and lo > 0
    with pytest.raises(ValueError):
        evaluation.paired_bootstrap(a, b[:-1])


def test_ece_against_scikit_learn_and_a_closed_form():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(2)
    conf = rng.random(3000) * 0.75 + 0.25
    correct = (rng.random(3000) < conf).astype(float)
    count, mean_conf, accuracy = evaluation.reliability_bins(conf, correct, 10)
    frac, pred = calibration_curve(correct, conf, n_bins=10, strategy="uniform")
    filled = count > 0
    np.testing.assert_allclose(mean_conf[filled], pred)
    np.testing.assert_allclose(accuracy[filled], frac)
    assert evaluation.expected_calibration_error(conf, correct) < 0.05  # calibrated by construction
    # always right at confidence 0.6: ECE = 0.4 exactly
    assert evaluation.expected_calibration_error(np.full(10, 0.6), np.ones(10)) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        evaluation.expected_calibration_error([1.5], [1.0])


def test_ngram_overlap():
    train = ["the capital of velora is brin and more"]
    out = evaluation.ngram_overlap(["The capital of Velora is Brin", "the flag of tosk is red", "short"], train, n=3)
    assert out.tolist() == [1.0, 0.0, 0.0]


def test_lm_eval_task_files_round_trip(tmp_path):
    records = [dict(context="The capital of Velora is", choices=["Brin", "Tosk"], gold=0)]
    folder = evaluation.write_lm_eval_task(tmp_path, "toy", records)
    assert (folder / "toy.yaml").read_text().startswith("task: toy\n")
    assert '"gold": 0' in (folder / "toy.jsonl").read_text()
    with pytest.raises(ValueError):
        evaluation.write_lm_eval_task(tmp_path, "bad", [dict(context="x")])


@pytest.fixture(scope="module")
def nb():
    return load_teaching_copy(NOTEBOOK, "# teaching-copy:")


def test_scoring_teaching_copy_equals_the_package(nb, lm):
    model, tok = lm
    for context, continuation in REQUESTS:
        assert nb.encode_pair(tok, context, continuation) == evaluation.encode_pair(tok, context, continuation)
    ours = evaluation.loglikelihoods(model, tok, REQUESTS)
    theirs = [nb.loglikelihood(model, tok, c, t) for c, t in REQUESTS]
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_metrics_teaching_copy_equals_the_package(nb):
    rng = np.random.default_rng(3)
    choices = [[("x" * int(n)) for n in rng.integers(1, 12, size=4)] for _ in range(200)]
    lls = rng.normal(-8, 3, size=(200, 4)).tolist()
    gold = rng.integers(0, 4, size=200)
    ours, theirs = evaluation.multiple_choice_metrics(lls, choices, gold), nb.mc_metrics(lls, choices, gold)
    assert np.array_equal(ours["acc"], theirs["acc"]) and np.array_equal(ours["acc_norm"], theirs["acc_norm"])
    assert not np.array_equal(nb.mc_metrics(lls, choices, gold, normalise=False)["acc_norm"], ours["acc_norm"])


def test_bootstrap_and_calibration_teaching_copies_equal_the_package(nb):
    rng = np.random.default_rng(4)
    a, b = (rng.random(300) < 0.7).astype(float), (rng.random(300) < 0.6).astype(float)
    assert nb.paired_bootstrap(a, b, 1000, seed=5) == evaluation.paired_bootstrap(a, b, 1000, seed=5)
    conf = np.concatenate([rng.random(500), [0.0, 0.1, 0.5, 1.0]])  # bin edges included
    correct = (rng.random(conf.size) < conf).astype(float)
    for bins in (5, 10, 15):
        assert nb.expected_calibration_error(conf, correct, bins) == pytest.approx(
            evaluation.expected_calibration_error(conf, correct, bins), abs=1e-12)
