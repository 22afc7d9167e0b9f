"""Lesson 4.4's mini serving engine: a paged KV cache, an iteration-level scheduler and one batched decode per step.

Lesson 4.4 builds these pieces visibly (cells starting `# teaching-copy: engine`); this module is the same engine for
later lessons (9.1 serves a request stream with it, the serving package wraps it as a backend), with three additions
that leave 4.4's behaviour unchanged: the model is an argument (`ModelAdapter`: GPT-2 or a Llama-family model from
Hugging Face, grouped-query attention included), requests may stop early (`Request.stopped`: an end token, a
cancelled client) and pick their own next token (`Request.pick`: sampling), and the engine keeps a virtual clock
(`pass_seconds`) so that a stream of requests arriving over time can be served in repeatable time (`run_stream`).

- `BlockPool`, `BlockManager`: fixed-size KV blocks, a free list, reference counts, per-sequence block tables,
  copy-on-write (vLLM's PagedAttention, Kwon et al. 2023, arXiv:2309.06180).
- `paged_attention`: attention whose keys and values are gathered through block tables.
- `PagedKV`: the cache tensors of every layer plus the model's forward pass through them.
- `Scheduler` (continuous batching, Orca), `StaticScheduler` (request-level batching, as `generate` on a fixed
  batch), `DynamicScheduler` (request-level, waiting up to `max_wait` to fill a batch).
- `MiniEngine`: scheduler + paged cache; `step()` runs one batched decode, retires, admits and prefills newcomers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v; `allowed` broadcasts to (B, H, T_q, T_k)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


class ModelAdapter:
    """A Hugging Face causal LM's forward pass with attention supplied by the caller: GPT-2 or Llama-family."""

    def __init__(self, model: Any):
        config = model.config
        self.model, self.kind = model.eval(), config.model_type
        if self.kind == "gpt2":
            self.n_layer, self.n_head = config.n_layer, config.n_head
            self.n_kv_head, self.head_dim = config.n_head, config.n_embd // config.n_head
            self.context_length = config.n_positions
        elif self.kind == "llama":
            self.n_layer, self.n_head = config.num_hidden_layers, config.num_attention_heads
            self.n_kv_head = config.num_key_value_heads
            self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            self.context_length = config.max_position_embeddings
        else:
            raise ValueError(f"ModelAdapter knows GPT-2 and Llama models, not model_type {self.kind!r}")
        weight = next(model.parameters())
        self.dtype, self.device = weight.dtype, weight.device
        self.vocab_size = config.vocab_size

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attend: Attend) -> torch.Tensor:
        """Logits (B, T, vocab) for new tokens at the given positions; `attend(layer, q, k, v)` does attention."""
        return (self._gpt2 if self.kind == "gpt2" else self._llama)(input_ids, position_ids, attend)

    def _gpt2(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attend: Attend) -> torch.Tensor:
        tf, n_embd = self.model.transformer, self.n_head * self.head_dim
        batch, steps = input_ids.shape
        x = tf.wte(input_ids) + tf.wpe(position_ids)
        for layer, block in enumerate(tf.h):
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(n_embd, dim=2)
            q, k, v = (t.view(batch, steps, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
            y = attend(layer, q, k, v)
            x = x + block.attn.c_proj(y.transpose(1, 2).reshape(batch, steps, n_embd))
            x = x + block.mlp(block.ln_2(x))
        return self.model.lm_head(tf.ln_f(x))

    def _llama(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attend: Attend) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        inner = self.model.model
        batch, steps = input_ids.shape
        x = inner.embed_tokens(input_ids)
        cos, sin = inner.rotary_emb(x, position_ids)
        for layer, block in enumerate(inner.layers):
            h, attn = block.input_layernorm(x), block.self_attn
            q, k, v = (proj(h).view(batch, steps, -1, self.head_dim).transpose(1, 2)
                       for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            y = attend(layer, q, k, v)
            x = x + attn.o_proj(y.transpose(1, 2).reshape(batch, steps, -1))
            x = x + block.mlp(block.post_attention_layernorm(x))
        return self.model.lm_head(inner.norm(x))


@dataclass
class Request:
    """A prompt (token ids) and a budget of new tokens; the engine appends to `output` and stamps its clock."""

    rid: Hashable
    prompt: list[int]
    max_new: int
    output: list[int] = field(default_factory=list)
    arrival: float = 0.0  # when it reaches the engine (run_stream), in the engine's clock
    first_token_at: float | None = None
    finished_at: float | None = None  # when its last token was made (a static batch may keep computing its row)
    stopped: bool = False  # set to finish early: an end-of-sequence token, a cancelled client
    pick: Callable[[torch.Tensor], int] | None = None  # next token from a logits row; None: greedy (argmax)

    @property
    def done(self) -> bool:
        """Whether it needs no more tokens."""
        return self.stopped or len(self.output) >= self.max_new


class Scheduler:
    """Iteration-level scheduling (Orca): finished requests leave and waiting ones join after every step."""

    def __init__(self, max_batch: int, can_admit: Callable[[Request], bool] = lambda request: True):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch, self.can_admit = max_batch, can_admit
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stream_open = False  # run_stream sets it while more requests are still to arrive

    def add(self, request: Request) -> None:
        """Queue a request."""
        self.waiting.append(request)

    def admit(self, now: float = 0.0) -> list[Request]:
        """Move waiting requests into the batch while there is room; return the newcomers."""
        joined = []
        while self.waiting and len(self.running) < self.max_batch and self.can_admit(self.waiting[0]):
            joined.append(self.waiting.popleft())
            self.running.append(joined[-1])
        return joined

    def retire(self) -> list[Request]:
        """Remove and return the requests that are done."""
        finished = [r for r in self.running if r.done]
        self.running = [r for r in self.running if not r.done]
        return finished

    def wake_time(self) -> float:
        """When admission may change with no new arrival (a waiting deadline); inf if never."""
        return math.inf


class StaticScheduler(Scheduler):
    """Request-level batching: admit a batch only when the last one is done; finished rows keep computing (their
    tokens are discarded) until the batch's longest request finishes, as `generate` on a fixed batch does."""

    def admit(self, now: float = 0.0) -> list[Request]:
        """A new batch, only when the previous one has left."""
        return [] if self.running else super().admit(now)

    def retire(self) -> list[Request]:
        """The whole batch, once every request in it is done."""
        return super().retire() if all(r.done for r in self.running) else []


class DynamicScheduler(StaticScheduler):
    """Request-level batching that waits to fill a batch: it starts one when `max_batch` requests wait, when the
    oldest has waited `max_wait` seconds, or when no more requests are coming (max_wait=inf: wait for a full batch)."""

    def __init__(self, max_batch: int, can_admit: Callable[[Request], bool] = lambda request: True,
                 max_wait: float = math.inf):
        super().__init__(max_batch, can_admit)
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait}")
        self.max_wait = max_wait

    def admit(self, now: float = 0.0) -> list[Request]:
        """A new batch when it is full, overdue, or the last one the stream will give."""
        if self.running or not self.waiting:
            return []
        full = len(self.waiting) >= self.max_batch
        if full or not self.stream_open or now >= self.waiting[0].arrival + self.max_wait:
            return super().admit(now)
        return []

    def wake_time(self) -> float:
        """The oldest waiting request's deadline, while no batch runs."""
        return self.waiting[0].arrival + self.max_wait if self.waiting and not self.running else math.inf


class BlockPool:
    """Fixed-size KV blocks: a free list and a reference count per block."""

    def __init__(self, num_blocks: int, block_size: int, shuffle_seed: int | None = None):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.block_size, self.num_blocks = block_size, num_blocks
        self.free = list(range(num_blocks))[::-1]
        if shuffle_seed is not None:  # scatter the blocks, to show order in memory does not matter
            np.random.default_rng(shuffle_seed).shuffle(self.free)
        self.ref = [0] * num_blocks

    def _allocate(self) -> int:
        if not self.free:
            raise MemoryError("out of KV blocks (a real engine would preempt a sequence here)")
        block = self.free.pop()
        self.ref[block] = 1
        return block

    def _release(self, block: int) -> None:
        self.ref[block] -= 1
        if self.ref[block] == 0:
            self.free.append(block)

    def used_blocks(self) -> int:
        """Blocks held by at least one sequence."""
        return self.num_blocks - len(self.free)


class BlockManager(BlockPool):
    """Per-sequence block tables: blocks allocated on demand, copy-on-write before writing into a shared block."""

    def __init__(self, num_blocks: int, block_size: int, shuffle_seed: int | None = None):
        super().__init__(num_blocks, block_size, shuffle_seed)
        self.tables: dict[Hashable, list[int]] = {}
        self.lengths: dict[Hashable, int] = {}

    def append_slots(self, seq: Hashable, n: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Room for n more tokens: the slots to write, and the (src, dst) block copies copy-on-write needs."""
        table, length = self.tables.setdefault(seq, []), self.lengths.get(seq, 0)
        slots, copies = [], []
        for pos in range(length, length + n):
            index, offset = divmod(pos, self.block_size)
            if index == len(table):  # allocate on demand
                table.append(self._allocate())
            elif self.ref[table[index]] > 1:  # shared block about to be written: copy it first
                fresh = self._allocate()
                copies.append((table[index], fresh))
                self._release(table[index])
                table[index] = fresh
            slots.append(table[index] * self.block_size + offset)
        self.lengths[seq] = length + n
        return slots, copies

    def fork(self, parent: Hashable, child: Hashable) -> None:
        """The child's block table is a copy of the parent's: every block gains one reference, none is copied."""
        if child in self.tables:
            raise ValueError(f"sequence {child!r} already has blocks")
        self.tables[child], self.lengths[child] = list(self.tables[parent]), self.lengths[parent]
        for block in self.tables[child]:
            self.ref[block] += 1

    def free_seq(self, seq: Hashable) -> None:
        """Return a sequence's blocks (a shared block stays until its last user frees it)."""
        for block in self.tables.pop(seq):
            self._release(block)
        del self.lengths[seq]


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: Sequence[list[int]],
                    lengths: Sequence[int], query_pos: torch.Tensor, block_size: int) -> torch.Tensor:
    """Attention whose keys and values are gathered through block tables from a flat (slots, H_kv, D) cache.

    q is (B, H, T, D) with H a multiple of H_kv (grouped-query attention shares each KV head across H / H_kv query
    heads); query_pos (B, T) are the queries' positions; lengths the keys each sequence holds.
    """
    n_keys = max(lengths)
    width = -(-n_keys // block_size)
    table = torch.tensor([t[:width] + [0] * (width - len(t[:width])) for t in tables], device=q.device)
    key_pos = torch.arange(n_keys, device=q.device)
    slot = table[:, key_pos // block_size] * block_size + key_pos % block_size  # (B, n_keys)
    keys, values = k_cache[slot].transpose(1, 2), v_cache[slot].transpose(1, 2)  # (B, H_kv, n_keys, D)
    if keys.shape[1] != q.shape[1]:
        group = q.shape[1] // keys.shape[1]
        keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
    lengths_t = torch.tensor(list(lengths), device=q.device)
    allowed = (key_pos[None, None, :] <= query_pos[:, :, None]) & (key_pos[None, None, :] < lengths_t[:, None, None])
    return masked_attention(q, keys, values, allowed[:, None])


class PagedKV:
    """A paged KV cache (one flat (slots, kv heads, head_dim) tensor per layer) and the model's forward through it."""

    def __init__(self, model: ModelAdapter, num_blocks: int, block_size: int):
        self.model = model
        self.manager = BlockManager(num_blocks, block_size)
        shape = (model.n_layer, num_blocks * block_size, model.n_kv_head, model.head_dim)
        self.k = torch.zeros(shape, dtype=model.dtype, device=model.device)
        self.v = torch.zeros(shape, dtype=model.dtype, device=model.device)

    def reserve(self, seq_ids: Sequence[Hashable], n_new: int) -> torch.Tensor:
        """Cache slots for n_new more tokens of each sequence, after the copy-on-write copies (in every layer)."""
        bs, slots = self.manager.block_size, []
        for seq in seq_ids:
            new_slots, copies = self.manager.append_slots(seq, n_new)
            for src, dst in copies:
                self.k[:, dst * bs:(dst + 1) * bs] = self.k[:, src * bs:(src + 1) * bs]
                self.v[:, dst * bs:(dst + 1) * bs] = self.v[:, src * bs:(src + 1) * bs]
            slots.append(new_slots)
        return torch.tensor(slots, device=self.model.device)

    @torch.no_grad()
    def forward(self, seq_ids: Sequence[Hashable], chunks: Sequence[list[int]]) -> torch.Tensor:
        """Run equal-length chunks of new tokens for several sequences; return each one's last-position logits."""
        device = self.model.device
        starts = [self.manager.lengths.get(s, 0) for s in seq_ids]
        slots = self.reserve(seq_ids, len(chunks[0]))
        positions = torch.tensor(starts, device=device)[:, None] + torch.arange(len(chunks[0]), device=device)
        tables = [self.manager.tables[s] for s in seq_ids]
        lengths = [self.manager.lengths[s] for s in seq_ids]

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.k[layer][slots], self.v[layer][slots] = k.transpose(1, 2), v.transpose(1, 2)
            return paged_attention(q, self.k[layer], self.v[layer], tables, lengths, positions,
                                   self.manager.block_size)

        return self.model.forward(torch.tensor(chunks, device=device), positions, attend)[:, -1]


class MiniEngine:
    """Scheduler + paged KV cache + one batched decode step per iteration; the scheduling policy is a plug-in.

    `pass_seconds(rows, tokens)`, if given, is the modelled cost of a forward pass over `rows` sequences with `tokens`
    new tokens each: the engine's `clock` advances by it after every pass, and requests are stamped with it.
    `passes` lists every forward pass as (rows, tokens); `batch_sizes` the rows of each decode step.
    """

    def __init__(self, model: Any, num_blocks: int, block_size: int, max_batch: int,
                 policy: Callable[..., Scheduler] = Scheduler,
                 pass_seconds: Callable[[int, int], float] | None = None):
        self.model = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        self.kv = PagedKV(self.model, num_blocks, block_size)
        self.scheduler = policy(max_batch, lambda r: len(self.kv.manager.free) >= self.blocks_for(len(r.prompt)) + 1)
        self.finished: dict[Hashable, list[int]] = {}
        self.batch_sizes: list[int] = []
        self.passes: list[tuple[int, int]] = []
        self.clock, self.pass_seconds = 0.0, pass_seconds

    def blocks_for(self, tokens: int) -> int:
        """KV blocks that hold `tokens` tokens."""
        return -(-tokens // self.kv.manager.block_size)

    @property
    def busy(self) -> bool:
        """Whether any request waits or runs."""
        return bool(self.scheduler.waiting or self.scheduler.running)

    def add(self, request: Request) -> None:
        """Queue a request, after checking that it can ever be served."""
        if not request.prompt or request.max_new < 1:
            raise ValueError(f"request {request.rid!r}: needs a non-empty prompt and max_new >= 1")
        total = len(request.prompt) + request.max_new
        if total > self.model.context_length:
            raise ValueError(f"request {request.rid!r}: {total} tokens exceed the context of "
                             f"{self.model.context_length}")
        if self.blocks_for(total) > self.kv.manager.num_blocks:
            raise ValueError(f"request {request.rid!r}: {total} tokens need more KV blocks than the engine has")
        self.scheduler.add(request)

    def _forward(self, seq_ids: list[Hashable], chunks: list[list[int]]) -> torch.Tensor:
        logits = self.kv.forward(seq_ids, chunks)
        self.passes.append((len(chunks), len(chunks[0])))
        if self.pass_seconds is not None:
            self.clock += self.pass_seconds(len(chunks), len(chunks[0]))
        return logits

    def _append(self, request: Request, logits: torch.Tensor) -> None:
        request.output.append(int(logits.argmax()) if request.pick is None else request.pick(logits))
        if request.finished_at is None and request.done:
            request.finished_at = self.clock

    def _retire(self) -> None:
        for r in self.scheduler.retire():
            self.kv.manager.free_seq(r.rid)
            self.finished[r.rid] = r.output[:r.max_new]  # a static batch decodes past a budget: drop the surplus

    def step(self) -> None:
        """One iteration: a batched decode step for the running requests, retire, admit and prefill newcomers."""
        self._retire()  # requests stopped from outside since the last step (a no-op otherwise)
        running = self.scheduler.running
        if running:  # one batched decode step: one token per running sequence
            logits = self._forward([r.rid for r in running], [[r.output[-1]] for r in running])
            for r, row in zip(running, logits):
                self._append(r, row)
            self.batch_sizes.append(len(running))
        self._retire()
        for r in self.scheduler.admit(self.clock):  # newcomers: prefill, which gives their first token
            self._append(r, self._forward([r.rid], [r.prompt])[0])
            r.first_token_at = self.clock
        self._retire()

    def run(self, requests: Iterable[Request] = ()) -> dict[Hashable, list[int]]:
        """Add the requests, step until none waits or runs; every finished request's output by id."""
        for r in requests:
            self.add(r)
        while self.busy:
            self.step()
        return self.finished


def run_stream(engine: MiniEngine, requests: Iterable[Request]) -> None:
    """Serve requests arriving over time (`Request.arrival`, in the engine's clock, which `pass_seconds` advances).

    Each iteration first hands the engine every request that has arrived by its clock; when an iteration runs no
    forward pass, the clock jumps to the next arrival or to the scheduler's `wake_time`, whichever is first.
    """
    if engine.pass_seconds is None:
        raise ValueError("run_stream needs an engine with pass_seconds (the cost of a forward pass)")
    pending = deque(sorted(requests, key=lambda r: r.arrival))
    while pending or engine.busy:
        while pending and pending[0].arrival <= engine.clock:
            engine.add(pending.popleft())
        engine.scheduler.stream_open = bool(pending)
        passes = len(engine.passes)
        engine.step()
        if len(engine.passes) == passes:  # idle: jump to the next event
            wake = min(pending[0].arrival if pending else math.inf, engine.scheduler.wake_time())
            if not wake > engine.clock:
                raise RuntimeError(f"the engine is stuck at t={engine.clock}: requests wait but none is admitted")
            engine.clock = wake
