"""llm_roadmap.tasks.alignment: the judges phase 6 trusts are exact, seeded and behave as documented."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm_roadmap.tasks.alignment import HACK, NEGATIVE, POSITIVE, ArithmeticTask, ReviewTask


def test_review_rewards_by_hand():
    task = ReviewTask(seed=3)
    w = task.weights
    assert task.true_reward("great film") == pytest.approx((w["great"] + w["film"]) / 2)
    assert task.true_reward("great film!") == pytest.approx((w["great"] + w["film"] + w[HACK]) / 3)
    assert task.true_reward("zzz") == -1.0 and task.true_reward("") == -1.0
    assert task.proxy_reward("great film ! !") == pytest.approx(w["great"] + w["film"] + 2 * task.proxy_hack_bonus)
    assert all(w[p] > 0.3 for p in POSITIVE) and all(w[n] < -0.3 for n in NEGATIVE)


def test_the_proxy_is_exploitable_and_the_truth_is_not():
    task = ReviewTask(seed=0)
    honest, spam = "great film", "great film ! ! ! ! ! !"
    assert task.proxy_reward(spam) > task.proxy_reward(honest) and task.true_reward(spam) < task.true_reward(honest)
    long = " ".join(["great"] * 20)
    assert task.proxy_reward(long) > 5 * task.proxy_reward("great")  # length pays under the proxy ...
    assert task.true_reward(long) == pytest.approx(task.true_reward("great"))  # ... not under the truth


def test_samples_are_seeded_and_in_the_vocabulary():
    task = ReviewTask(seed=0)
    a = task.sample(200, np.random.default_rng(1))
    assert a == task.sample(200, np.random.default_rng(1))
    assert all(task.min_words <= len(t.split()) <= task.max_words for t in a)
    assert {w for t in a for w in task.words(t)} <= set(task.vocabulary)
    assert ReviewTask(seed=1).weights != task.weights  # the hidden truth depends on the seed


def test_bradley_terry_labels_follow_their_probability():
    task = ReviewTask(seed=0)
    a, b = "good film", "dull plot"
    p = task.preference_probability(a, b, temperature=0.5)
    assert p == pytest.approx(1 / (1 + math.exp(-(task.true_reward(a) - task.true_reward(b)) / 0.5)))
    rng = np.random.default_rng(0)
    share = np.mean([task.preference(a, b, rng, temperature=0.5) for _ in range(20_000)])
    assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / 20_000)
    pairs = task.preference_pairs(2000, np.random.default_rng(0), temperature=0.05)
    agree = np.mean([task.true_reward(c) >= task.true_reward(r) for c, r in pairs])
    assert agree > 0.85  # low temperature: labels mostly follow the truth (ties between neutral reviews are noise)
    with pytest.raises(ValueError):
        task.preference_probability(a, b, temperature=0)


def test_arithmetic_is_verifiable():
    task = ArithmeticTask(max_operand=9)
    problems = task.problems(500, np.random.default_rng(0))
    assert problems == task.problems(500, np.random.default_rng(0))
    for prompt, answer in problems:
        assert eval(prompt[:-1]) == answer  # noqa: S307 -- a digit-op-digit string made above
        assert task.reward(ArithmeticTask.solution(prompt, answer)[len(prompt):], answer) == 1.0
    assert task.reward("12;", 12) == 1.0 and task.reward(" -3 ;", -3) == 1.0
    assert task.reward("12", 12) == 0.0 and task.reward("13;", 12) == 0.0 and task.reward("x12;", 12) == 0.0
    assert task.rewards(["1;", "2;"], [1, 3]) == [1.0, 0.0]
    with pytest.raises(ValueError):
        task.rewards(["1;"], [1, 2])
    with pytest.raises(ValueError):
        ArithmeticTask(operations="*")


def test_the_default_proxy_optimum_is_the_hack_at_any_fixed_length():
    task = ReviewTask(seed=0)
    best_word = max(task.weights, key=lambda w: task.weights[w] if w != HACK else -9)
    for n in (1, 5, 10):
        assert task.proxy_reward(" ".join([HACK] * n)) > task.proxy_reward(" ".join([best_word] * n))
        assert task.true_reward(" ".join([HACK] * n)) < task.true_reward(" ".join([best_word] * n))
