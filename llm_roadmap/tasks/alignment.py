"""Tasks where a program is the judge, for alignment (phase 6) and its capstone (phase 10).

- `ReviewTask`: short film "reviews" made of words with a hidden sentiment weight. The true reward (the mean weight
  of a review's words) is known exactly; `proxy_reward` is a learned-looking stand-in with deliberate flaws (it sums
  instead of averaging, so length pays, and it likes "!", which the true reward dislikes), so reward hacking can be
  produced and measured; `preference` samples noisy pairwise labels from the true reward with a Bradley-Terry model
  of known temperature, so a learned reward model can be compared with the truth.
- `ArithmeticTask`: "17+5=" problems with one checkable answer: the verifiable reward of GRPO-style training.

Texts are plain strings (words separated by spaces), so any tokenizer or the course's character-level GPT can model
them. Everything is seeded and deterministic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

POSITIVE = ("great", "good", "lovely", "superb", "fine", "fun", "moving", "clever", "warm", "bright")
NEGATIVE = ("awful", "bad", "dull", "boring", "weak", "flat", "messy", "cold", "slow", "poor")
NEUTRAL = ("the", "film", "plot", "cast", "story", "was", "and", "very", "but", "ending", "music", "acting", "scenes",
           "quite", "a", "really")
HACK = "!"


class ReviewTask:
    """A review language with a hidden per-word sentiment: true reward, flawed proxy, Bradley-Terry preferences."""

    def __init__(self, seed: int = 0, min_words: int = 3, max_words: int = 10, sentiment_rate: float = 0.35,
                 hack_rate: float = 0.02, hack_weight: float = -0.3, proxy_hack_bonus: float = 1.5):
        if not 1 <= min_words <= max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
        rng = np.random.default_rng(seed)
        self.weights: dict[str, float] = {}
        for word in POSITIVE:
            self.weights[word] = float(rng.uniform(0.4, 1.0))
        for word in NEGATIVE:
            self.weights[word] = float(-rng.uniform(0.4, 1.0))
        for word in NEUTRAL:
            self.weights[word] = float(rng.uniform(-0.05, 0.05))
        self.weights[HACK] = hack_weight
        self.vocabulary = tuple(self.weights)
        self.min_words, self.max_words = min_words, max_words
        self.sentiment_rate, self.hack_rate, self.proxy_hack_bonus = sentiment_rate, hack_rate, proxy_hack_bonus

    def words(self, text: str) -> list[str]:
        """The words of a text (split on whitespace; "!" attached to a word counts as its own word)."""
        return text.replace(HACK, f" {HACK} ").split()

    def true_reward(self, text: str) -> float:
        """The hidden truth: the mean sentiment weight of the words; an unknown word counts -1 (junk reads badly),
        an empty text scores -1."""
        words = self.words(text)
        if not words:
            return -1.0
        return float(np.mean([self.weights.get(w, -1.0) for w in words]))

    def proxy_reward(self, text: str) -> float:
        """A flawed stand-in for the truth: the SUM of the weights (so length pays) plus a bonus per "!" (which the
        truth dislikes). The default bonus (1.5) is above every word's weight (at most 1), so for a policy that writes
        a fixed number of words the proxy's optimum is all "!", the truth's worst: optimising it hard is how reward
        hacking is shown."""
        words = self.words(text)
        return float(sum(self.weights.get(w, -1.0) for w in words if w != HACK)
                     + self.proxy_hack_bonus * sum(w == HACK for w in words))

    def sample(self, n: int, rng: np.random.Generator) -> list[str]:
        """n reviews of the base distribution (what SFT imitates): mostly neutral words, some sentiment of either
        sign, a rare "!"."""
        positive, negative, neutral = list(POSITIVE), list(NEGATIVE), list(NEUTRAL)
        texts = []
        for _ in range(n):
            length = int(rng.integers(self.min_words, self.max_words + 1))
            words = []
            for _ in range(length):
                u = rng.random()
                if u < self.hack_rate:
                    words.append(HACK)
                elif u < self.hack_rate + self.sentiment_rate / 2:
                    words.append(positive[rng.integers(len(positive))])
                elif u < self.hack_rate + self.sentiment_rate:
                    words.append(negative[rng.integers(len(negative))])
                else:
                    words.append(neutral[rng.integers(len(neutral))])
            texts.append(" ".join(words))
        return texts

    def preference_probability(self, a: str, b: str, temperature: float) -> float:
        """Bradley-Terry: P(a preferred to b) = sigmoid((r*(a) - r*(b)) / temperature)."""
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        return 1.0 / (1.0 + math.exp(-(self.true_reward(a) - self.true_reward(b)) / temperature))

    def preference(self, a: str, b: str, rng: np.random.Generator, temperature: float = 0.1) -> bool:
        """One noisy label: True when the labeller prefers a to b (drawn from the Bradley-Terry probability)."""
        return bool(rng.random() < self.preference_probability(a, b, temperature))

    def preference_pairs(self, n: int, rng: np.random.Generator, temperature: float = 0.1) -> list[tuple[str, str]]:
        """n (chosen, rejected) pairs: two base reviews, ordered by one noisy Bradley-Terry label."""
        pairs = []
        for _ in range(n):
            a, b = self.sample(2, rng)
            pairs.append((a, b) if self.preference(a, b, rng, temperature) else (b, a))
        return pairs


ANSWER_END = ";"


class ArithmeticTask:
    """Addition and subtraction problems "a+b=" with one integer answer, written "a+b=c;" in training text."""

    def __init__(self, max_operand: int = 20, operations: str = "+-"):
        if max_operand < 1 or not operations or set(operations) - set("+-"):
            raise ValueError("need max_operand >= 1 and operations made of '+' and '-'")
        self.max_operand, self.operations = max_operand, operations

    def problems(self, n: int, rng: np.random.Generator) -> list[tuple[str, int]]:
        """n (prompt, answer) pairs such as ("17+5=", 22)."""
        out = []
        for _ in range(n):
            a, b = (int(x) for x in rng.integers(0, self.max_operand + 1, size=2))
            op = self.operations[rng.integers(len(self.operations))]
            out.append((f"{a}{op}{b}=", a + b if op == "+" else a - b))
        return out

    @staticmethod
    def solution(prompt: str, answer: int) -> str:
        """The training text of a solved problem: prompt, answer, end marker."""
        return f"{prompt}{answer}{ANSWER_END}"

    @staticmethod
    def parse(completion: str) -> int | None:
        """The integer a completion states before the end marker, or None when it states none."""
        match = re.match(r"\s*(-?\d+)\s*" + re.escape(ANSWER_END), completion)
        return int(match.group(1)) if match else None

    def reward(self, completion: str, answer: int) -> float:
        """The verifiable reward: 1.0 for the right integer followed by the end marker, else 0.0."""
        return float(self.parse(completion) == answer)

    def rewards(self, completions: Sequence[str], answers: Sequence[int]) -> list[float]:
        if len(completions) != len(answers):
            raise ValueError(f"{len(completions)} completions for {len(answers)} answers")
        return [self.reward(c, a) for c, a in zip(completions, answers)]
