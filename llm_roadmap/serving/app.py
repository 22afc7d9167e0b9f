"""An OpenAI-compatible HTTP API over a `Backend`: `create_app(backend, settings)` builds the FastAPI app.

Routes: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions (both with
`stream: true` as server-sent events, one chunk per piece of text, then `data: [DONE]`), GET /health (alive),
GET /health/ready (accepting work), GET /metrics (Prometheus).

What a request passes, in order: body size (413), API key (401 missing, 403 wrong; compared in constant time), the
key's token bucket (429 + Retry-After), JSON and field validation (422, naming the field and what to do), a
generation slot (wait in a bounded queue; 503 + Retry-After when it is full), the deadline (504). Every error body
is OpenAI-shaped, {"error": {"message", "type", "param", "code"}}, and never carries a traceback. A client that
disconnects cancels its generation, which frees its slot within one token.

Every response carries an `X-Request-ID` header: the client's own (if 1-64 safe characters) or a new one. The same
id is in the JSON access line of the request (logger `llm_roadmap.serving.access`), in every log line written while
it runs (with `metrics.JsonFormatter`), and in its OpenTelemetry span's `request_id` attribute; the official openai
client shows it as `exc.request_id` / `response._request_id`.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .backends import Backend, SamplingParams
from .metrics import REQUEST_ID_HEADER, Metrics, accept_request_id, end_span, request_id_var, start_span
from .settings import ServerSettings

logger = logging.getLogger("llm_roadmap.serving")
access_logger = logging.getLogger("llm_roadmap.serving.access")
ROUTES = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/health/ready", "/metrics")


# --- errors -------------------------------------------------------------------------------------------------------
class APIError(Exception):
    """An error the client should see, as OpenAI shapes it."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """{"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class GenerationTimeout(APIError):
    """The request's deadline passed."""

    def __init__(self, seconds: float, what: str):
        super().__init__(504, f"the request took longer than this server's limit of {seconds:g} s ({what}); ask for "
                         "fewer tokens or retry later", type="timeout_error", code="timeout")


# --- requests -----------------------------------------------------------------------------------------------------
class StreamOptions(BaseModel):
    """OpenAI's stream_options: include_usage adds a last chunk with token counts."""

    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class _GenerationRequest(BaseModel):
    """Fields both endpoints share, with OpenAI's names and ranges; unknown fields are ignored, as OpenAI does."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: StrictFloat = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: StrictFloat = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: Any = Field(None, validate_default=True)
    seed: StrictInt | None = Field(None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: StrictFloat = Field(0.0, allow_inf_nan=False)
    frequency_penalty: StrictFloat = Field(0.0, allow_inf_nan=False)
    logprobs: Any = None
    user: str | None = Field(None, max_length=256)
    ignore_eos: StrictBool = False  # vLLM's extension: generate exactly max_tokens

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only n=1 is supported, got n={n}: send {n} requests (with different seeds) instead")
        return n

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("penalties are not supported by this server: leave them out (or 0)")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value not in (None, False):
            raise ValueError("logprobs are not supported by this server: leave the field out")
        return None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: Any) -> list[str]:
        if stop is None:
            return []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError("stop must be a non-empty string or a list of non-empty strings")
        return stop


class CompletionRequest(_GenerationRequest):
    """POST /v1/completions."""

    prompt: Any
    echo: StrictBool = False
    best_of: StrictInt | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> str | list[int]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("the prompt is empty: send at least one character")
            return prompt
        if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
            return prompt
        raise ValueError("prompt must be a non-empty string or a non-empty list of token ids (integers); batches of "
                         "prompts are not supported: send one request per prompt")

    @field_validator("echo", "best_of", "suffix")
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        if value is True or (value is not None and value is not False and value != 1):
            raise ValueError("not supported by this server: leave the field out")
        return value


class ChatMessage(BaseModel):
    """One message; content is text, or a list of {"type": "text", "text": ...} parts."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Any

    @field_validator("content")
    @classmethod
    def _text(cls, content: Any) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text"
                                             and isinstance(part.get("text"), str) for part in content):
            return "".join(part["text"] for part in content)
        raise ValueError('content must be a string or a list of {"type": "text", "text": "..."} parts (this model '
                         "reads text only)")


class ChatRequest(_GenerationRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=512)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)


def _location(loc: tuple) -> str:
    """('messages', 0, 'role') -> 'messages[0].role'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_request(model: type[BaseModel], body: bytes) -> Any:
    """Validate a JSON body, or raise a 422 APIError that names the field, the problem and the value (if short)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        if first["type"] == "json_invalid":
            raise APIError(422, f"the request body is not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')}):"
                           " send a JSON object, e.g. {\"model\": ..., \"prompt\": ...}", code="invalid_json") from None
        if first["type"] == "model_type":
            raise APIError(422, "the request body must be a JSON object", code="invalid_json") from None
        param = _location(first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        shown = first.get("input")
        if isinstance(shown, (int, float, bool, str)) and first["type"] != "missing" and "got" not in message:
            text = repr(shown)
            message += f" (got {text if len(text) <= 40 else text[:40] + '...'})"
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise APIError(422, f"{param}: {message}{more}", param=param, code="invalid_value") from None


# --- limits -------------------------------------------------------------------------------------------------------
class RateLimiter:
    """A token bucket per key: `rate` requests per second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000):
        self.rate, self.burst, self.clock, self.max_keys = rate, burst, clock, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, time of last update)

    def acquire(self, key: str) -> float:
        """Take one token: 0.0 if granted, else the seconds until one will be there."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
        while len(self._buckets) > self.max_keys:  # forget the least recently seen (bounded memory)
            self._buckets.popitem(last=False)
        return wait


class Admission:
    """At most `max_concurrent` requests hold a slot, at most `max_queue` wait in order; more get 503."""

    def __init__(self, max_concurrent: int, max_queue: int, retry_after_s: int,
                 on_change: Callable[[int, int], None] = lambda active, waiting: None):
        self.max_concurrent, self.max_queue, self.retry_after_s = max_concurrent, max_queue, retry_after_s
        self.active = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._on_change = on_change

    @property
    def waiting(self) -> int:
        """Requests in the queue."""
        return sum(not waiter.done() for waiter in self._waiters)

    def _changed(self) -> None:
        self._on_change(self.active, self.waiting)

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if needed; 503 when the queue is full."""
        if self.active < self.max_concurrent and not self.waiting:
            self.active += 1
            self._changed()
            return
        if self.waiting >= self.max_queue:
            raise APIError(503, f"the server is busy ({self.active} requests generating, {self.waiting} waiting): "
                           f"retry after {self.retry_after_s} s", type="server_overloaded", code="queue_full",
                           headers={"Retry-After": str(self.retry_after_s)})
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._changed()
        try:
            await waiter  # `release` hands its slot straight to the first waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived just as we gave up: pass it on
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            self._changed()

    def release(self) -> None:
        """Give the slot to the first waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._changed()
                return
        self.active -= 1
        self._changed()


class IncrementalText:
    """Token ids in, text out: only whole characters, never the start of a stop string, nothing after one.

    Each step decodes a short window of ids (from `prefix_offset`) twice and emits the difference, holding text back
    while it ends in an unfinished UTF-8 character (U+FFFD), as Hugging Face's text-generation-inference does.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str]):
        self.decode, self.stop = decode, stop
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.text = ""  # decoded so far
        self.emitted = 0  # characters of `text` handed out
        self.stopped = False
        self.holdback = max((len(s) for s in stop), default=1) - 1

    def push(self, token: int) -> str:
        """Add a token; return the text that is now safe to show."""
        self.ids.append(token)
        prefix = self.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._take(final=False)

    def flush(self) -> str:
        """The rest of the text (generation ended)."""
        prefix = self.decode(self.ids[self.prefix_offset:self.read_offset])
        self.text += self.decode(self.ids[self.prefix_offset:])[len(prefix):]
        self.prefix_offset = self.read_offset = len(self.ids)
        return self._take(final=True)

    def _take(self, final: bool) -> str:
        if self.stopped:
            return ""
        if self.stop:
            start = max(0, self.emitted - self.holdback)
            hits = [at for s in self.stop if (at := self.text.find(s, start)) >= 0]
            if hits:
                self.stopped = True
                out, self.emitted = self.text[self.emitted:min(hits)], min(hits)
                return out
        end = len(self.text) if final else max(self.emitted, len(self.text) - self.holdback)
        out, self.emitted = self.text[self.emitted:end], end
        return out


# --- the state of one app -----------------------------------------------------------------------------------------
class Generation:
    """One request's generation: the backend's token stream in a worker thread, text deltas on the event loop.

    Owns a generation slot from the moment it is made; `close()` (idempotent, never blocks) asks the thread to stop,
    and the slot goes back when the thread has actually finished.
    """

    def __init__(self, state: ServingState, prompt_ids: list[int], params: SamplingParams, stop: list[str],
                 deadline: float, received: float, span: Any = None):
        # deadline: on the event loop's clock; received: time.perf_counter() when the request arrived (for metrics:
        # uvloop's loop.time() is cached once per loop iteration, in whole milliseconds)
        self.state, self.prompt_ids, self.params, self.stop = state, prompt_ids, params, stop
        self.deadline, self.received, self.span = deadline, received, span
        self.cancel = threading.Event()
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._future: asyncio.Future | None = None
        self._released = False
        state.generations.add(self)

    def _release(self, *_: Any) -> None:
        if not self._released:
            self._released = True
            self.state.generations.discard(self)
            self.state.admission.release()

    def close(self) -> None:
        """Stop generating; the slot is released once the worker thread returns."""
        self.cancel.set()
        if self._future is None:
            self._release()

    def _start_worker(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        backend, cancel = self.state.backend, self.cancel

        def put(item: tuple) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server stopping): nobody is listening
                cancel.set()

        def work() -> None:
            try:  # each token with the time it was made: the event loop may take several at once
                for token in backend.stream(self.prompt_ids, self.params, cancel):
                    put(("token", token, time.perf_counter()))
                    if cancel.is_set():
                        break
                put(("end", None, time.perf_counter()))
            except Exception as exc:  # reported to the client as a 500 without details; logged in full
                put(("error", exc, time.perf_counter()))

        self._future = loop.run_in_executor(self.state.executor, work)
        self._future.add_done_callback(self._release)

    async def events(self) -> AsyncIterator[tuple[str, str | None]]:
        """(text, None) pieces, then (text, finish_reason) once: "stop" or "length". Raises GenerationTimeout."""
        loop, metrics, tracer = asyncio.get_running_loop(), self.state.metrics, self.state.tracer
        queue: asyncio.Queue = asyncio.Queue()
        text = IncrementalText(self.state.backend.decode, self.stop)
        prefill = start_span(tracer, "prefill", self.span, prompt_tokens=len(self.prompt_ids))
        decode_span, first_at, last_at = None, None, None
        self._start_worker(loop, queue)
        try:
            while True:
                try:  # (not wait_for: on Python 3.11 it can swallow a cancellation that races a result)
                    async with asyncio.timeout_at(self.deadline):
                        kind, value, made_at = await queue.get()
                except TimeoutError:
                    self.finish_reason = "timeout"
                    raise GenerationTimeout(self.state.settings.request_timeout_s, "while generating") from None
                if kind == "error":
                    self.finish_reason = "error"
                    logger.error("the backend failed while generating", exc_info=value)
                    raise APIError(500, "the model failed while generating; the server's log has the details",
                                   type="server_error", code="backend_error")
                if kind == "end":
                    self.finish_reason = "length" if self.completion_tokens >= self.params.max_tokens else "stop"
                    yield text.flush(), self.finish_reason
                    return
                self.completion_tokens += 1
                last_at = made_at
                if first_at is None:
                    first_at = made_at
                    metrics.time_to_first_token.observe(first_at - self.received)
                    end_span(prefill)
                    decode_span = start_span(tracer, "decode", self.span)
                piece = text.push(value)
                if text.stopped:
                    self.finish_reason = "stop"
                    self.close()
                    yield piece, "stop"
                    return
                if piece:
                    yield piece, None
        except BaseException:
            if self.finish_reason is None:
                self.finish_reason = "cancelled"  # the client went away (or the server is stopping)
            raise
        finally:
            error = self.finish_reason if self.finish_reason in ("timeout", "error", "cancelled") else None
            self.close()
            metrics.generations.labels(self.finish_reason or "cancelled").inc()
            metrics.generated_tokens.inc(self.completion_tokens)
            if self.completion_tokens >= 2:  # one observation per generation of two tokens or more, however it ended
                # (tokens after the first) / (time from the first to the last), clocked where they were made; the
                # floor keeps a burst within the clock's resolution an (enormous) observation, not a skipped one
                metrics.decode_tokens_per_second.observe((self.completion_tokens - 1) / max(last_at - first_at, 1e-9))
            end_span(prefill if first_at is None else None, error=error)
            end_span(decode_span, error=error, completion_tokens=self.completion_tokens)


class ServingState:
    """Everything one app owns: backend, settings, limits, metrics, tracer, worker threads."""

    def __init__(self, backend: Backend, settings: ServerSettings, metrics: Metrics, tracer: Any = None):
        self.backend, self.settings, self.metrics, self.tracer = backend, settings, metrics, tracer
        self.model_name = settings.model_name or backend.name
        # where the model runs, for /v1/models and /health/ready ({} for a backend that does not say)
        self.placement = {key: str(getattr(backend, key)).removeprefix("torch.") for key in ("device", "dtype")
                          if getattr(backend, key, None) is not None}
        self.created = int(time.time())
        self.draining = False
        self.rate_limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
        self.admission = Admission(settings.max_concurrent, settings.max_queue, settings.retry_after_s,
                                   on_change=self._on_admission)
        self.executor = ThreadPoolExecutor(max_workers=settings.max_concurrent, thread_name_prefix="generate")
        self.generations: set[Generation] = set()
        self._key_digests = [hashlib.sha256(key.encode()).digest() for key in settings.api_keys]
        backend.step_observer = metrics.batch_size.observe

    def _on_admission(self, active: int, waiting: int) -> None:
        self.metrics.active.set(active)
        self.metrics.queue_depth.set(waiting)

    def authenticate(self, authorization: str | None) -> str | None:
        """The caller's key (None when auth is off); 401 without a bearer key, 403 for a key not configured."""
        if not self.settings.auth_required:
            return None
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise APIError(401, "missing API key: send the header `Authorization: Bearer <key>` (the openai client "
                           "does this with api_key=...)", type="authentication_error", code="missing_api_key")
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        # compare with every key, in constant time, without stopping early: the timing says nothing about the keys
        matches = [hmac.compare_digest(digest, known) for known in self._key_digests]
        if not any(matches):
            raise APIError(403, "this API key is not valid for this server", type="authentication_error",
                           code="invalid_api_key")
        return key

    def check_model(self, model: str) -> None:
        """422 unless `model` is the id this server serves."""
        if model != self.model_name:
            raise APIError(422, f"unknown model {model[:80]!r}: this server serves {self.model_name!r} (see "
                           "GET /v1/models)", param="model", code="model_not_found")

    def budget(self, requested: int | None, prompt_tokens: int, default: int, param: str) -> int:
        """max_tokens after the cap and context checks (422 with what to change)."""
        context, cap = self.backend.context_length, self.settings.max_tokens_cap
        if requested is not None and requested > cap:
            raise APIError(422, f"max_tokens={requested} is above this server's cap of {cap}: ask for at most {cap}",
                           param="max_tokens", code="max_tokens_too_large")
        if prompt_tokens >= context:
            raise APIError(422, f"the prompt is {prompt_tokens} tokens, but {self.model_name!r} holds {context} tokens "
                           "in all (prompt + completion): shorten the prompt", param=param,
                           code="context_length_exceeded")
        if requested is not None and prompt_tokens + requested > context:
            raise APIError(422, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({requested}) is "
                           f"{prompt_tokens + requested} tokens, more than the context of {self.model_name!r} "
                           f"({context}): shorten the prompt or ask for at most {context - prompt_tokens} tokens",
                           param="max_tokens", code="context_length_exceeded")
        return requested if requested is not None else min(default, cap, context - prompt_tokens)

    def check_stop(self, stop: list[str]) -> None:
        """422 for too many or too long stop strings."""
        limit, chars = self.settings.max_stop_sequences, self.settings.max_stop_chars
        if len(stop) > limit:
            raise APIError(422, f"stop: at most {limit} stop sequences, got {len(stop)}", param="stop",
                           code="invalid_value")
        if any(len(s) > chars for s in stop):
            raise APIError(422, f"stop: each stop sequence may be at most {chars} characters", param="stop",
                           code="invalid_value")

    def shutdown(self) -> None:
        """Cancel every generation and join the worker threads."""
        for generation in list(self.generations):
            generation.cancel.set()
        self.executor.shutdown(wait=True, cancel_futures=True)


# --- responses ----------------------------------------------------------------------------------------------------
def sse(payload: dict | str) -> str:
    """One server-sent event."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


class GenerationStream(StreamingResponse):
    """A streaming response that closes its generation however the response ends (done, error, disconnect)."""

    def __init__(self, content: AsyncIterator[str], generation: Generation, **kwargs: Any):
        super().__init__(content, **kwargs)
        self.generation = generation

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.close()
            end_span(self.generation.span, error="cancelled")  # only if the stream never got to end it


async def _until_done_or_disconnected(task: asyncio.Future, request: Request, poll_s: float = 0.25) -> bool:
    """Wait for `task`; if the client disconnects first, cancel the task and return True."""
    while not task.done():
        await asyncio.wait({task}, timeout=poll_s)
        if not task.done() and await request.is_disconnected():
            task.cancel()
            return True
    return False


async def _run(state: ServingState, request: Request, kind: Literal["text", "chat"], req: Any, prompt_ids: list[int],
               max_tokens: int, started: float, received: float, span: Any) -> Response:
    """Admit the request, generate, and answer (a JSON body or an event stream)."""
    settings = state.settings
    deadline = started + settings.request_timeout_s
    queue_span = start_span(state.tracer, "queue", span)
    acquire = asyncio.ensure_future(state.admission.acquire())
    try:
        async with asyncio.timeout_at(deadline):
            gone = await _until_done_or_disconnected(acquire, request)
        acquire.result()  # 503 when the queue is full
    except TimeoutError:
        acquire.cancel()
        end_span(queue_span, error="timeout")
        raise GenerationTimeout(settings.request_timeout_s, "waiting for a free slot") from None
    except BaseException:
        acquire.cancel()
        end_span(queue_span, error="rejected")
        raise
    if gone:  # the client left while queued: its place goes to the next one, and nothing was generated
        end_span(queue_span, error="disconnected")
        end_span(span, error="disconnected")
        return Response(status_code=499)
    end_span(queue_span)
    state.metrics.prompt_tokens.inc(len(prompt_ids))
    params = SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                            ignore_eos=req.ignore_eos)
    generation = Generation(state, prompt_ids, params, req.stop, deadline, received, span)
    ident = f"{'cmpl' if kind == 'text' else 'chatcmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    head = {"id": ident, "created": created, "model": state.model_name, "system_fingerprint": None}

    def usage() -> dict[str, int]:
        return {"prompt_tokens": len(prompt_ids), "completion_tokens": generation.completion_tokens,
                "total_tokens": len(prompt_ids) + generation.completion_tokens}

    def chunk(text: str | None, finish: str | None) -> dict:
        if kind == "text":
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            return {**head, "object": "text_completion", "choices": [choice]}
        delta = {} if text is None else ({"role": "assistant", "content": ""} if text == "" else {"content": text})
        return {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events() -> AsyncIterator[str]:
            try:
                if kind == "chat":
                    yield sse(chunk("", None))  # the role comes first, as OpenAI sends it
                async with aclosing(generation.events()) as pieces:
                    async for text, finish in pieces:
                        if text:
                            yield sse(chunk(text, None))
                        if finish is not None:
                            yield sse(chunk(None, finish))
                if include_usage:
                    yield sse({**head, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                               "choices": [], "usage": usage()})
                yield sse("[DONE]")
            except APIError as exc:  # the status line is long gone: report the error as the last event
                yield sse(exc.body())
            except Exception:
                logger.exception("streaming failed")
                yield sse(APIError(500, "internal error while streaming", type="server_error").body())
            finally:
                end_span(span, completion_tokens=generation.completion_tokens,
                         finish_reason=generation.finish_reason or "cancelled")

        return GenerationStream(events(), generation, media_type="text/event-stream",
                                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def collect() -> tuple[str, str | None]:
        parts, finish = [], None
        async with aclosing(generation.events()) as pieces:
            async for text, reason in pieces:
                parts.append(text)
                finish = reason or finish
        return "".join(parts), finish

    task = asyncio.ensure_future(collect())
    try:
        if await _until_done_or_disconnected(task, request):  # so that its slot is not held for nobody
            generation.close()
            return Response(status_code=499)  # nginx's "client closed request": only our metrics see it
        text, finish = task.result()
    finally:
        if not task.done():
            task.cancel()
        generation.close()
        end_span(span, completion_tokens=generation.completion_tokens,
                 finish_reason=generation.finish_reason or "cancelled")
    if kind == "text":
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return JSONResponse({**head, "object": "text_completion", "choices": [choice], "usage": usage()})
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": usage()})


# --- middleware -----------------------------------------------------------------------------------------------------
class BodyLimit:
    """413 for a body over `limit` bytes: at once from Content-Length, or as soon as a chunked body passes it."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        error = APIError(413, f"the request body is larger than this server's limit of {self.limit} bytes: send a "
                         "shorter prompt", code="request_too_large")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await error.response()(scope, receive, send)
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise error
            return message

        await self.app(scope, limited_receive, send)


class Observe:
    """Counts every HTTP request by route and status, and times it."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), None

        async def observed_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except asyncio.CancelledError:
            status = status or 499
            raise
        except Exception:
            status = status or 500
            raise
        finally:
            path = scope.get("path", "")
            route = path if path in ROUTES else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
            self.metrics.requests.labels(route, str(status or 500)).inc()
            self.metrics.request_latency.labels(route).observe(time.perf_counter() - start)


class RequestContext:
    """Outermost middleware: the request id (the client's X-Request-ID if safe, else a new one) in a ContextVar, in
    the response's X-Request-ID header and in one JSON access line per request; an unhandled error becomes an
    OpenAI-shaped 500 logged with the id (its traceback in the log, never in the response).

    `store`: where the id lives while the request runs; a ContextVar (the default) gives every asyncio task its own
    value. Anything with `.set()` fits (lesson 9.3 shows what a plain shared attribute gets wrong)."""

    def __init__(self, app: Any, store: Any = request_id_var, access_log: logging.Logger = access_logger):
        self.app, self.store, self.access_log = app, store, access_log

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope.get("headers", []) if k == REQUEST_ID_HEADER.encode()), None)
        rid = accept_request_id(given.decode("latin-1") if given is not None else None)
        token = self.store.set(rid)
        scope.setdefault("state", {})["request_id"] = rid  # (Starlette's request.state.request_id)
        start, status = time.perf_counter(), None

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (REQUEST_ID_HEADER.encode(),
                                                                                 rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = status or 499
            raise
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path", "")[:200])
            if status is not None:  # the response had begun: nothing more can be said to the client
                raise
            status = 500
            error = APIError(500, "internal server error; the server's log has the details (request id "
                             f"{rid})", type="server_error")
            await error.response()(scope, receive, send_with_id)
        finally:
            self.access_log.info("request", extra={"fields": {
                "method": scope.get("method"), "path": scope.get("path", "")[:200], "status": status or 500,
                "latency_s": round(time.perf_counter() - start, 6),
                "client": (scope.get("client") or ("?",))[0]}})
            if isinstance(token, contextvars.Token):
                self.store.reset(token)


# --- the app ------------------------------------------------------------------------------------------------------
def create_app(backend: Backend, settings: ServerSettings | None = None, *, tracer: Any = None,
               metrics: Metrics | None = None) -> FastAPI:
    """The OpenAI-compatible app serving `backend` under `settings`; `tracer`: an OpenTelemetry tracer (optional)."""
    settings = settings or ServerSettings()
    state = ServingState(backend, settings, metrics or Metrics(), tracer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.draining = True
        await asyncio.to_thread(state.shutdown)

    app = FastAPI(title="llm-roadmap OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.serving = state

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        target = f"{request.method} {request.url.path[:100]}"
        messages = {404: f"no route {target}: this server has {', '.join(ROUTES)}",
                    405: f"method not allowed: {target}"}
        message = messages.get(exc.status_code, str(exc.detail)[:200])
        return APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return APIError(422, "invalid request: check the path and parameters", code="invalid_value").response()

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=499)  # the client left while sending its body: nobody to answer

    # (unhandled errors: RequestContext, the outermost middleware, logs them and answers an OpenAI-shaped 500)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(Observe, metrics=state.metrics)
    app.add_middleware(RequestContext)  # added last: outermost, so that every line and response carries the id

    async def guard(request: Request) -> None:
        """Authentication, then the caller's rate limit."""
        key = state.authenticate(request.headers.get("authorization"))
        who = f"key:{key}" if key is not None else f"addr:{request.client.host if request.client else '?'}"
        wait = state.rate_limiter.acquire(who)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise APIError(429, f"rate limit exceeded ({settings.rate_limit_rps:g} requests/s, bursts of "
                           f"{settings.rate_limit_burst}): retry after {seconds} s", type="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": str(seconds)})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ready", "model": state.model_name, **state.placement})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    def model_card() -> dict[str, Any]:
        return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "llm-roadmap",
                "context_length": backend.context_length, **state.placement}

    @app.get("/v1/models", dependencies=[Depends(guard)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(guard)])
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != state.model_name:
            raise APIError(404, f"unknown model {model_id[:80]!r}: this server serves {state.model_name!r}",
                           param="model", code="model_not_found")
        return model_card()

    def check_ids(ids: list[int]) -> list[int]:
        if any(not 0 <= t < backend.vocab_size for t in ids):
            raise APIError(422, f"prompt: token ids must be in 0..{backend.vocab_size - 1}", param="prompt",
                           code="invalid_value")
        return ids

    @app.post("/v1/completions", dependencies=[Depends(guard)])
    async def completions(request: Request) -> Response:
        started, received = asyncio.get_running_loop().time(), time.perf_counter()
        req = parse_request(CompletionRequest, await request.body())
        state.check_model(req.model)
        state.check_stop(req.stop)
        span = start_span(tracer, "completions", model=state.model_name, stream=req.stream,
                          request_id=request_id_var.get())
        try:
            tokenize = start_span(tracer, "tokenize", span)
            prompt_ids = check_ids(req.prompt) if isinstance(req.prompt, list) else \
                await asyncio.to_thread(backend.encode, req.prompt)
            end_span(tokenize, prompt_tokens=len(prompt_ids))
            max_tokens = state.budget(req.max_tokens, len(prompt_ids), settings.default_max_tokens, "prompt")
            return await _run(state, request, "text", req, prompt_ids, max_tokens, started, received, span)
        except BaseException as exc:
            end_span(span, error=type(exc).__name__)
            raise

    @app.post("/v1/chat/completions", dependencies=[Depends(guard)])
    async def chat_completions(request: Request) -> Response:
        started, received = asyncio.get_running_loop().time(), time.perf_counter()
        req = parse_request(ChatRequest, await request.body())
        state.check_model(req.model)
        state.check_stop(req.stop)
        span = start_span(tracer, "chat.completions", model=state.model_name, stream=req.stream,
                          request_id=request_id_var.get())
        try:
            tokenize = start_span(tracer, "tokenize", span)
            messages = [{"role": m.role, "content": m.content} for m in req.messages]
            try:
                prompt_ids = await asyncio.to_thread(backend.chat_prompt_ids, messages)
            except Exception as exc:  # a template's raise_exception (e.g. roles must alternate), or no template
                raise APIError(422, f"messages: the chat template rejected them: {str(exc)[:200]}",
                               param="messages", code="invalid_value") from None
            end_span(tokenize, prompt_tokens=len(prompt_ids))
            requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
            max_tokens = state.budget(requested, len(prompt_ids), settings.max_tokens_cap, "messages")
            return await _run(state, request, "chat", req, prompt_ids, max_tokens, started, received, span)
        except BaseException as exc:
            end_span(span, error=type(exc).__name__)
            raise

    return app
