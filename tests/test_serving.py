"""The OpenAI-compatible service in process (httpx over ASGI): outputs against Hugging Face `generate`, every error
status with its message, hostile bodies, limits, metrics and spans. tests/test_serving_live.py runs it as a process.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from llm_roadmap.models.gpt import GPT, GPTConfig
from llm_roadmap.serving.app import Admission, APIError, IncrementalText, RateLimiter, RequestContext, create_app
from llm_roadmap.serving.backends import (
    GPTBackend,
    SamplingParams,
    SlowBackend,
    TransformersBackend,
    build_tiny_test_model,
)
from llm_roadmap.serving.metrics import JsonFormatter, accept_request_id, request_id_var
from llm_roadmap.serving.settings import ServerSettings, api_keys_from_env

KEY, OTHER_KEY = "test-key-1", "test-key-2"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "tiny"


# --- fixtures and helpers -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> TransformersBackend:
    return TransformersBackend(build_tiny_test_model(tmp_path_factory.mktemp("tiny")), name=MODEL)


@pytest.fixture
def make_app():
    """make_app(backend, **settings) -> a fresh app (its worker threads are joined at teardown)."""
    apps = []

    def make(backend, tracer=None, **settings):
        app = create_app(backend, ServerSettings(**{"api_keys": (KEY, OTHER_KEY), **settings}), tracer=tracer)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.state.serving.shutdown()


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                             base_url="http://testserver", timeout=30)


def call(app, method: str, path: str, headers: dict | None = AUTH, **kwargs) -> httpx.Response:
    """One request, in a fresh event loop."""
    async def go():
        async with client(app) as c:
            return await c.request(method, path, headers=headers, **kwargs)
    return asyncio.run(go())


def concurrently(app, *bodies: dict, path: str = "/v1/completions") -> list[httpx.Response]:
    """POST the bodies at the same time."""
    async def go():
        async with client(app) as c:
            return await asyncio.gather(*(c.post(path, headers=AUTH, json=body) for body in bodies))
    return asyncio.run(go())


def events(response: httpx.Response) -> list:
    """The JSON payloads of a server-sent event stream (and the string "[DONE]")."""
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\n")
    out = []
    for block in response.text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        out.append("[DONE]" if block == "data: [DONE]" else json.loads(block[6:]))
    return out


def hf_greedy(backend: TransformersBackend, prompt_ids: list[int], n: int, ignore_eos: bool = False) -> str:
    """The independent reference: Hugging Face `generate`, greedy, decoded by the tokenizer in one piece."""
    ids = torch.tensor([prompt_ids])
    config = copy.deepcopy(backend.model.generation_config)
    config.eos_token_id = None if ignore_eos else config.eos_token_id
    config.max_new_tokens, config.do_sample = n, False
    out = backend.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    assert out.shape[1] == len(prompt_ids) + n or not ignore_eos
    return backend.tokenizer.decode(out[0, len(prompt_ids):], skip_special_tokens=True)


def metric(app, name: str, **labels) -> float:
    """A sample's value from the app's /metrics (0 when absent)."""
    text = call(app, "GET", "/metrics", headers=None).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def assert_openai_error(response: httpx.Response, status: int, *fragments: str, param: str | None = None) -> dict:
    """The status, an OpenAI-shaped body whose message holds the fragments, and nothing of a traceback."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    for fragment in fragments:
        assert fragment in body["error"]["message"], (fragment, body)
    if param is not None:
        assert body["error"]["param"] == param, body
    assert "Traceback" not in response.text and 'File "' not in response.text and ".py" not in response.text
    return body["error"]


def completion(**fields) -> dict:
    return {"model": MODEL, "prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0, **fields}


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "What is a list?"}],
            "max_tokens": 8, "temperature": 0, **fields}


# --- settings -------------------------------------------------------------------------------------------------------
def test_settings_default_to_loopback_and_refuse_open_binds_without_keys():
    assert ServerSettings().host == "127.0.0.1"
    with pytest.raises(ValueError, match="without API keys"):
        ServerSettings(host="0.0.0.0")
    assert ServerSettings(host="0.0.0.0", api_keys=("k",)).auth_required
    with pytest.raises(ValueError, match="max_concurrent"):
        ServerSettings(max_concurrent=0)
    assert "s3cret" not in repr(ServerSettings(api_keys=("s3cret",))), "keys stay out of reprs (and so of logs)"
    assert api_keys_from_env({"LLM_ROADMAP_API_KEYS": " a, ,b "}) == ("a", "b")


# --- outputs ----------------------------------------------------------------------------------------------------------
def test_greedy_completion_equals_hf_generate(backend, make_app):
    app = make_app(backend)
    prompt = "def add(a, b):"
    response = call(app, "POST", "/v1/completions", json=completion(prompt=prompt, max_tokens=24, ignore_eos=True))
    body = response.json()
    assert response.status_code == 200 and body["object"] == "text_completion" and body["model"] == MODEL
    prompt_ids = backend.tokenizer.encode(prompt, add_special_tokens=False)
    assert body["choices"][0]["text"] == hf_greedy(backend, prompt_ids, 24, ignore_eos=True)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": 24,
                             "total_tokens": len(prompt_ids) + 24}
    # token ids as the prompt give the same completion
    by_ids = call(app, "POST", "/v1/completions", json=completion(prompt=prompt_ids, max_tokens=24, ignore_eos=True))
    assert by_ids.json()["choices"][0]["text"] == body["choices"][0]["text"]


def test_chat_applies_the_tokenizers_template_and_equals_hf_generate(backend, make_app):
    app = make_app(backend)
    request = chat(max_tokens=20)
    body = call(app, "POST", "/v1/chat/completions", json=request).json()
    templated = backend.tokenizer.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=False)
    assert templated.endswith("<|im_start|>assistant\n") and "<|im_start|>system\nBe brief.<|im_end|>" in templated
    prompt_ids = backend.tokenizer.encode(templated, add_special_tokens=False)
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    expected = hf_greedy(backend, prompt_ids, 20)  # stops at the end-of-turn token, as the server does
    assert body["choices"][0]["message"]["content"] == expected
    # content given as text parts is the same conversation
    parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in request["messages"]]
    again = call(app, "POST", "/v1/chat/completions", json={**request, "messages": parts}).json()
    assert again["choices"][0]["message"]["content"] == expected


def test_streamed_text_equals_the_non_streamed_text(backend, make_app):
    app = make_app(backend)
    for path, request in [("/v1/completions", completion(max_tokens=30, ignore_eos=True)),
                          ("/v1/chat/completions", chat(max_tokens=30, ignore_eos=True))]:
        whole = call(app, "POST", path, json=request).json()
        stream = events(call(app, "POST", path, json={**request, "stream": True,
                                                       "stream_options": {"include_usage": True}}))
        assert stream[-1] == "[DONE]" and stream[-2]["usage"] == whole["usage"]
        chunks = [e for e in stream[:-2]]
        if path == "/v1/chat/completions":
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:]]
            text = whole["choices"][0]["message"]["content"]
        else:
            pieces = [c["choices"][0]["text"] for c in chunks]
            text = whole["choices"][0]["text"]
        assert "".join(pieces) == text
        assert sum(1 for p in pieces if p) > 5, "token by token, not one chunk"
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
        assert len({c["id"] for c in chunks}) == 1


def test_same_request_same_text_and_seeds_repeat(backend, make_app):
    app = make_app(backend)
    texts = lambda **f: call(app, "POST", "/v1/completions", json=completion(max_tokens=16, ignore_eos=True, **f)) \
        .json()["choices"][0]["text"]  # noqa: E731
    assert texts() == texts(), "greedy decoding is deterministic"
    sampled = {seed: texts(temperature=1.0, seed=seed) for seed in range(3)}
    assert sampled[0] == texts(temperature=1.0, seed=0), "the same seed gives the same sample"
    assert len(set(sampled.values())) > 1, "different seeds give different samples"
    assert texts(temperature=1.0, seed=0, top_p=1e-6) == texts(), "top_p -> 0 keeps only the argmax"


def test_stop_sequences_cut_the_text_streamed_or_not(backend, make_app):
    app = make_app(backend)
    full = call(app, "POST", "/v1/completions", json=completion(max_tokens=40, ignore_eos=True)).json()
    text = full["choices"][0]["text"]
    at = next(i for i in range(5, len(text) - 2) if text[i:i + 2].isascii() and text[i:i + 2].isalnum())
    stop = text[at:at + 2]
    expected = text[:text.find(stop)]
    cut = call(app, "POST", "/v1/completions", json=completion(max_tokens=40, ignore_eos=True, stop=[stop, "\x00"]))
    assert cut.json()["choices"][0] == {"index": 0, "text": expected, "logprobs": None, "finish_reason": "stop"}
    stream = events(call(app, "POST", "/v1/completions", json=completion(max_tokens=40, ignore_eos=True, stop=stop,
                                                                          stream=True)))
    assert "".join(e["choices"][0]["text"] for e in stream[:-1]) == expected
    assert stream[-2]["choices"][0]["finish_reason"] == "stop"


def test_incremental_text_emits_whole_characters_and_holds_back_stop_prefixes():
    text = "héllo wörld 🙂 ok"
    decode = lambda ids: bytes(ids).decode("utf-8", errors="replace")  # noqa: E731  (one byte per token)
    stream = IncrementalText(decode, [])
    pieces = [stream.push(b) for b in text.encode()] + [stream.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert "".join(decode([b]) for b in text.encode()) != text, "the broken twin: decoding token by token mangles"
    stopped = IncrementalText(decode, ["wör", "zz"])
    pieces = [stopped.push(b) for b in text.encode()] + [stopped.flush()]
    assert "".join(pieces) == "héllo " and stopped.stopped
    # invalid bytes stay visible as U+FFFD, exactly as a one-piece decode shows them
    junk = [0xE2, 0x82, 0x41, 0xF0, 0x9F, 0x99, 0x82, 0xFF, 0x42]
    stream = IncrementalText(decode, [])
    assert "".join([stream.push(b) for b in junk] + [stream.flush()]) == decode(junk)


def test_course_gpt_backend_equals_its_own_generate(make_app):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32))
    backend = GPTBackend(gpt, name="course-gpt")
    app = make_app(backend)
    body = call(app, "POST", "/v1/completions", json={"model": "course-gpt", "prompt": "hi", "max_tokens": 20,
                                                      "temperature": 0}).json()
    reference = gpt.generate(torch.tensor([list(b"hi")]), 20, temperature=0)[0, 2:].tolist()
    assert body["choices"][0]["text"] == bytes(reference).decode("utf-8", errors="replace")
    long = call(app, "POST", "/v1/completions", json={"model": "course-gpt", "prompt": "x" * 60, "max_tokens": 5})
    assert_openai_error(long, 422, "60", "64", "at most 4 tokens", param="max_tokens")


# --- errors -----------------------------------------------------------------------------------------------------------
def test_api_keys_401_without_403_wrong_and_either_key_works(backend, make_app):
    app = make_app(backend)
    assert_openai_error(call(app, "GET", "/v1/models", headers=None), 401, "Authorization: Bearer")
    assert_openai_error(call(app, "GET", "/v1/models", headers={"Authorization": f"Basic {KEY}"}), 401)
    assert_openai_error(call(app, "GET", "/v1/models", headers={"Authorization": "Bearer "}), 401)
    assert_openai_error(call(app, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"}), 403, "not valid")
    assert_openai_error(call(app, "GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}x"}), 403)
    assert_openai_error(call(app, "GET", "/v1/models", headers={"Authorization": "Bearer " + "k" * 10_000}), 403)
    assert_openai_error(call(app, "POST", "/v1/completions", headers=None, content=b"{not json"), 401)
    for key in (KEY, OTHER_KEY):
        assert call(app, "GET", "/v1/models", headers={"Authorization": f"bearer {key}"}).status_code == 200
    listed = call(app, "GET", "/v1/models").json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == [MODEL]
    assert call(app, "GET", f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert_openai_error(call(app, "GET", "/v1/models/other"), 404, "unknown model")
    for path in ("/health", "/health/ready", "/metrics"):  # probes and scrapers need no key
        assert call(app, "GET", path, headers=None).status_code == 200
    app.state.serving.draining = True  # what SIGTERM sets while in-flight requests finish
    assert call(app, "GET", "/health/ready", headers=None).status_code == 503
    assert call(app, "GET", "/health", headers=None).status_code == 200, "alive while draining"
    open_app = make_app(backend, api_keys=())
    assert call(open_app, "GET", "/v1/models", headers=None).status_code == 200


LONG = "word " * 300  # > 256 tokens
VALIDATION_CASES = [
    ("bad JSON", b'{"model": "tiny", "prompt": ', None, "not valid JSON"),
    ("not an object", b"[1, 2, 3]", None, "JSON object"),
    ("negative max_tokens", completion(max_tokens=-5), "max_tokens", "greater than or equal to 1"),
    ("zero max_tokens", completion(max_tokens=0), "max_tokens", "greater than or equal to 1"),
    ("max_tokens as a string", completion(max_tokens="5"), "max_tokens", "valid integer"),
    ("max_tokens a float", completion(max_tokens=5.5), "max_tokens", "valid integer"),
    ("max_tokens over the cap", completion(max_tokens=257), "max_tokens", "cap of 256"),
    ("huge max_tokens", completion(max_tokens=10**40), "max_tokens", "cap of 256"),
    ("unknown model", completion(model="gpt-4"), "model", "unknown model 'gpt-4'"),
    ("missing model", {"prompt": "x"}, "model", "Field required"),
    ("prompt longer than the context", completion(prompt=LONG), "prompt", "shorten the prompt"),
    ("prompt + max_tokens over the context", completion(prompt="word " * 40, max_tokens=200), "max_tokens",
     "ask for at most"),
    ("n > 1", completion(n=2), "n", "only n=1"),
    ("temperature too high", completion(temperature=3), "temperature", "less than or equal to 2"),
    ("temperature a string", completion(temperature="hot"), "temperature", "valid number"),
    ("top_p zero", completion(top_p=0), "top_p", "greater than 0"),
    ("stream not a boolean", completion(stream="yes"), "stream", "valid boolean"),
    ("seed too large", completion(seed=2**70), "seed", "less than or equal to"),
    ("too many stops", completion(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    ("empty stop", completion(stop=[""]), "stop", "non-empty"),
    ("stop a number", completion(stop=5), "stop", "non-empty string"),
    ("a batch of prompts", completion(prompt=["a", "b"]), "prompt", "one request per prompt"),
    ("empty prompt", completion(prompt=""), "prompt", "empty"),
    ("token id out of range", completion(prompt=[1, 2, 10**6]), "prompt", "token ids must be in"),
    ("token ids as floats", completion(prompt=[1.0, 2.0]), "prompt", "token ids"),
    ("nested junk as prompt", completion(prompt={"a": [{"b": None}]}), "prompt", "non-empty string"),
    ("logprobs", completion(logprobs=5), "logprobs", "not supported"),
    ("penalty", completion(presence_penalty=1.0), "presence_penalty", "not supported"),
    ("echo", completion(echo=True), "echo", "not supported"),
]
CHAT_CASES = [
    ("no messages", chat(messages=[]), "messages", "at least 1"),
    ("unknown role", chat(messages=[{"role": "tool", "content": "x"}]), "messages[0].role", "'user'"),
    ("image content", chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]),
     "messages[0].content", "text only"),
    ("messages not a list", chat(messages="hello"), "messages", "valid array"),
    ("chat over the context", chat(messages=[{"role": "user", "content": LONG}]), "messages", "shorten the prompt"),
    ("max_completion_tokens over the cap", chat(max_completion_tokens=1000), "max_tokens", "cap of 256"),
]


@pytest.mark.parametrize(("case", "body", "param", "fragment"), VALIDATION_CASES + CHAT_CASES,
                         ids=[c[0] for c in VALIDATION_CASES + CHAT_CASES])
def test_validation_422_names_the_field_and_the_fix(backend, make_app, case, body, param, fragment):
    app = make_app(backend)
    path = "/v1/chat/completions" if (case, body, param, fragment) in CHAT_CASES else "/v1/completions"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    error = assert_openai_error(call(app, "POST", path, content=content), 422, fragment)
    assert error["param"] == param
    assert metric(app, "llm_prompt_tokens_total") == 0, "nothing invalid reaches the model"


def test_body_over_the_limit_413_declared_or_chunked(backend, make_app):
    app = make_app(backend, max_body_bytes=1000)
    big = json.dumps(completion(prompt="x" * 2000)).encode()
    assert_openai_error(call(app, "POST", "/v1/completions", content=big), 413, "1000 bytes")

    async def chunks():  # no Content-Length: the limit must count what arrives
        for start in range(0, len(big), 100):
            yield big[start:start + 100]

    assert_openai_error(call(app, "POST", "/v1/completions", content=chunks()), 413)
    assert call(app, "POST", "/v1/completions", content=json.dumps(completion()).encode()).status_code == 200


def test_rate_limit_429_with_retry_after_per_key(backend, make_app):
    app = make_app(backend, rate_limit_rps=0.5, rate_limit_burst=2)
    assert [call(app, "GET", "/v1/models").status_code for _ in range(2)] == [200, 200]
    limited = call(app, "GET", "/v1/models")
    assert_openai_error(limited, 429, "retry after")
    assert int(limited.headers["retry-after"]) == 2, "(1 - ~0 tokens) / 0.5 per second, rounded up"
    assert call(app, "GET", "/v1/models", headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 200


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("k") for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire("k") == pytest.approx(0.5)
    now[0] = 0.5
    assert limiter.acquire("k") == 0 and limiter.acquire("k") == pytest.approx(0.5)
    assert limiter.acquire("other") == 0
    assert RateLimiter(rate=0, burst=1).acquire("k") == 0, "rate 0 turns the limit off"


def test_queue_full_503_with_retry_after(backend, make_app):
    app = make_app(SlowBackend(backend, 0.05), max_concurrent=1, max_queue=1, retry_after_s=3)
    responses = concurrently(app, *[completion(max_tokens=10, ignore_eos=True)] * 3)
    assert sorted(r.status_code for r in responses) == [200, 200, 503]
    busy = next(r for r in responses if r.status_code == 503)
    assert_openai_error(busy, 503, "busy", "retry after 3 s")
    assert busy.headers["retry-after"] == "3"
    assert metric(app, "llm_queue_depth") == 0 and metric(app, "llm_active_requests") == 0


def test_admission_hands_slots_over_and_never_leaks_them():
    async def scenario():
        admission = Admission(max_concurrent=1, max_queue=1, retry_after_s=1)
        await admission.acquire()
        waiter = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        assert admission.waiting == 1
        with pytest.raises(APIError) as full:
            await admission.acquire()
        assert full.value.status == 503
        admission.release()  # handed to the waiter...
        waiter.cancel()  # ...which gives up before it runs: the slot must be passed on, not lost
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (admission.active, admission.waiting) == (0, 0)
        await asyncio.wait_for(admission.acquire(), 1)
        admission.release()
        assert admission.active == 0

    asyncio.run(scenario())


def test_timeout_504_frees_the_slot(backend, make_app):
    app = make_app(SlowBackend(backend, 0.05), max_concurrent=1, request_timeout_s=1)
    assert_openai_error(call(app, "POST", "/v1/completions", json=completion(max_tokens=100, ignore_eos=True)),
                        504, "limit of 1 s")
    assert call(app, "POST", "/v1/completions", json=completion(max_tokens=2)).status_code == 200, "slot freed"
    stream = events(call(app, "POST", "/v1/completions", json=completion(max_tokens=100, ignore_eos=True,
                                                                          stream=True)))
    assert stream[-1]["error"]["code"] == "timeout" and "[DONE]" not in stream, "a stream ends with the error"
    assert metric(app, "llm_generations_total", reason="timeout") == 2
    assert metric(app, "llm_active_requests") == 0


class FailingBackend(SlowBackend):
    """Fails after two tokens, with a message that must not reach clients."""

    def stream(self, prompt_ids, params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        yield from list(self.inner.stream(prompt_ids, params, cancel))[:2]
        raise RuntimeError("secret internals at /srv/model.py line 42")


def test_backend_failure_500_without_details(backend, make_app):
    app = make_app(FailingBackend(backend, 0))
    error = assert_openai_error(call(app, "POST", "/v1/completions", json=completion()), 500, "server's log")
    assert "secret" not in json.dumps(error)
    stream = call(app, "POST", "/v1/chat/completions", json=chat(stream=True))
    assert events(stream)[-1]["error"]["code"] == "backend_error" and "secret" not in stream.text
    assert metric(app, "llm_generations_total", reason="error") == 2


def test_unknown_routes_and_methods(backend, make_app):
    app = make_app(backend)
    assert_openai_error(call(app, "GET", "/v2/engines"), 404, "no route GET /v2/engines", "/v1/completions")
    assert_openai_error(call(app, "GET", "/v1/completions"), 405, "method not allowed")
    assert_openai_error(call(app, "DELETE", "/v1/models"), 405)
    assert_openai_error(call(app, "GET", "/" + "a" * 5000), 404)


HOSTILE_BODIES = [
    b"", b"null", b"\xff\xfe\x00garbage", b'{"model": "tiny", "prompt": "\\ud800"}', b"[" * 10_000,
    b'{"model": "tiny", "prompt": "x", "max_tokens": 1e400}', b'{"model": "tiny", "prompt": "x", "temperature": NaN}',
    b'{"model": "tiny", "prompt": "x", "temperature": 1e308}', b'{"model": "tiny", "prompt": "x", "max_tokens": '
    + b"9" * 5000 + b"}", b'{"model": "tiny", "model": "tiny", "prompt": "x", "max_tokens": 2}',
    b'{"model": null, "prompt": null}', b'{"model": ["tiny"], "prompt": "x"}', b'{"model": "tiny", "prompt": [[[1]]]}',
    json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 2, "junk": {"a": [1, {"b": [None] * 100}]}}).encode(),
    json.dumps({"model": "tiny", "messages": [{"role": "user", "content": {"$gt": ""}}]}).encode(),
    json.dumps({"model": "tiny", "messages": [{"role": "user"}]}).encode(),
    json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x"}] * 600}).encode(),
]
UNICODE_PROMPTS = ["héllo wörld", "🙂🙃 emoji", "مرحبا بالعالم", "\u202eevil\u202c", "nul \x00 byte",
                   "日本語のテキスト"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_hostile_bodies_get_422_or_200_never_500(backend, make_app, path):
    app = make_app(backend, rate_limit_rps=0)
    for body in HOSTILE_BODIES:
        response = call(app, "POST", path, content=body)
        if response.status_code != 200:
            assert_openai_error(response, 422)
    for prompt in UNICODE_PROMPTS:
        request = completion(prompt=prompt) if path == "/v1/completions" else \
            chat(messages=[{"role": "user", "content": prompt}])
        assert call(app, "POST", path, json=request).status_code == 200, prompt
    assert metric(app, "llm_requests_total", route=path, status="500") == 0


# --- metrics and spans ------------------------------------------------------------------------------------------------
def test_metrics_read_back_after_requests(backend, make_app):
    app = make_app(backend)
    usages = [call(app, "POST", "/v1/completions", json=completion(max_tokens=n, ignore_eos=True)).json()["usage"]
              for n in (3, 5)]
    call(app, "POST", "/v1/completions", json=completion(max_tokens=-1))
    call(app, "GET", "/v1/models", headers=None)
    call(app, "GET", "/no/such/path/1")
    call(app, "GET", "/no/such/path/2")
    assert metric(app, "llm_requests_total", route="/v1/completions", status="200") == 2
    assert metric(app, "llm_requests_total", route="/v1/completions", status="422") == 1
    assert metric(app, "llm_requests_total", route="/v1/models", status="401") == 1
    assert metric(app, "llm_requests_total", route="other", status="404") == 2, "unknown paths share one label"
    assert metric(app, "llm_generated_tokens_total") == sum(u["completion_tokens"] for u in usages) == 8
    assert metric(app, "llm_prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert metric(app, "llm_time_to_first_token_seconds_count") == 2
    assert metric(app, "llm_decode_tokens_per_second_count") == 2
    assert metric(app, "llm_generations_total", reason="length") == 2
    # one forward pass per token (the prefill gives the first, each later one the next): 3 + 5, batch size 1 each
    assert metric(app, "llm_batch_size_count") == 8 and metric(app, "llm_batch_size_sum") == 8
    assert metric(app, "llm_request_latency_seconds_count", route="/v1/completions") == 3
    other = make_app(backend)
    assert metric(other, "llm_requests_total", route="/v1/completions", status="200") == 0, "a registry per app"


def test_opentelemetry_spans_tokenize_queue_prefill_decode(backend, make_app):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = make_app(backend, tracer=provider.get_tracer("test"))
    for path, request in [("/v1/chat/completions", chat(max_tokens=6, ignore_eos=True, stream=True)),
                          ("/v1/completions", completion(max_tokens=6, ignore_eos=True))]:
        exporter.clear()
        assert call(app, "POST", path, json=request).status_code == 200
        spans = {span.name: span for span in exporter.get_finished_spans()}
        root = spans["chat.completions" if "chat" in path else "completions"]
        assert set(spans) == {root.name, "tokenize", "queue", "prefill", "decode"}
        for name in ("tokenize", "queue", "prefill", "decode"):
            assert spans[name].parent.span_id == root.context.span_id, name
        assert spans["tokenize"].end_time <= spans["queue"].start_time
        assert spans["prefill"].end_time <= spans["decode"].start_time <= root.end_time
        assert spans["decode"].attributes["completion_tokens"] == 6
        assert spans["tokenize"].attributes["prompt_tokens"] == spans["prefill"].attributes["prompt_tokens"]
    exporter.clear()
    call(app, "POST", "/v1/completions", json=completion(model="nope"))
    assert not exporter.get_finished_spans(), "rejected before any work: no spans"


# --- decode tokens per second: one observation per generation of two tokens or more ---------------------------------
class InstantBackend:
    """Makes all its tokens at once: they reach the event loop together, within one iteration of it."""

    name, context_length, vocab_size, step_observer = "instant", 512, 256, None

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def chat_prompt_ids(self, messages) -> list[int]:
        return self.encode(messages[-1]["content"])

    def stream(self, prompt_ids, params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        yield from [ord("a")] * params.max_tokens


def test_decode_rate_observed_once_per_generation_of_two_tokens_or_more_under_uvloop():
    """uvloop's clock (`loop.time()`) is cached per loop iteration in whole milliseconds: a rate timed with it saw
    0 s between tokens that arrived together and skipped them (9.3 once counted 20, 33 or 40 of 46 requests)."""
    pytest.importorskip("uvloop")
    import uvicorn

    app = create_app(InstantBackend(), ServerSettings(rate_limit_rps=0, max_concurrent=4))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, loop="uvloop", log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        sizes = [1, 2, 3, 5, 8] * 6
        with httpx.Client(base_url=base, timeout=30) as http:
            for i, n in enumerate(sizes):
                reply = http.post("/v1/completions", json={"model": "instant", "prompt": "x", "max_tokens": n,
                                                           "stream": bool(i % 2)})
                assert reply.status_code == 200
            samples = {s.name: s.value for f in text_string_to_metric_families(http.get("/metrics").text)
                       for s in f.samples if not s.labels}
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert samples["llm_time_to_first_token_seconds_count"] == len(sizes)
    assert samples["llm_decode_tokens_per_second_count"] == sum(n >= 2 for n in sizes)  # 24, not fewer
    assert samples["llm_generated_tokens_total"] == sum(sizes)


# --- request ids ---------------------------------------------------------------------------------------------------
@pytest.fixture
def json_log():
    """The package's log lines (llm_roadmap.serving and .access), as parsed JSON, while the test runs."""
    import io
    import logging

    stream, package = io.StringIO(), logging.getLogger("llm_roadmap.serving")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    package.addHandler(handler)
    level = package.level
    package.setLevel(logging.INFO)  # (setLevel, not .level =: loggers cache whether a level is enabled)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    package.removeHandler(handler)
    package.setLevel(level)


def test_request_ids_accepted_when_safe_replaced_otherwise():
    assert accept_request_id("req-01.A:b_c") == "req-01.A:b_c"
    for bad in (None, "", "has space", 'quote"', "x" * 65, "é", "a\nfake log line", "{}"):
        fresh = accept_request_id(bad)
        assert fresh != bad and len(fresh) == 32 and int(fresh, 16) >= 0
    assert accept_request_id(None) != accept_request_id(None), "a new id for each request"


def test_request_id_echoed_logged_and_on_the_span(backend, make_app, json_log):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = make_app(backend, tracer=provider.get_tracer("test"))
    mine = call(app, "POST", "/v1/completions", headers={**AUTH, "X-Request-ID": "client-42"}, json=completion())
    assert mine.status_code == 200 and mine.headers["x-request-id"] == "client-42"
    unsafe = call(app, "GET", "/v1/models", headers={**AUTH, "X-Request-ID": "bad id " + "x" * 80})
    fresh = unsafe.headers["x-request-id"]
    assert len(fresh) == 32 and "bad" not in fresh
    refused = call(app, "GET", "/v1/models", headers={"X-Request-ID": "no-key-1"})  # errors carry it too
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "no-key-1"
    streamed = call(app, "POST", "/v1/completions", headers={**AUTH, "X-Request-ID": "stream-7"},
                    json=completion(stream=True))
    assert streamed.headers["x-request-id"] == "stream-7"
    access = [e for e in json_log() if e["logger"] == "llm_roadmap.serving.access"]
    assert [(e["request_id"], e["status"], e["path"]) for e in access] == [
        ("client-42", 200, "/v1/completions"), (fresh, 200, "/v1/models"), ("no-key-1", 401, "/v1/models"),
        ("stream-7", 200, "/v1/completions")]
    assert all(e["latency_s"] >= 0 and e["method"] in ("GET", "POST") for e in access)
    roots = {s.attributes["request_id"] for s in exporter.get_finished_spans() if s.name == "completions"}
    assert roots == {"client-42", "stream-7"}
    assert request_id_var.get() == "-", "the id does not outlive its request"


def test_server_errors_are_logged_with_the_request_id_never_shown(backend, make_app, json_log):
    app = make_app(FailingBackend(backend, 0))
    failed = call(app, "POST", "/v1/completions", headers={**AUTH, "X-Request-ID": "fail-1"}, json=completion())
    assert failed.status_code == 500 and failed.headers["x-request-id"] == "fail-1"
    errors = [e for e in json_log() if e["level"] == "ERROR"]
    assert [e["request_id"] for e in errors] == ["fail-1"] and "secret internals" in errors[0]["error"]
    # an error nothing in the app expected (here: the tokenizer raises) still gets an OpenAI-shaped 500, with the id
    broken = TransformersBackend(backend.model, backend.tokenizer, name=MODEL)
    broken.encode = lambda text: 1 / 0
    crash = call(make_app(broken), "POST", "/v1/completions", headers={**AUTH, "X-Request-ID": "crash-1"},
                 json=completion())
    error = assert_openai_error(crash, 500, "crash-1")
    assert error["type"] == "server_error" and crash.headers["x-request-id"] == "crash-1"
    logged = [e for e in json_log() if e["request_id"] == "crash-1"]
    assert [e["level"] for e in logged] == ["ERROR", "INFO"] and "ZeroDivisionError" in logged[0]["traceback"]
    assert logged[1]["status"] == 500


class SharedAttribute:
    """The broken twin of a ContextVar: one value that every request overwrites."""

    value = "-"

    def set(self, value: str) -> None:
        self.value = value

    def get(self) -> str:
        return self.value


@pytest.mark.parametrize("twin", [False, True], ids=["contextvar", "shared-attribute-twin"])
def test_concurrent_requests_keep_their_own_ids(twin):
    import io
    import logging
    import random

    store = SharedAttribute() if twin else request_id_var
    stream, inner = io.StringIO(), logging.getLogger("test.inner")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(store.get))
    inner.addHandler(handler)
    inner.setLevel(logging.INFO)
    delays = random.Random(0)

    async def app(scope, receive, send):  # logs from deep inside, after a random wait, as a model call would
        await asyncio.sleep(delays.uniform(0, 0.02))
        inner.info("inside", extra={"fields": {"sent": scope["path"][1:]}})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def go():
        middleware = RequestContext(app, store=store, access_log=logging.getLogger("test.access"))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=middleware), base_url="http://t")
        async with client:
            await asyncio.gather(*(client.get(f"/r{i}", headers={"X-Request-ID": f"r{i}"}) for i in range(12)))

    try:
        asyncio.run(go())
    finally:
        inner.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    wrong = sum(e["request_id"] != e["sent"] for e in lines)
    assert len(lines) == 12
    assert (wrong > 0) if twin else (wrong == 0), wrong


# --- device and dtype -----------------------------------------------------------------------------------------------
def test_device_and_dtype_flags_resolve_or_fail_clearly(capsys):
    from llm_roadmap.serving.__main__ import main, resolve_placement
    from llm_roadmap.serving.backends import check_device

    check_device("cpu")
    for bad, fragment in [("tpu", "unknown device"), ("cuda:99", "CUDA GPU"), ("gpu", "unknown device")]:
        with pytest.raises(ValueError, match=fragment):
            check_device(bad)
    expected = ("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) \
        if torch.cuda.is_available() else ("cpu", torch.float32)
    assert resolve_placement("auto", "auto") == expected
    assert resolve_placement("cpu", "bfloat16") == ("cpu", torch.bfloat16)
    assert resolve_placement("cpu", "auto") == ("cpu", torch.float32)
    assert main(["--device", "cuda:99"]) == 2  # refused before any model is loaded
    assert "cuda:99" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dtype", "float8"])  # argparse's choices


def test_backend_in_another_dtype_reports_it_and_samples(backend, make_app):
    half = TransformersBackend(copy.deepcopy(backend.model), backend.tokenizer, name=MODEL, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and backend.dtype == torch.float32
    app = make_app(half)
    card = call(app, "GET", f"/v1/models/{MODEL}").json()
    assert (card["device"], card["dtype"]) == ("cpu", "bfloat16")
    assert call(app, "GET", "/health/ready", headers=None).json() == {"status": "ready", "model": MODEL,
                                                                     "device": "cpu", "dtype": "bfloat16"}
    sampled = call(app, "POST", "/v1/completions", json=completion(temperature=1.0, seed=3, ignore_eos=True))
    assert sampled.status_code == 200 and sampled.json()["usage"]["completion_tokens"] == 8


# --- assert_stopped: this server's processes, and a port that a restarted server may hold -------------------------
LISTENER = """
import os, signal, socket, sys, time
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
if sys.argv[2] == "fork" and os.fork() == 0:  # a child that inherits the listening socket and outlives its parent
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
    os._exit(0)
print(sock.getsockname()[1], flush=True)
time.sleep(60)
"""


def listener(tmp_path, port: int = 0, fork: bool = False):
    """A stand-in server: a process listening on 127.0.0.1:port, wrapped in the package's ServerProcess."""
    import subprocess
    import sys

    from llm_roadmap.serving.process import ServerProcess

    process = subprocess.Popen([sys.executable, "-c", LISTENER, str(port), "fork" if fork else "-"],
                               stdout=subprocess.PIPE, text=True)
    bound = int(process.stdout.readline())
    process.stdout.close()
    workdir = tmp_path / f"server-{process.pid}"
    workdir.mkdir()
    return ServerProcess(process, "127.0.0.1", bound, None, workdir, stop_timeout_s=10)


def test_assert_stopped_accepts_a_successor_on_the_same_port(tmp_path):
    from llm_roadmap.serving.process import assert_stopped, port_is_free

    old = listener(tmp_path)
    with pytest.raises(AssertionError, match="still running"):
        assert_stopped(old)
    old.stop()
    assert_stopped(old)  # gone, port closed
    new = listener(tmp_path, port=old.port)  # restarted on the same port
    try:
        assert not port_is_free(old.port), "(the twin: a port-only check would blame the old server)"
        assert_stopped(old)  # the port is held, but by another live process
        with pytest.raises(AssertionError, match="still running"):
            assert_stopped(new)
    finally:
        new.stop()
    assert_stopped(new)


def test_assert_stopped_fails_while_a_child_of_the_server_holds_its_port(tmp_path):
    import os
    import signal

    import psutil

    from llm_roadmap.serving.process import assert_stopped

    server = listener(tmp_path, fork=True)
    children = psutil.Process(server.pid).children()
    try:
        assert len(children) == 1
        server.stop()
        assert not server.is_running()
        with pytest.raises(AssertionError, match=rf"processes \[{children[0].pid}\] still exist"):
            assert_stopped(server)
    finally:
        for child in children:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(5)
    assert_stopped(server)
