"""llm_roadmap.engine: lesson 4.4's mini engine in the package, proven equal to the notebook's teaching copy.

Lesson 4.4 writes the engine in cells starting `# teaching-copy: engine`; they read the notebook's model through
globals (`model`, `N_LAYER`, ..., `dtype`, `device`), which these tests supply. Then: the package and the copy give
the same block tables, attention, schedules and tokens; the engine's greedy outputs equal Hugging Face `generate`
(GPT-2 and a Llama with grouped-query attention, float64 so that "equal" means equal); block accounting; the request
stream driver against closed forms; clear errors for requests that can never be served.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from llm_roadmap import engine as pkg

NOTEBOOK = Path(__file__).resolve().parents[1] / "phase04_efficient" / "04_serving_like_vllm.ipynb"
MARKER = "# teaching-copy: engine"


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)  # std 0.3 as in 4.4: sharp attention, so a misread context changes the tokens
    config = GPT2Config(vocab_size=97, n_positions=256, n_embd=32, n_layer=2, n_head=4, initializer_range=0.3,
                        bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(config).to(torch.float64).eval()


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                         initializer_range=0.3, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return LlamaForCausalLM(config).to(torch.float64).eval()


def load_engine_copy(model) -> types.ModuleType:
    """Execute 4.4's teaching-copy cells in a fresh module whose globals hold the notebook's model and its sizes."""
    cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells
             if c.cell_type == "code" and c.source.startswith(MARKER)]
    assert cells, f"{NOTEBOOK.name} has no cell starting with {MARKER!r}"
    module = types.ModuleType("teaching_copy_engine")
    c = model.config
    module.__dict__.update(model=model, N_LAYER=c.n_layer, N_HEAD=c.n_head, N_EMBD=c.n_embd, VOCAB=c.vocab_size,
                           HEAD_DIM=c.n_embd // c.n_head, dtype=torch.float64, device="cpu")
    sys.modules[module.__name__] = module  # dataclasses look their class's module up in sys.modules
    try:
        exec(compile("\n\n".join(cells), str(NOTEBOOK), "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: thread hand-offs cost more than they save on a shared machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gpt2():
    return tiny_gpt2()


@pytest.fixture(scope="module")
def nb(gpt2):
    return load_engine_copy(gpt2)


def make_requests(n: int, vocab: int, seed: int, max_prompt: int = 20, max_new: int = 24):
    rng = np.random.default_rng(seed)
    return [pkg.Request(i, rng.integers(0, vocab, int(rng.integers(2, max_prompt))).tolist(),
                        int(rng.integers(1, max_new))) for i in range(n)]


def hf_greedy(model, prompt, n_new):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_teaching_copy_defines_the_engine(nb):
    names = ["masked_attention", "run_blocks", "Request", "Scheduler", "BlockPool", "BlockManager", "paged_attention",
             "PagedCache", "PagedKV", "StaticScheduler", "MiniEngine"]
    missing = [name for name in names if not hasattr(nb, name)]
    assert not missing, f"the teaching-copy cells no longer define {missing}"


def test_forward_equals_the_teaching_copy_and_hf(nb, gpt2):
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(30).expand(2, -1)
    with torch.no_grad():
        ours = pkg.ModelAdapter(gpt2).forward(ids, positions, lambda layer, q, k, v: nb.causal_attend(layer, q, k, v))
        theirs = nb.run_blocks(ids, positions, nb.causal_attend)
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
        torch.testing.assert_close(ours, gpt2(ids).logits, atol=1e-10, rtol=0)


def test_block_manager_equals_the_teaching_copy(nb):
    rng = np.random.default_rng(0)
    ours, theirs = pkg.BlockManager(40, 4, shuffle_seed=3), nb.BlockManager(40, 4, shuffle_seed=3)
    live, next_seq = [], 0
    for _ in range(300):  # random appends, forks (shared blocks, so copy-on-write happens) and frees
        action = rng.integers(0, 4)
        if action == 0 or not live:
            live.append(next_seq)
            next_seq += 1
            n = int(rng.integers(1, 9))
            assert ours.append_slots(live[-1], n) == theirs.append_slots(live[-1], n)
        elif action == 1:
            seq, n = live[int(rng.integers(len(live)))], int(rng.integers(1, 6))
            assert ours.append_slots(seq, n) == theirs.append_slots(seq, n)
        elif action == 2:
            parent = live[int(rng.integers(len(live)))]
            ours.fork(parent, next_seq)
            theirs.tables[next_seq], theirs.lengths[next_seq] = list(theirs.tables[parent]), theirs.lengths[parent]
            for block in theirs.tables[next_seq]:  # 4.4's fork(manager, parent, child), a function in its cell
                theirs.ref[block] += 1
            live.append(next_seq)
            next_seq += 1
        else:
            seq = live.pop(int(rng.integers(len(live))))
            ours.free_seq(seq)
            theirs.free_seq(seq)
        if ours.used_blocks() > 30:  # stay clear of MemoryError, and test it separately
            for seq in live:
                ours.free_seq(seq)
                theirs.free_seq(seq)
            live = []
        assert (ours.tables, ours.lengths, ours.ref, ours.free) == (theirs.tables, theirs.lengths, theirs.ref,
                                                                     theirs.free)
    with pytest.raises(MemoryError):
        pkg.BlockManager(2, 4).append_slots("s", 9)


def test_paged_attention_equals_the_teaching_copy_and_sdpa(nb):
    gen = torch.Generator().manual_seed(2)
    manager, lengths, bs = pkg.BlockManager(32, 4, shuffle_seed=1), [9, 1, 16, 13], 4
    k_cache = torch.zeros(32 * bs, 2, 8, dtype=torch.float64)
    v_cache = torch.zeros_like(k_cache)
    ks = [torch.randn(n, 2, 8, generator=gen, dtype=torch.float64) for n in lengths]
    vs = [torch.randn(n, 2, 8, generator=gen, dtype=torch.float64) for n in lengths]
    for seq, (k, v) in enumerate(zip(ks, vs)):
        slots, _ = manager.append_slots(seq, len(k))
        k_cache[slots], v_cache[slots] = k, v
    tables, query_pos = [manager.tables[s] for s in range(4)], torch.tensor(lengths)[:, None] - 1
    q = torch.randn(4, 2, 1, 8, generator=gen, dtype=torch.float64)
    ours = pkg.paged_attention(q, k_cache, v_cache, tables, lengths, query_pos, bs)
    assert torch.equal(ours, nb.paged_attention(q, k_cache, v_cache, tables, lengths, query_pos, bs))
    q4 = torch.randn(4, 4, 1, 8, generator=gen, dtype=torch.float64)  # 4 query heads over 2 KV heads (GQA)
    grouped = pkg.paged_attention(q4, k_cache, v_cache, tables, lengths, query_pos, bs)
    for seq, (k, v) in enumerate(zip(ks, vs)):
        ref = torch.nn.functional.scaled_dot_product_attention(q4[seq:seq + 1], k.transpose(0, 1)[None],
                                                               v.transpose(0, 1)[None], enable_gqa=True)
        torch.testing.assert_close(grouped[seq:seq + 1], ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("policy", ["Scheduler", "StaticScheduler"])
def test_engine_equals_the_teaching_copy(nb, gpt2, policy):
    requests = make_requests(16, 97, seed=4)
    ours = pkg.MiniEngine(gpt2, num_blocks=60, block_size=4, max_batch=6, policy=getattr(pkg, policy))
    theirs = nb.MiniEngine(num_blocks=60, block_size=4, max_batch=6, policy=getattr(nb, policy))
    for r in requests:
        ours.add(pkg.Request(r.rid, r.prompt, r.max_new))
        theirs.scheduler.add(nb.Request(r.rid, r.prompt, r.max_new))
    while theirs.scheduler.waiting or theirs.scheduler.running:  # lockstep: same batch, same tables, same cache
        ours.step()
        theirs.step()
        assert [r.rid for r in ours.scheduler.running] == [r.rid for r in theirs.scheduler.running]
        assert ours.kv.manager.tables == theirs.kv.manager.tables
        assert torch.equal(ours.kv.k, theirs.kv.k) and torch.equal(ours.kv.v, theirs.kv.v)
    assert not ours.busy
    assert ours.finished == theirs.finished and ours.batch_sizes == theirs.batch_sizes
    assert ours.kv.manager.used_blocks() == 0


def test_the_lockstep_comparison_has_teeth(nb, gpt2):
    """A planted difference (the copy one batch slot smaller) shows up in the schedule and the outputs' timing."""
    requests = make_requests(20, 97, seed=5)
    ours = pkg.MiniEngine(gpt2, num_blocks=60, block_size=4, max_batch=6)
    theirs = nb.MiniEngine(num_blocks=60, block_size=4, max_batch=5)
    ours.run(pkg.Request(r.rid, r.prompt, r.max_new) for r in requests)
    for r in requests:
        theirs.scheduler.add(nb.Request(r.rid, r.prompt, r.max_new))
    while theirs.scheduler.waiting or theirs.scheduler.running:
        theirs.step()
    assert ours.finished == theirs.finished  # the tokens do not depend on the schedule...
    assert ours.batch_sizes != theirs.batch_sizes  # ...the schedule does


@pytest.mark.parametrize("make_model", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama-gqa"])
@pytest.mark.parametrize("policy", [pkg.Scheduler, pkg.StaticScheduler])
def test_engine_greedy_equals_hf_generate(make_model, policy):
    model = make_model(seed=1)
    requests = make_requests(10, 97, seed=6)
    engine = pkg.MiniEngine(model, num_blocks=64, block_size=4, max_batch=5, policy=policy)
    outputs = engine.run(pkg.Request(r.rid, r.prompt, r.max_new) for r in requests)
    for r in requests:
        assert outputs[r.rid] == hf_greedy(model, r.prompt, r.max_new), f"request {r.rid} differs from generate"
    prompts = sum(len(r.prompt) for r in requests)
    decode_slots = sum(rows * tokens for rows, tokens in engine.passes) - prompts
    no_waste = sum(r.max_new - 1 for r in requests)
    if policy is pkg.Scheduler:  # continuous batching decodes exactly one slot per token after the first
        assert decode_slots == no_waste
    else:
        assert decode_slots > no_waste
    assert len(engine.passes) == len(requests) + len(engine.batch_sizes)
    assert engine.kv.manager.used_blocks() == 0, "blocks leaked"


def test_block_accounting_during_a_run(gpt2):
    engine = pkg.MiniEngine(gpt2, num_blocks=64, block_size=4, max_batch=4)
    for r in make_requests(10, 97, seed=7):
        engine.add(r)
    while engine.busy:
        engine.step()
        expected = sum(engine.blocks_for(len(r.prompt) + len(r.output) - 1) for r in engine.scheduler.running)
        assert engine.kv.manager.used_blocks() == expected  # the newest token's KV is written on the next step


def test_stopped_requests_and_custom_pick(gpt2):
    engine = pkg.MiniEngine(gpt2, num_blocks=32, block_size=4, max_batch=4)
    always_seven = pkg.Request("pick", [1, 2, 3], 5, pick=lambda logits: 7)
    stop_at_two = pkg.Request("stop", [4, 5, 6], 20)
    engine.add(always_seven)
    engine.add(stop_at_two)
    while engine.busy:
        engine.step()
        if len(stop_at_two.output) == 2:
            stop_at_two.stopped = True
    assert engine.finished["pick"] == [7] * 5
    assert engine.finished["stop"] == hf_greedy(gpt2, [4, 5, 6], 2)


def test_run_stream_against_closed_forms(gpt2):
    def cost(rows, tokens):
        return 1.0 + 0.1 * rows if tokens == 1 else 2.0 + 0.01 * rows * tokens

    lone = [pkg.Request(i, [1] * (3 + i), n, arrival=1000.0 * i) for i, n in enumerate((1, 5, 17))]
    engine = pkg.MiniEngine(gpt2, num_blocks=64, block_size=4, max_batch=4, pass_seconds=cost)
    pkg.run_stream(engine, lone)
    for r in lone:  # alone: one prefill, then (n - 1) decode steps of one row
        assert r.first_token_at - r.arrival == pytest.approx(cost(1, len(r.prompt)))
        assert r.finished_at - r.arrival == pytest.approx(cost(1, len(r.prompt)) + (r.max_new - 1) * cost(1, 1))

    rng = np.random.default_rng(8)
    arrivals = np.cumsum(rng.exponential(3.0, 24))
    base = make_requests(24, 97, seed=8)
    runs = {}
    for name, policy in [("continuous", pkg.Scheduler), ("static", pkg.DynamicScheduler),
                         ("dynamic", lambda b, c: pkg.DynamicScheduler(b, c, max_wait=4.0))]:
        requests = [pkg.Request(r.rid, r.prompt, r.max_new, arrival=float(t)) for r, t in zip(base, arrivals)]
        engine = pkg.MiniEngine(gpt2, num_blocks=100, block_size=4, max_batch=6, policy=policy, pass_seconds=cost)
        pkg.run_stream(engine, requests)
        assert all(r.arrival <= r.first_token_at <= r.finished_at for r in requests)
        runs[name] = (engine, requests)
    outputs = {name: e.finished for name, (e, _) in runs.items()}
    assert outputs["continuous"] == outputs["static"] == outputs["dynamic"]
    assert sum(runs["continuous"][0].batch_sizes) == sum(r.max_new - 1 for r in base)
    static_batches = runs["static"][0].passes
    assert max(rows for rows, tokens in static_batches if tokens == 1) == 6
    # dynamic: no request waits past its deadline while the engine is free, so its first batch starts by then
    first = runs["dynamic"][1][0]
    assert first.first_token_at <= first.arrival + 4.0 + 6 * cost(1, 20)


def test_clear_errors(gpt2):
    engine = pkg.MiniEngine(gpt2, num_blocks=4, block_size=4, max_batch=2)
    with pytest.raises(ValueError, match="non-empty prompt"):
        engine.add(pkg.Request(0, [], 3))
    with pytest.raises(ValueError, match="KV blocks"):
        engine.add(pkg.Request(1, [1] * 10, 10))
    with pytest.raises(ValueError, match="context"):
        pkg.MiniEngine(gpt2, num_blocks=200, block_size=4, max_batch=2).add(pkg.Request(2, [1] * 250, 10))
    with pytest.raises(ValueError, match="pass_seconds"):
        pkg.run_stream(engine, [])
    with pytest.raises(ValueError, match="model_type"):
        from transformers import BertConfig, BertModel

        pkg.ModelAdapter(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=32)))
    assert math.isinf(pkg.Scheduler(2).wake_time())


# --- the engine behind the service ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from llm_roadmap.serving.backends import build_tiny_test_model
    from llm_roadmap.serving.engine_backend import EngineBackend

    backend = EngineBackend(build_tiny_test_model(tmp_path_factory.mktemp("tiny")), name="tiny", max_batch=4)
    yield backend
    backend.close()
    assert not backend._thread.is_alive(), "the engine thread outlived close()"


def post_all(app, bodies):
    import asyncio

    import httpx

    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json=body) for body in bodies))
    return asyncio.run(go())


def test_engine_backend_serves_concurrent_requests_in_shared_batches(served):
    from llm_roadmap.serving.app import create_app
    from llm_roadmap.serving.backends import Backend
    from llm_roadmap.serving.settings import ServerSettings

    assert isinstance(served, Backend)
    app = create_app(served, ServerSettings(max_concurrent=6, rate_limit_rps=1000.0, rate_limit_burst=100))
    rows, report = [], served.step_observer
    served.step_observer = lambda n: (rows.append(n), report(n))
    prompts = ["def add(a, b):", "class A:", "import os", "for i in range(3):", "x = [1, 2]", "while True:"]
    bodies = [{"model": "tiny", "prompt": p, "max_tokens": 12, "temperature": 0, "ignore_eos": True} for p in prompts]
    bodies.append({"model": "tiny", "prompt": "x", "max_tokens": 12, "temperature": 0})  # stops at end of turn
    try:
        responses = post_all(app, bodies)
    finally:
        app.state.serving.shutdown()
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
    for body, response in zip(bodies, responses):
        ids = torch.tensor([served.encode(body["prompt"])])
        eos = None if body.get("ignore_eos") else served.text.model.generation_config.eos_token_id
        with torch.no_grad():
            out = served.text.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                             do_sample=False, eos_token_id=eos)
        expected = served.text.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert response.json()["choices"][0]["text"] == expected, body
    assert max(rows) > 1, "concurrent requests never shared a decode step"
    assert not served.engine.busy and served.engine.kv.manager.used_blocks() == 0, "slots or blocks leaked"


def test_engine_backend_sampling_is_seeded_and_cancel_frees_the_slot(served):
    import threading
    import time

    from llm_roadmap.serving.backends import SamplingParams

    prompt = served.encode("def add(a, b):")
    sampled = SamplingParams(max_tokens=10, temperature=0.9, seed=5, ignore_eos=True)
    first = list(served.stream(prompt, sampled, threading.Event()))
    assert list(served.stream(prompt, sampled, threading.Event())) == first and len(first) == 10
    cancel = threading.Event()
    stream = served.stream(prompt, SamplingParams(max_tokens=200, temperature=0, ignore_eos=True), cancel)
    taken = [next(stream), next(stream)]
    cancel.set()
    rest = list(stream)
    assert len(taken) + len(rest) < 200
    deadline = time.monotonic() + 5
    while served.engine.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not served.engine.busy and served.engine.kv.manager.used_blocks() == 0, "a cancelled request kept its slot"
