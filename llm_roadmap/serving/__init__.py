"""Services that lessons start as real processes on 127.0.0.1 (phase 9's OpenAI-compatible API and its clients).
Each is taught in a lesson first; this package holds the copy that later lessons and capstones start.

- `settings`: `ServerSettings` (address, keys, every limit).
- `backends`: the `Backend` protocol; `TransformersBackend`, `GPTBackend`, `SlowBackend`, `build_tiny_test_model`.
- `app`: `create_app(backend, settings, tracer=None, metrics=None)`, the FastAPI app.
- `metrics`: `Metrics` (a Prometheus registry per app) and the optional OpenTelemetry span helpers.
- `engine_backend`: `EngineBackend`, lesson 4.4's engine (`llm_roadmap.engine`: KV cache, continuous batching) behind
  the `Backend` protocol.
- `rag_backend`: `RAGBackend`, phase 5's retrieval pipeline (`llm_roadmap.rag_pipeline`) as a chat model with
  conversation memory (`conversation_query`).
- `process`: `start_server(...)` -> `ServerProcess` (`base_url`, `api_key`, `stop()`), `port_is_free`,
  `assert_stopped`.
- `python -m llm_roadmap.serving --model tiny-test`: the command line.

Names are imported on first use, so `import llm_roadmap.serving` alone loads neither torch nor FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ServerSettings": "settings", "Backend": "backends", "SamplingParams": "backends",
    "TransformersBackend": "backends", "GPTBackend": "backends", "SlowBackend": "backends",
    "build_tiny_test_model": "backends", "create_app": "app", "Metrics": "metrics", "start_server": "process",
    "ServerProcess": "process", "port_is_free": "process", "assert_stopped": "process",
    "EngineBackend": "engine_backend", "RAGBackend": "rag_backend", "conversation_query": "rag_backend",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
