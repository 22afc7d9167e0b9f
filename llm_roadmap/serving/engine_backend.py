"""Lesson 4.4's engine behind the service: concurrent requests share batched decode steps (continuous batching).

`EngineBackend` satisfies the `Backend` protocol of `backends.py`. Each `stream` call adds a `Request` to one
`llm_roadmap.engine.MiniEngine` and yields its tokens as a single engine thread steps all running requests together;
the tokenizer, chat template and end-of-sequence ids come from a `TransformersBackend` over the same model. Greedy at
temperature 0, else top-p sampling from the request's own seeded generator (the same seed gives the same text,
whatever else is in the batch). `step_observer` sees the rows of every forward pass (the app's batch-size metric).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from llm_roadmap.engine import MiniEngine, Request, Scheduler

from .backends import SamplingParams, TransformersBackend, _generator, sample_next

_DONE = object()  # the end of a request's token queue


class EngineBackend:
    """A local GPT-2 or Llama-family model served by the mini engine: one thread, one batched step for everyone."""

    def __init__(self, model_or_path: Any, tokenizer: Any = None, name: str | None = None, max_batch: int = 8,
                 block_size: int = 16, num_blocks: int | None = None, device: str = "cpu",
                 dtype: torch.dtype | None = None, policy: Callable[..., Scheduler] = Scheduler):
        self.text = TransformersBackend(model_or_path, tokenizer, name=name, device=device, dtype=dtype)
        self.name, self.context_length, self.vocab_size = self.text.name, self.text.context_length, self.text.vocab_size
        if num_blocks is None:  # every running request can reach the full context: no sequence ever runs out
            num_blocks = max_batch * -(-self.context_length // block_size)
        self.engine = MiniEngine(self.text.model, num_blocks, block_size, max_batch, policy=policy)
        self.step_observer: Callable[[int], None] | None = None
        self._cond = threading.Condition()
        self._queues: dict[int, queue.SimpleQueue] = {}
        self._next_id, self._closed, self._error = 0, False, None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_folder(cls, folder: str | Path, **options: Any) -> EngineBackend:
        """An engine over a `save_pretrained` folder (model + tokenizer, safetensors)."""
        return cls(folder, **options)

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens added)."""
        return self.text.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens skipped."""
        return self.text.decode(ids)

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The tokenizer's chat template applied to the messages, ending with the assistant's turn."""
        return self.text.chat_prompt_ids(messages)

    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        """Add a request to the engine and yield its tokens as the engine thread makes them."""
        max_new = min(params.max_tokens, self.context_length - len(prompt_ids))
        if max_new < 1 or not prompt_ids:
            return
        tokens: queue.SimpleQueue = queue.SimpleQueue()
        generator = _generator(params.seed)
        eos = frozenset() if params.ignore_eos else self.text.eos_token_ids

        def pick(logits: torch.Tensor) -> int:  # runs in the engine thread, for this request's row only
            token = sample_next(logits, params, generator)
            if token in eos:
                request.stopped = True  # not emitted: the engine retires the request after this step
            else:
                tokens.put(token)
            return token

        with self._cond:
            if self._error is not None:
                raise RuntimeError("the engine thread failed earlier") from self._error
            if self._closed:
                raise RuntimeError("the engine backend is closed")
            rid, self._next_id = self._next_id, self._next_id + 1
            request = Request(rid, list(prompt_ids), max_new, pick=pick)
            self.engine.add(request)
            self._queues[rid] = tokens
            self._start()
            self._cond.notify_all()
        try:
            while True:
                try:
                    item = tokens.get(timeout=0.05)
                except queue.Empty:
                    if cancel.is_set():
                        return
                    continue
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise RuntimeError("the engine thread failed") from item
                if cancel.is_set():
                    return
                yield item
        finally:  # a cancelled or abandoned stream frees its batch slot and KV blocks at the next step
            with self._cond:
                request.stopped = True
                if request in self.engine.scheduler.waiting:
                    self.engine.scheduler.waiting.remove(request)
                self._queues.pop(rid, None)

    def close(self) -> None:
        """Stop the engine thread (requests still running get no more tokens)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self.engine.busy and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                self.engine.passes.clear()  # a server runs for days: keep only this step's record
                self.engine.batch_sizes.clear()
                try:
                    self.engine.step()
                except BaseException as error:  # hand it to every waiting stream, and refuse new ones
                    self._error = error
                    for tokens in self._queues.values():
                        tokens.put(error)
                    raise
                for rows, _ in self.engine.passes:
                    if self.step_observer is not None:
                        self.step_observer(rows)
                for rid in [rid for rid in self.engine.finished if rid in self._queues]:
                    del self.engine.finished[rid]
                    self._queues[rid].put(_DONE)
                for rid in [rid for rid in self.engine.finished if rid not in self._queues]:
                    del self.engine.finished[rid]  # abandoned streams: nobody reads these
