"""The service as a real process on 127.0.0.1, called by the official openai client: outputs against Hugging Face
`generate`, streaming, error statuses, hostile HTTP, a client that disconnects, and a graceful shutdown with a
request in flight, after which the process and its port are checked gone (as lesson 1.4 checks its servers).

One server for the module (starting one costs seconds of imports); the shutdown test stops it, so it runs last.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from test_serving import hf_greedy  # tests/ is on sys.path (pytest rootdir): one reference for both files

from llm_roadmap.serving.backends import TransformersBackend, build_tiny_test_model
from llm_roadmap.serving.process import ServerProcess, assert_stopped, port_is_free, start_server

MODEL = "tiny"
KEY, LIMITED_KEY = "live-key-main", "live-key-limited"
TOKEN_DELAY_MS = 10  # so that a 200-token stream takes ~2 s: long enough to disconnect from or shut down under
RATE_BURST = 40


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_test_model(tmp_path_factory.mktemp("tiny-live"))


@pytest.fixture(scope="module")
def reference(model_dir) -> TransformersBackend:
    """The same weights, loaded here, for the independent reference (Hugging Face `generate`)."""
    return TransformersBackend(model_dir, name=MODEL)


@pytest.fixture(scope="module")
def server(model_dir):
    handle = start_server(model_dir, api_keys=[KEY, LIMITED_KEY], model_name=MODEL, max_concurrent=1, max_queue=4,
                          token_delay_ms=TOKEN_DELAY_MS, rate_limit_rps=1, rate_limit_burst=RATE_BURST,
                          request_timeout_s=30, shutdown_timeout_s=15, torch_threads=1, log_level="info",
                          device="cpu", dtype="float32")  # where the reference runs: the same numbers
    yield handle
    handle.stop()
    assert_stopped(handle)


@pytest.fixture
def live(server: ServerProcess) -> ServerProcess:
    if not server.is_running():
        pytest.fail("the module's server was stopped by an earlier test (the shutdown test must run last)")
    return server


@pytest.fixture
def client(live) -> OpenAI:
    with OpenAI(base_url=live.openai_base_url, api_key=live.api_key, max_retries=0, timeout=30) as c:
        yield c




def scrape(server: ServerProcess, name: str, **labels) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


MESSAGES = [{"role": "user", "content": "Explain dictionaries."}]


def test_models_list(live, client):
    assert [model.id for model in client.models.list().data] == [MODEL]
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and (card.device, card.dtype) == ("cpu", "float32")  # (extra fields: the client keeps)
    ready = httpx.get(f"{live.base_url}/health/ready", timeout=10).json()
    assert ready == {"status": "ready", "model": MODEL, "device": "cpu", "dtype": "float32"}


def test_request_id_from_client_to_the_json_log(live, client):
    answer = client.completions.with_raw_response.create(model=MODEL, prompt="x", max_tokens=2,
                                                          extra_headers={"X-Request-ID": "live-ok-1"})
    assert answer.headers["x-request-id"] == "live-ok-1"
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2, extra_headers={"X-Request-ID": "live-422"})
    assert refused.value.request_id == "live-422"  # what the official client shows for a failed call
    generated = client.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert len(generated._request_id) == 32, "an id the server made up"
    deadline = time.monotonic() + 5  # the log line is written once the response is sent
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in live.log().splitlines() if line.startswith("{")]
        access = {e["request_id"]: e for e in lines if e["logger"] == "llm_roadmap.serving.access"}
        if {"live-ok-1", "live-422", generated._request_id} <= set(access):
            break
        time.sleep(0.1)
    assert access["live-ok-1"]["status"] == 200 and access["live-422"]["status"] == 422
    assert access[generated._request_id]["path"] == "/v1/completions"
    assert all(line.startswith("{") for line in live.log().splitlines()), "every line of the server's log is JSON"


def test_openai_client_gets_hf_generates_text(client, reference):
    prompt = "import os\n"
    completion = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, temperature=0,
                                           extra_body={"ignore_eos": True})
    prompt_ids = reference.encode(prompt)
    assert completion.choices[0].text == hf_greedy(reference, prompt_ids, 20, ignore_eos=True)
    assert completion.usage.completion_tokens == 20 and completion.choices[0].finish_reason == "length"
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0)
    chat_ids = reference.chat_prompt_ids(MESSAGES)
    assert chat.usage.prompt_tokens == len(chat_ids)
    assert chat.choices[0].message.content == hf_greedy(reference, chat_ids, 20)


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_streaming_token_by_token_equals_non_streaming(client, kind):
    common = dict(model=MODEL, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    if kind == "chat":
        whole = client.chat.completions.create(messages=MESSAGES, **common).choices[0].message.content
        chunks = list(client.chat.completions.create(messages=MESSAGES, stream=True,
                                                     stream_options={"include_usage": True}, **common))
        pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    else:
        whole = client.completions.create(prompt="class A:", **common).choices[0].text
        chunks = list(client.completions.create(prompt="class A:", stream=True, stream_options={"include_usage": True},
                                                **common))
        pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == whole
    assert sum(1 for p in pieces if p) > 5, "streamed piece by piece"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 24


def test_same_request_same_text(client):
    def text(**extra):
        return client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12,
                                              extra_body={"ignore_eos": True}, **extra).choices[0].message.content

    assert text(temperature=0) == text(temperature=0)
    assert text(temperature=1.0, seed=7) == text(temperature=1.0, seed=7)


def test_error_statuses_through_the_openai_client(live, client):
    def no_traceback(exc: openai.APIStatusError) -> dict:
        assert "Traceback" not in exc.response.text and ".py" not in exc.response.text
        return exc.body

    missing = httpx.post(f"{live.openai_base_url}/completions", json={"model": MODEL, "prompt": "x"}, timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    with OpenAI(base_url=live.openai_base_url, api_key="wrong-key", max_retries=0) as wrong:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            wrong.models.list()
    assert no_traceback(denied.value)["code"] == "invalid_api_key"
    with pytest.raises(openai.UnprocessableEntityError) as unknown:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert "unknown model 'gpt-4'" in no_traceback(unknown.value)["message"]
    with pytest.raises(openai.UnprocessableEntityError) as negative:
        client.completions.create(model=MODEL, prompt="x", max_tokens=-1)
    assert no_traceback(negative.value)["param"] == "max_tokens"
    with pytest.raises(openai.UnprocessableEntityError) as too_long:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 300}])
    assert no_traceback(too_long.value)["code"] == "context_length_exceeded"
    with pytest.raises(openai.UnprocessableEntityError) as capped:
        client.completions.create(model=MODEL, prompt="x", max_tokens=100_000)
    assert "cap of 256" in no_traceback(capped.value)["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    too_big = httpx.post(f"{live.openai_base_url}/completions", headers={"Authorization": f"Bearer {KEY}"},
                         content=b"x" * 70_000, timeout=10)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    with OpenAI(base_url=live.openai_base_url, api_key=LIMITED_KEY, max_retries=0) as limited:
        statuses = []
        for _ in range(2 * RATE_BURST):
            try:
                limited.models.list()
                statuses.append(200)
            except openai.RateLimitError as exc:
                statuses.append(429)
                retry_after = int(exc.response.headers["retry-after"])
                break
    assert statuses[-1] == 429 and retry_after >= 1 and len(statuses) >= RATE_BURST
    assert client.models.list().data, "the other key has its own bucket"


def raw_http(server: ServerProcess, data: bytes) -> bytes:
    """Send bytes on a fresh connection; return what comes back before the server closes it (or 1 s passes)."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(data)
        sock.settimeout(1)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except (TimeoutError, ConnectionResetError):  # still waiting for us / refused us outright
            pass
    return reply


def test_malformed_and_hostile_http(live):
    assert raw_http(live, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw_http(live, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n") \
        .startswith(b"HTTP/1.1 400")
    header_flood = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"a" * 1_000_000 + b"\r\n\r\n"
    assert not raw_http(live, header_flood).startswith(b"HTTP/1.1 200")
    auth = {"Authorization": f"Bearer {KEY}"}
    lying = raw_http(live, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                     + b"\r\nContent-Length: 10\r\nConnection: close\r\n\r\n{}")  # promises 10 bytes, sends 2
    assert lying == b"" or lying.startswith(b"HTTP/1.1 4")
    bad_json = httpx.post(f"{live.openai_base_url}/chat/completions", headers=auth, content=b"{\"model\": ",
                          timeout=10)
    assert bad_json.status_code == 422 and "not valid JSON" in bad_json.json()["error"]["message"]
    traversal = httpx.get(f"{live.base_url}/v1/../../etc/passwd", timeout=10)
    assert traversal.status_code == 404 and "root:" not in traversal.text
    assert httpx.get(f"{live.base_url}/health/ready", timeout=10).status_code == 200, "still serving"


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
def test_client_disconnect_frees_its_slot(live, client, stream):
    cancelled_before = scrape(live, "llm_generations_total", reason="cancelled")
    tokens_before = scrape(live, "llm_generated_tokens_total")
    request = {"model": MODEL, "prompt": "def main():", "max_tokens": 200, "temperature": 0, "stream": stream,
               "ignore_eos": True}  # ~2 s of tokens; the client hangs up long before
    url, auth = f"{live.openai_base_url}/completions", {"Authorization": f"Bearer {KEY}"}
    if stream:  # hang up after three events
        with httpx.Client(timeout=10) as http, http.stream("POST", url, json=request, headers=auth) as response:
            received = []
            for line in response.iter_lines():
                received += [line] if line.startswith("data: ") else []
                if len(received) == 3:
                    break
        assert len(received) == 3
    else:  # a client that gives up waiting (its read timeout) and closes the connection
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=request, headers=auth, timeout=httpx.Timeout(10, read=0.3))
    # max_concurrent=1: this request gets the slot only once the abandoned one has released it; had that one run on,
    # all its 200 tokens would be generated before this request's first
    after = client.completions.create(model=MODEL, prompt="x", max_tokens=2, temperature=0)
    assert after.choices[0].finish_reason in ("length", "stop")
    assert scrape(live, "llm_generations_total", reason="cancelled") == cancelled_before + 1
    generated = scrape(live, "llm_generated_tokens_total") - tokens_before - after.usage.completion_tokens
    assert generated < 100, f"the abandoned request generated {generated:.0f} of its 200 tokens"
    assert scrape(live, "llm_active_requests") == 0 and scrape(live, "llm_queue_depth") == 0


def test_a_client_that_leaves_the_queue_frees_its_place(live):
    url, auth = f"{live.openai_base_url}/completions", {"Authorization": f"Bearer {KEY}"}
    holder = {"model": MODEL, "prompt": "a", "max_tokens": 250, "stream": True, "ignore_eos": True}  # > 2.5 s
    prompt_tokens_before = scrape(live, "llm_prompt_tokens_total")
    with httpx.Client(timeout=10) as http, http.stream("POST", url, json=holder, headers=auth) as response:
        lines = response.iter_lines()  # (keep the iterator: a dropped one closes the connection)
        assert next(lines).startswith("data: ")  # the holder has the only slot (max_concurrent=1)
        with pytest.raises(httpx.ReadTimeout):  # queued behind it; gives up after 0.3 s
            httpx.post(url, json={"model": MODEL, "prompt": "b" * 50, "max_tokens": 5}, headers=auth,
                       timeout=httpx.Timeout(10, read=0.3))
        left = time.monotonic() + 1.5  # the server polls for disconnects every 0.25 s
        while scrape(live, "llm_queue_depth") > 0 and time.monotonic() < left:
            time.sleep(0.05)
        assert scrape(live, "llm_queue_depth") == 0, "the queued request left while the holder still runs"
        assert scrape(live, "llm_active_requests") == 1, "(the holder)"
    assert scrape(live, "llm_prompt_tokens_total") == prompt_tokens_before + 1, "the leaver was never admitted"


def test_metrics_count_live_requests_by_status(live, client):
    before = scrape(live, "llm_requests_total", route="/v1/completions", status="422")
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)
    assert scrape(live, "llm_requests_total", route="/v1/completions", status="422") == before + 1
    assert scrape(live, "llm_time_to_first_token_seconds_count") > 0


def test_the_engine_behind_the_cli_serves_hf_greedy_text_to_concurrent_clients(model_dir, reference):
    """`--engine` (lesson 4.4's engine, continuous batching): concurrent requests, each equal to HF `generate`."""
    from concurrent.futures import ThreadPoolExecutor

    handle = start_server(model_dir, api_keys=[KEY], model_name=MODEL, engine=True, torch_threads=1,
                          device="cpu", dtype="float32")
    try:
        prompts = ["import os\n", "def f(x):", "class A:", "# a comment"]
        with OpenAI(base_url=handle.openai_base_url, api_key=KEY, max_retries=0, timeout=60) as c:
            with ThreadPoolExecutor(len(prompts)) as pool:
                texts = list(pool.map(lambda p: c.completions.create(
                    model=MODEL, prompt=p, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
                ).choices[0].text, prompts))
        for prompt, text in zip(prompts, texts):
            assert text == hf_greedy(reference, reference.encode(prompt), 12, ignore_eos=True), prompt
        assert "with EngineBackend on" in handle.log(), "the flag did not reach the backend"
    finally:
        handle.stop()
    assert_stopped(handle)


def test_graceful_shutdown_finishes_the_request_in_flight(server, reference):
    """Last test: SIGTERM while a stream is running: it completes, new connections are refused, the process exits 0,
    and the port is free. A client that connected just before the SIGTERM and sends its request just after is
    answered, not reset (uvicorn alone closes such a connection as idle)."""
    assert server.is_running()
    early = socket.create_connection((server.host, server.port), timeout=10)  # connected, request not sent yet
    time.sleep(0.3)  # (accepted by the server's event loop by now)
    request = {"model": MODEL, "prompt": "for i in", "max_tokens": 60, "temperature": 0, "stream": True,
               "ignore_eos": True}  # ~0.6 s of tokens
    events, refused_while_in_flight = [], []

    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{server.openai_base_url}/completions", json=request,
                         headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 2:  # in flight: ask the server to stop, then check it takes no new connections
                    server.terminate()
                    time.sleep(0.2)
                    early.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                                  + b"\r\nConnection: close\r\n\r\n")
                    watcher = threading.Thread(target=lambda: refused_while_in_flight.append(
                        _refused_within(server, seconds=5)))
                    watcher.start()
    watcher.join()
    with early:
        reply = b""
        while chunk := early.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and MODEL.encode() in reply, reply[:200]
    assert events[-1] == "[DONE]", "the in-flight stream was finished, not cut"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert text == hf_greedy(reference, reference.encode("for i in"), 60, ignore_eos=True)
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    assert refused_while_in_flight == [True], "new connections are refused once shutdown starts"
    assert server.stop() == 0, f"graceful exit; log:\n{server.log()[-2000:]}"
    assert_stopped(server)
    assert port_is_free(server.port)


def _refused_within(server: ServerProcess, seconds: float) -> bool:
    """True once a connection attempt is refused while the server process still runs (it is finishing a request)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_is_free(server.port, server.host, timeout_s=0.5):
            return server.is_running()
        time.sleep(0.05)
    return False
