"""A synthetic language whose entropy rate is known exactly: the floor that no language model's loss can beat.

A k-th order Markov source over V tokens: each context of the last k tokens has its own next-token distribution,
drawn once from a sparse Dirichlet. Its entropy rate H = sum_c pi(c) H(P(.|c)) (nats per token), with pi the
stationary distribution over contexts, is the expected cross-entropy of the *true* model: a trained language model's
validation loss can approach it but not go below it (up to sampling noise). Introduced in lesson 3.2.
"""

from __future__ import annotations

import numpy as np


class MarkovLanguage:
    """A k-th order Markov source over `vocab_size` tokens with an exactly computable entropy rate."""

    def __init__(self, vocab_size: int = 32, order: int = 2, concentration: float = 0.1, seed: int = 0):
        if vocab_size < 2 or order < 1 or concentration <= 0:
            raise ValueError("need vocab_size >= 2, order >= 1, concentration > 0")
        if vocab_size**order > 200_000:
            raise ValueError(f"{vocab_size}^{order} contexts is too many; lower vocab_size or order")
        self.vocab_size, self.order = vocab_size, order
        rng = np.random.default_rng(seed)
        # Small concentration -> peaked next-token distributions -> a low, learnable entropy rate.
        self.transition = rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size**order)
        self.transition = np.clip(self.transition, 1e-12, None)
        self.transition /= self.transition.sum(axis=1, keepdims=True)
        self.stationary = self._stationary()

    def _context_index(self, context) -> int:
        index = 0
        for token in context:
            index = index * self.vocab_size + int(token)
        return index

    def _stationary(self, iters: int = 2000, tol: float = 1e-13) -> np.ndarray:
        """Stationary distribution over contexts, by power iteration on the context chain."""
        n_ctx, V = self.transition.shape
        pi = np.full(n_ctx, 1.0 / n_ctx)
        # context c = (..., a) followed by token t moves to context (c * V + t) mod V^order
        nxt = (np.arange(n_ctx)[:, None] * V + np.arange(V)[None, :]) % n_ctx
        for _ in range(iters):
            new = np.bincount(nxt.ravel(), weights=(pi[:, None] * self.transition).ravel(), minlength=n_ctx)
            if np.abs(new - pi).sum() < tol:
                return new
            pi = new
        return pi

    def entropy_rate(self) -> float:
        """H = sum_c pi(c) * H(next | c), in nats per token: the best achievable mean cross-entropy."""
        per_context = -(self.transition * np.log(self.transition)).sum(axis=1)
        return float(self.stationary @ per_context)

    def unigram_distribution(self) -> np.ndarray:
        """Marginal token frequencies under the stationary distribution."""
        return self.stationary @ self.transition

    def unigram_entropy(self) -> float:
        """Entropy of the marginal token distribution: the loss floor of a model that ignores context."""
        p = self.unigram_distribution()
        return float(-(p * np.log(p)).sum())

    def sample(self, n_tokens: int, seed: int = 0) -> np.ndarray:
        """A token stream of length n_tokens (int64), started from the stationary distribution."""
        rng = np.random.default_rng(seed)
        V, k = self.vocab_size, self.order
        ctx = int(rng.choice(len(self.stationary), p=self.stationary))
        out = np.empty(n_tokens + k, dtype=np.int64)
        for i in range(k):  # unpack the starting context into its k tokens
            out[i] = (ctx // V ** (k - 1 - i)) % V
        cdf = np.cumsum(self.transition, axis=1)
        u = rng.random(n_tokens)
        for i in range(n_tokens):
            token = min(int(np.searchsorted(cdf[ctx], u[i], side="right")), V - 1)
            out[k + i] = token
            ctx = (ctx * V + token) % (V**k)
        return out[k:]

    def log_prob(self, tokens: np.ndarray) -> float:
        """Mean log-likelihood per token under the true model (for tokens after the first `order`)."""
        tokens = np.asarray(tokens)
        k, V = self.order, self.vocab_size
        ctx = self._context_index(tokens[:k])
        total = 0.0
        for token in tokens[k:]:
            total += np.log(self.transition[ctx, int(token)])
            ctx = (ctx * V + int(token)) % (V**k)
        return total / (len(tokens) - k)
