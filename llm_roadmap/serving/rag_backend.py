"""Phase 5's RAG pipeline behind phase 9's API: `RAGBackend` satisfies the `Backend` protocol of `backends.py`, so
`create_app(RAGBackend(pipeline))` answers `/v1/chat/completions` from retrieved, numbered sources with `[n]`
citations in the answer text.

Conversation memory (a documented choice): the retrieval query is the last `memory_turns` user messages joined
oldest first (`conversation_query`), so a follow-up such as "And its river?" still carries the entity its earlier
turn named. The reader sees the last user message as the question. Its cost: an earlier turn on another topic also
steers retrieval (set `memory_turns=1` for no memory).

Two ways to answer:
- `generator=None`: the pipeline's own reader (e.g. `ExtractiveReader`) answers while the app builds the prompt
  (`chat_prompt_ids`, in a worker thread); `stream` then replays the answer. Tokens are UTF-8 bytes (vocab 256):
  raise `ServerSettings.max_tokens_cap` above the longest answer (sentences run to a few hundred bytes).
  `/v1/completions` treats its prompt as a one-turn question. Sampling parameters do not apply (the reader is
  deterministic); `max_tokens` and cancellation do.
- `generator=<a Backend>` (e.g. `TransformersBackend` of an instruct model): the earlier turns, then the last user
  message replaced by `build_prompt(question, sources)`, go through the generator's chat template, and the generator
  streams the answer (its sampling, stop strings and limits apply). When the pipeline's refusal gate fires, the
  answer is `REFUSAL`, replayed without generating.

Each chat turn is logged in `turns` (the last `max_log`): query, question, chunk ids, sources, and seconds per stage
(rewrite, dense, bm25, fusion, rerank, filter, read).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from llm_roadmap.rag_pipeline import REFUSAL, RAGPipeline, build_prompt

from .backends import Backend, SamplingParams


def conversation_query(messages: Sequence[dict[str, str]], memory_turns: int = 2) -> str:
    """The retrieval query of a conversation: its last `memory_turns` user messages, oldest first, joined by spaces."""
    if memory_turns < 1:
        raise ValueError(f"memory_turns must be at least 1, got {memory_turns}")
    users = [m["content"].strip() for m in messages if m["role"] == "user"]
    return " ".join(users[-memory_turns:])


@dataclass
class RAGTurn:
    """One chat turn as the backend served it."""

    query: str
    question: str
    chunk_ids: list[int]
    sources: list[str]
    answer: str | None  # None when the generator writes it while streaming
    timings: dict[str, float]


class RAGBackend:
    """A `Backend` that answers chats with a `RAGPipeline` (see the module's docstring for the two modes)."""

    def __init__(self, pipeline: RAGPipeline, generator: Backend | None = None, name: str = "rag-assistant",
                 memory_turns: int = 2, max_log: int = 256, context_length: int = 1 << 20):
        if memory_turns < 1:
            raise ValueError(f"memory_turns must be at least 1, got {memory_turns}")
        self.pipeline, self.generator, self.name, self.memory_turns = pipeline, generator, name, memory_turns
        self.context_length = generator.context_length if generator is not None else context_length
        self.vocab_size = generator.vocab_size if generator is not None else 256
        self.device = getattr(generator, "device", None)
        self.dtype = getattr(generator, "dtype", None)
        self.turns: deque[RAGTurn] = deque(maxlen=max_log)
        self._fixed: OrderedDict[tuple[int, ...], list[int]] = OrderedDict()  # prompt ids -> the answer's ids
        self._max_fixed = max_log
        self._lock = threading.Lock()
        self._observer: Callable[[int], None] | None = None

    @property
    def step_observer(self) -> Callable[[int], None] | None:
        """The app's batch-size observer (handed to the generator, which runs the forward passes)."""
        return self._observer

    @step_observer.setter
    def step_observer(self, observer: Callable[[int], None] | None) -> None:
        self._observer = observer
        if self.generator is not None:
            self.generator.step_observer = observer

    def encode(self, text: str) -> list[int]:
        """The generator's token ids, or UTF-8 bytes without a generator."""
        return self.generator.encode(text) if self.generator is not None else list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """The generator's text, or UTF-8 text of the bytes without a generator."""
        if self.generator is not None:
            return self.generator.decode(ids)
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def _remember(self, prompt_ids: list[int], answer: str) -> None:
        with self._lock:
            self._fixed[tuple(prompt_ids)] = self.encode(answer)
            self._fixed.move_to_end(tuple(prompt_ids))
            while len(self._fixed) > self._max_fixed:
                self._fixed.popitem(last=False)

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Retrieve for the conversation and return the prompt ids (answering right away without a generator)."""
        if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
            raise ValueError("the last message must be a non-empty user message (the question)")
        t0 = time.perf_counter()
        question, query = messages[-1]["content"].strip(), conversation_query(messages, self.memory_turns)
        rewrite_s = time.perf_counter() - t0
        if self.generator is None:
            result = self.pipeline.answer(question, query=query)
            prompt_ids = self.encode(build_prompt(question, result.sources))
            self._remember(prompt_ids, result.text)
            turn = RAGTurn(query, question, result.chunk_ids, result.sources, result.text,
                           {"rewrite": rewrite_s, **result.timings})
        else:
            retrieval = self.pipeline.retrieve(query)
            rag_messages = [*messages[:-1], {"role": "user", "content": build_prompt(question, retrieval.sources)}]
            prompt_ids = self.generator.chat_prompt_ids(rag_messages)
            answer = None
            if self.pipeline.refuses(retrieval):
                answer = REFUSAL
                self._remember(prompt_ids, answer)
            turn = RAGTurn(query, question, retrieval.chunk_ids, retrieval.sources, answer,
                           {"rewrite": rewrite_s, **retrieval.timings})
        with self._lock:
            self.turns.append(turn)
        return prompt_ids

    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        """The answer's token ids: replayed when already answered, else the generator's stream (or, without one, a
        prompt that did not come from `chat_prompt_ids` answered as a one-turn question)."""
        with self._lock:
            fixed = self._fixed.get(tuple(prompt_ids))
        if fixed is None and self.generator is not None:
            yield from self.generator.stream(prompt_ids, params, cancel)
            return
        if fixed is None:
            fixed = self.encode(self.pipeline.answer(self.decode(prompt_ids).strip()).text)
        for step, token in enumerate(fixed):
            if step >= params.max_tokens or cancel.is_set():
                return
            yield token
