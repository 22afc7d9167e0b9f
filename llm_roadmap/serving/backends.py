"""The models behind the service: a small `Backend` protocol and its implementations.

A backend turns prompt token ids into new token ids, one at a time, in a worker thread the app owns; the app does
everything else (chat templates via `chat_prompt_ids`, stop strings, detokenization, limits). Implementations:

- `TransformersBackend`: any local causal LM with a tokenizer (a `save_pretrained` folder, safetensors only),
  token by token with a KV cache (`cache`, formerly `past_key_values`); greedy at temperature 0, else top-p
  sampling from a seeded `torch.Generator` (the same seed gives the same text).
- `GPTBackend`: the course GPT of lesson 3.2 (`llm_roadmap.models.gpt.GPT`) with a byte-level tokenizer.
- `SlowBackend`: wraps another one and waits between tokens (to watch queues, timeouts and disconnects).
- `build_tiny_test_model(folder)`: a tiny random Llama with a BPE tokenizer and a ChatML template, made offline.

Lesson 4.4's engine (scheduler + paged KV cache, continuous batching) fits the same protocol: `stream` adds a
`Request` to the engine's scheduler and yields its tokens as a single engine loop (one thread, stepping all running
requests together) appends them; report the engine's batch size through `step_observer`.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from llm_roadmap.models.gpt import filter_logits

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens: temperature 0 is greedy; `seed` makes sampling repeatable."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False  # keep going after the end-of-sequence token (benchmarks, tests)


@runtime_checkable
class Backend(Protocol):
    """What the app needs from a model."""

    name: str  # the model id clients see in /v1/models
    context_length: int  # prompt + generated tokens must fit
    vocab_size: int
    # called with the batch size of each forward pass; create_app sets it (an app's metrics), so a backend reports to
    # the last app built on it
    step_observer: Callable[[int], None] | None

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens added)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens skipped."""
        ...

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt ids of a conversation, with the model's chat template and the assistant's generation prompt."""
        ...

    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        """New token ids, one at a time; stops at max_tokens, at end of sequence (unless ignore_eos), or soon after
        `cancel` is set. Runs in a worker thread."""
        ...


def check_device(device: str) -> None:
    """Raise ValueError unless torch can use `device` here ("cpu", "cuda", "cuda:N", "mps")."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU here: use 'cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but there are {torch.cuda.device_count()} CUDA GPUs")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here: use 'cpu'")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported by this server: use 'cpu', 'cuda', 'cuda:N' or 'mps'")


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """The next token id from one row of logits: argmax at temperature 0, else top-p sampling."""
    if params.temperature == 0:
        return int(logits.argmax())
    top_p = params.top_p if params.top_p < 1 else None
    # on the CPU, in fp32: the seeded generator is a CPU one (the same seed gives the same text on any device)
    probs = torch.softmax(filter_logits(logits[None].float().cpu() / params.temperature, None, top_p), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()  # fresh entropy
    else:
        gen.manual_seed(seed % 2**64)
    return gen


class TransformersBackend:
    """A local Hugging Face causal LM and its tokenizer, decoding token by token with a KV cache.

    `device`: "cpu", "cuda", "cuda:1", ... (a clear error when it is not there); `dtype`: the weights' dtype (None:
    as saved for a folder, unchanged for a model object). `python -m llm_roadmap.serving` picks both from the machine.
    """

    def __init__(self, model_or_path: Any, tokenizer: Any = None, name: str | None = None,
                 device: str = "cpu", dtype: torch.dtype | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_device(device)
        if isinstance(model_or_path, (str, Path)):
            path = Path(model_or_path)
            # safetensors only: a pickle-based checkpoint can run code when loaded
            model_or_path = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=dtype)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
            name = name or path.name
        if tokenizer is None:
            raise ValueError("pass the tokenizer with a model object (or pass a folder holding both)")
        self.model = model_or_path.to(device=device, dtype=dtype).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = next(self.model.parameters()).dtype
        self.name = name or getattr(self.model.config, "name_or_path", "") or type(self.model).__name__
        config = self.model.config
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or config.n_positions)
        self.vocab_size = int(config.vocab_size)
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)
        self.step_observer: Callable[[int], None] | None = None
        self._lock = threading.Lock()  # one forward pass at a time: concurrent requests interleave token by token
        # transformers renamed `past_key_values` to `cache` (5.2x); Colab's older 5.x still has the old name
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens skipped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The tokenizer's chat template applied to the messages, ending with the assistant's turn."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"model {self.name!r} has no chat template; use /v1/completions with a plain prompt")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.encode(text)  # the template already holds its special tokens: add none twice

    def _forward(self, ids: list[int], cache: Any) -> tuple[torch.Tensor, Any]:
        inputs = {"input_ids": torch.tensor([ids], device=self.device), "use_cache": True, self._cache_arg: cache}
        with self._lock, torch.inference_mode():
            out = self.model(**inputs)
        if self.step_observer is not None:
            self.step_observer(1)  # this backend decodes one sequence per forward pass
        return out.logits[0, -1], out["cache"] if "cache" in out else out["past_key_values"]

    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        """Prefill the prompt once, then feed back one token per step, reusing the KV cache."""
        generator = _generator(params.seed)
        logits, cache = self._forward(prompt_ids, None)
        for step in range(params.max_tokens):
            if cancel.is_set():
                return
            token = sample_next(logits, params, generator)
            if token in self.eos_token_ids and not params.ignore_eos:
                return
            yield token
            if step + 1 < params.max_tokens:
                logits, cache = self._forward([token], cache)


class GPTBackend:
    """The course GPT (lesson 3.2) over bytes: token id = byte value, so vocab_size must be at least 256.

    It has no KV cache (lesson 4.4 adds one), so each step reruns the whole sequence, as `GPT.generate` does.
    """

    def __init__(self, model: Any, name: str = "course-gpt", eos_token_id: int | None = None, device: str = "cpu",
                 dtype: torch.dtype | None = None):
        if model.cfg.vocab_size < 256:
            raise ValueError(f"a byte-level GPT needs vocab_size >= 256, got {model.cfg.vocab_size}")
        check_device(device)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = device, next(self.model.parameters()).dtype
        self.name = name
        self.context_length = model.cfg.block_size
        self.vocab_size = model.cfg.vocab_size
        self.eos_token_id = eos_token_id
        self.step_observer: Callable[[int], None] | None = None
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """UTF-8 text of the bytes (ids >= 256, never produced by training on bytes, are dropped)."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """A plain-text template: one `role: content` line per message, then `assistant:`."""
        lines = [f"{message['role']}: {message['content']}" for message in messages]
        return self.encode("\n".join([*lines, "assistant:"]))

    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        """One full forward pass per new token."""
        generator = _generator(params.seed)
        ids = list(prompt_ids)
        for _ in range(params.max_tokens):
            if cancel.is_set():
                return
            with self._lock, torch.inference_mode():
                logits, _ = self.model(torch.tensor([ids[-self.context_length:]], device=self.device))
            if self.step_observer is not None:
                self.step_observer(1)
            token = sample_next(logits[0, -1], params, generator)
            if token == self.eos_token_id and not params.ignore_eos:
                return
            ids.append(token)
            yield token


class SlowBackend:
    """Another backend, waiting `seconds_per_token` before each token (a stand-in for a big model's decode time)."""

    def __init__(self, inner: Backend, seconds_per_token: float):
        self.inner, self.seconds_per_token = inner, seconds_per_token

    def __getattr__(self, attribute: str) -> Any:  # name, context_length, encode, ... come from the inner backend
        return getattr(self.inner, attribute)

    @property
    def step_observer(self) -> Callable[[int], None] | None:
        """The inner backend's observer."""
        return self.inner.step_observer

    @step_observer.setter
    def step_observer(self, observer: Callable[[int], None] | None) -> None:
        self.inner.step_observer = observer

    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        """The inner stream, with a pause (cut short by `cancel`) before each token."""
        for token in self.inner.stream(prompt_ids, params, cancel):
            if cancel.wait(self.seconds_per_token):
                return
            yield token


def build_tiny_test_model(folder: str | Path, seed: int = 0, vocab_size: int = 384, context_length: int = 256) -> Path:
    """Save a tiny random LlamaForCausalLM and a BPE tokenizer with a ChatML chat template into `folder`, offline.

    The tokenizer is trained (byte-level BPE, `tokenizers`) on Python's help topics; the weights are random but fixed
    by `seed`. Load it with `TransformersBackend(folder)`. Takes well under a second after the imports.
    """
    import pydoc_data.topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    topics = pydoc_data.topics.topics
    bpe.train_from_iterator([topics[key] for key in sorted(topics)][:40], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        chat_template=CHATML_TEMPLATE)
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context_length,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder)  # safetensors by default
    tokenizer.save_pretrained(folder)
    return folder
