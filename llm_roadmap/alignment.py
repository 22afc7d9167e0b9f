"""Phase 6's preference-optimisation components, for the lessons after it (the phase 10 alignment capstone).

Lesson 6.2 builds these in visible code (cells starting `# teaching-copy: dpo`) and checks its DPO and IPO losses
against TRL's `DPOTrainer` on the same batch; `tests/test_alignment_losses.py` proves that copy and this one equal.

- `batch_tensors`, `token_logps`, `sequence_logps`: per-token and per-sequence log pi(y | x) of completions.
- `sample`: completions from a causal LM (transformers' `generate`), cut at the first end token.
- `sft`: supervised fine-tuning on completion tokens (lesson 3.3).
- `dpo_loss` (Rafailov et al. 2023, arXiv:2305.18290), `ipo_loss` (Azar et al. 2023, arXiv:2310.12036) and
  `pair_loss`/`preference_train`, a minibatch trainer for either, or for any loss of the same per-pair quantities
  (`reference_logps`: the frozen reference's log-probs of the pairs, computable once and shared by several runs).

A prompt and a completion are lists of token ids; a pair is (prompt, chosen, rejected). Every function works on the
device of the model it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

PairLoss = Callable[..., torch.Tensor]  # (pi_w, pi_l, ref_w, ref_l, beta, len_w, len_l) -> scalar loss


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def batch_tensors(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                  device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt+completion ids, attention mask, and the mask of completion tokens."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    width = max(lengths)  # padding value: any valid id (0), masked out; one tensor built from Python lists
    ids = torch.tensor([list(p) + list(c) + [0] * (width - n) for p, c, n in zip(prompts, completions, lengths)],
                       dtype=torch.long)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths], dtype=torch.long)
    comp = torch.tensor([[0] * len(p) + [1] * len(c) + [0] * (width - n) for p, c, n in zip(prompts, completions,
                                                                                          lengths)], dtype=torch.long)
    return ids.to(device), mask.to(device), comp.to(device)


def token_logps(model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                completions: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_t | x, y_<t) for every completion token (B, T-1), and the mask saying which positions count."""
    ids, mask, comp = batch_tensors(prompts, completions, _device(model))
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    logps = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2)
    return logps * comp[:, 1:], comp[:, 1:]


def sequence_logps(model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                   completions: Sequence[Sequence[int]]) -> torch.Tensor:
    """log pi(y | x): the sum over the completion's tokens."""
    return token_logps(model, prompts, completions)[0].sum(1)


@torch.no_grad()
def sample(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new: int, eos: int, greedy: bool = False,
           pad: int = 0) -> list[list[int]]:
    """Completions (id lists ending at the first eos, included) of left-padded prompts, by transformers' generate."""
    device = _device(model)
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    how = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, eos_token_id=eos,
                         pad_token_id=pad, **how)
    rows = out[:, width:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


def sft(model: torch.nn.Module, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], steps: int,
        lr: float, batch: int, seed: int) -> torch.nn.Module:
    """Supervised fine-tuning: next-token loss on the completion tokens only (lesson 3.3); returns the model in eval."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, foreach=True)  # one kernel per op for all tensors
    pick = np.random.default_rng(seed)
    for _ in range(steps):
        idx = pick.integers(len(prompts), size=batch)
        logps, mask = token_logps(model, [prompts[i] for i in idx], [completions[i] for i in idx])
        loss = -logps.sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def dpo_loss(pi_w: torch.Tensor, pi_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Rafailov et al. eq. 7: -log sigmoid(beta [log pi/ref (y_w) - log pi/ref (y_l)]), mean over pairs."""
    return -F.logsigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l))).mean()


def ipo_loss(pi_w: torch.Tensor, pi_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, tau: float,
             len_w: torch.Tensor, len_l: torch.Tensor) -> torch.Tensor:
    """IPO (Azar et al. eq. 17), per-token log-ratios as TRL and the authors use: (h - 1/(2 tau))^2."""
    h = (pi_w - ref_w) / len_w - (pi_l - ref_l) / len_l
    return ((h - 1 / (2 * tau)) ** 2).mean()


def pair_loss(kind: str | PairLoss, policy: torch.nn.Module, batch: Sequence[tuple], ref_w: torch.Tensor,
              ref_l: torch.Tensor, beta: float) -> torch.Tensor:
    """The loss of a minibatch of (prompt, chosen, rejected): kind "dpo", "ipo", or a function of the per-pair
    quantities (pi_w, pi_l, ref_w, ref_l, beta, len_w, len_l), the lengths counted in completion tokens."""
    prompts, chosen, rejected = zip(*batch)
    logps = sequence_logps(policy, list(prompts) * 2, list(chosen) + list(rejected))
    pi_w, pi_l = logps.chunk(2)
    lengths = torch.tensor([len(c) for c in chosen + rejected], device=logps.device, dtype=torch.float)
    if callable(kind):
        return kind(pi_w, pi_l, ref_w, ref_l, beta, *lengths.chunk(2))
    if kind == "ipo":
        return ipo_loss(pi_w, pi_l, ref_w, ref_l, beta, *lengths.chunk(2))
    if kind == "dpo":
        return dpo_loss(pi_w, pi_l, ref_w, ref_l, beta)
    raise ValueError(f"kind must be 'dpo', 'ipo' or a loss function, got {kind!r}")


@torch.no_grad()
def reference_logps(ref: torch.nn.Module, pairs: Sequence[tuple], ref_chunk: int = 128) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """log ref(y_w | x) and log ref(y_l | x) of every pair, `ref_chunk` pairs per forward pass (so that a hub model's
    vocabulary-wide logits fit in memory)."""
    return tuple(torch.cat(side) for side in zip(*(
        sequence_logps(ref, [p for p, _, _ in part] * 2, [c for _, c, _ in part] + [r for _, _, r in part]).chunk(2)
        for part in (pairs[i:i + ref_chunk] for i in range(0, len(pairs), ref_chunk)))))


def preference_train(kind: str | PairLoss, policy: torch.nn.Module, ref: torch.nn.Module,
                     pairs: Sequence[tuple], steps: int, lr: float, batch: int, beta: float,
                     seed: int, ref_chunk: int = 128,
                     ref_logps: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.nn.Module, list[float]]:
    """DPO (or IPO, or another pair loss) from scratch: reference log-probs once (`reference_logps`, or `ref_logps`
    when given: the pairs' (chosen, rejected) log-probs under `ref`, e.g. shared by runs on the same pairs), then
    minibatch steps on the policy. Returns the policy (in eval mode) and the loss of every step."""
    if ref_logps is None:
        ref_logps = reference_logps(ref, pairs, ref_chunk)
    ref_w_all, ref_l_all = ref_logps
    if len(ref_w_all) != len(pairs) or len(ref_l_all) != len(pairs):
        raise ValueError(f"ref_logps has {len(ref_w_all)} chosen and {len(ref_l_all)} rejected log-probs for "
                         f"{len(pairs)} pairs; pass one of each per pair, in the pairs' order")
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, foreach=True)
    pick = np.random.default_rng(seed)
    history = []
    for _ in range(steps):
        idx = pick.integers(len(pairs), size=batch)
        loss = pair_loss(kind, policy, [pairs[i] for i in idx], ref_w_all[idx], ref_l_all[idx], beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    return policy.eval(), history
