"""`python -m llm_roadmap.serving --rag python-docs` as a real process on 127.0.0.1, called by the official openai
client (what capstone 10.2 serves): its answers against the same pipeline built here from the package's API (an
independent construction of the flags' meaning), conversation memory against a memoryless server (the broken twin),
the refusal gate as a flag, and the errors for flags that do not combine.

One module-scoped server per memory setting: each start costs seconds of imports and indexing.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from openai import OpenAI

from llm_roadmap import rag
from llm_roadmap import rag_pipeline as rp
from llm_roadmap.data import pydoc_topics
from llm_roadmap.serving.process import assert_stopped, start_server
from llm_roadmap.serving.rag_backend import RAGBackend

# small help topics (22 K characters: a few seconds of MiniLM on a CPU): lookup questions' evidence, and the special
# methods of containers (sequence-types), where "what should it return?" has a different answer for each method
TOPICS = ["shifting", "bltin-code-objects", "floating", "power", "integers", "typesmethods", "slicings", "id-classes",
          "augassign", "exceptions", "sequence-types"]
FLAGS = dict(rag="python-docs", rag_topics=",".join(TOPICS), rag_k=3, rag_candidates=20, rag_depth=10,
             rag_filter="instructions", max_tokens_cap=4096, rate_limit_rps=0, torch_threads=1, device="cpu",
             dtype="float32", log_level="warning")
QUESTIONS = ["How is a right shift by n bits defined?",
             "What auditing event does accessing a function's __code__ attribute raise?",
             "In which module is the interactive interpreter's _ variable stored?"]
# a follow-up that names nothing: only the earlier turn says which method it is about
CONVERSATION = [{"role": "user", "content": "What is the special method __len__ for?"},
                {"role": "assistant", "content": "(the earlier answer)"},
                {"role": "user", "content": "And what should it return?"}]


@pytest.fixture(scope="module")
def local() -> rp.RAGPipeline:
    """The pipeline the flags describe, built here with the package's API (the reference)."""
    torch.set_num_threads(1)
    embedder = rag.Embedder(rag.minilm_path(), batch_size=32)
    topics = pydoc_topics()
    return rp.RAGPipeline.from_texts({t: topics[t] for t in TOPICS}, embedder=embedder,
                                     reranker=rp.MaxSimReranker(embedder), k=3, candidates=20, depth=10,
                                     source_filter=rp.filter_instructions)


@pytest.fixture(scope="module", params=[2, 1], ids=["memory", "memoryless"])
def served(request):
    server = start_server("tiny-test", rag_memory_turns=request.param, **FLAGS)
    client = OpenAI(base_url=server.openai_base_url, api_key=server.api_key, max_retries=0, timeout=60)
    yield request.param, client
    server.stop()
    assert_stopped(server)


def ask(client: OpenAI, messages: list[dict]) -> str:
    reply = client.chat.completions.create(model="rag-assistant", messages=messages, temperature=0)
    return reply.choices[0].message.content


def test_served_answers_equal_the_pipeline_built_here(served, local):
    turns, client = served
    assert [m.id for m in client.models.list().data] == ["rag-assistant"]
    for question in QUESTIONS:
        expected = local.answer(question)
        assert ask(client, [{"role": "user", "content": question}]) == expected.text
        assert not expected.refused and rp.is_faithful(expected.text, expected.sources)


def test_memory_flag_follows_the_earlier_turn_and_the_memoryless_twin_does_not(served, local):
    turns, client = served
    answer = ask(client, CONVERSATION)
    backend = RAGBackend(local, memory_turns=turns)
    backend.chat_prompt_ids(CONVERSATION)
    assert answer == backend.turns[-1].answer
    assert (rag.normalize_answer("the length of the object") in rag.normalize_answer(answer)) == (turns == 2), answer


def test_refusal_gate_flag_refuses_below_the_threshold():
    server = start_server("tiny-test", rag_refuse_below=1e9, **{**FLAGS, "rag_topics": "shifting,power"})
    try:
        client = OpenAI(base_url=server.openai_base_url, api_key=server.api_key, max_retries=0, timeout=60)
        assert ask(client, [{"role": "user", "content": QUESTIONS[0]}]) == rp.REFUSAL  # no score reaches 1e9
    finally:
        server.stop()
    assert_stopped(server)


@pytest.mark.parametrize("flags, message", [
    (["--rag", "wikipedia"], "invalid choice"),
    (["--rag", "python-docs", "--rag-topics", "no-such-topic"], "unknown help topics"),
    (["--rag", "python-docs", "--rag-embedder", "none"], "BM25 only"),
    (["--rag", "python-docs", "--rag-reranker", "none", "--rag-refuse-below", "1"], "gates on reranker scores"),
    (["--rag", "python-docs", "--engine"], "does not combine"),
])
def test_flags_that_do_not_combine_exit_with_a_reason(flags, message):
    done = subprocess.run([sys.executable, "-m", "llm_roadmap.serving", *flags, "--port", "0", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]
