"""Prometheus metrics, request ids in JSON logs, and optional OpenTelemetry spans of one app.

Metrics (read them at GET /metrics; a registry per app, no global state): requests by route and status, request
latency, time to first token, decode tokens per second, prompt and generated tokens, finished generations by reason,
queue depth, requests generating, and the batch size of each forward pass (what a batching engine such as lesson
4.4's reports through `Backend.step_observer`). Spans (with a tracer passed to `create_app`): one per request,
carrying its `request_id`, with children `tokenize`, `queue`, `prefill` (until the first token) and `decode`.

Request ids: `app.RequestContext` keeps each request's id in `request_id_var` (a ContextVar: every asyncio task sees
its own), and `JsonFormatter` writes it into every log line written while the request runs.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


REQUEST_ID_HEADER = "x-request-id"
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # a client's id goes into logs: bounded, no spaces or quotes
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def accept_request_id(given: str | None) -> str:
    """The client's id if it is 1-64 safe characters ([A-Za-z0-9._:-]), else a new random one (32 hex digits)."""
    return given if given is not None and SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, the record's `fields`, and the error if any."""

    def __init__(self, get_request_id: Any = request_id_var.get):
        super().__init__()
        self.get_request_id = get_request_id  # (a ContextVar's get; lesson 9.3 swaps in a broken twin)

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry = {"ts": round(record.created, 6), "level": record.levelname, "logger": record.name,
                 "msg": record.getMessage(), "request_id": getattr(record, "request_id", None) or self.get_request_id()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"[:500]
            entry["traceback"] = self.formatException(record.exc_info)  # the server's log only, never a client's
        return json.dumps(entry, ensure_ascii=False, default=str)


class Metrics:
    """The service's Prometheus metrics, registered in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "llm"):
        self.registry = registry if registry is not None else CollectorRegistry()
        r, p = self.registry, prefix
        self.requests = Counter(f"{p}_requests", "HTTP requests by route and status code", ["route", "status"],
                                registry=r)
        self.request_latency = Histogram(f"{p}_request_latency_seconds", "Time from request to last byte", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.time_to_first_token = Histogram(f"{p}_time_to_first_token_seconds",
                                             "Time from request to the first generated token", buckets=LATENCY_BUCKETS,
                                             registry=r)
        self.decode_tokens_per_second = Histogram(
            f"{p}_decode_tokens_per_second", "Per generation of two tokens or more: tokens after the first, over the "
            "time from the first to the last (timed where the model makes them)", buckets=RATE_BUCKETS, registry=r)
        self.prompt_tokens = Counter(f"{p}_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generated_tokens = Counter(f"{p}_generated_tokens", "Tokens generated", registry=r)
        self.generations = Counter(f"{p}_generations", "Finished generations by reason (stop, length, cancelled, "
                                   "timeout, error)", ["reason"], registry=r)
        self.queue_depth = Gauge(f"{p}_queue_depth", "Requests waiting for a generation slot", registry=r)
        self.active = Gauge(f"{p}_active_requests", "Requests holding a generation slot", registry=r)
        self.batch_size = Histogram(f"{p}_batch_size", "Sequences per forward pass", buckets=BATCH_BUCKETS,
                                    registry=r)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def start_span(tracer: Any, name: str, parent: Any = None, **attributes: Any) -> Any:
    """A started span (a child of `parent` when given), or None without a tracer."""
    if tracer is None:
        return None
    from opentelemetry import trace

    context = trace.set_span_in_context(parent) if parent is not None else None
    span = tracer.start_span(name, context=context)
    if attributes:
        span.set_attributes(attributes)
    return span


def end_span(span: Any, error: str | None = None, **attributes: Any) -> None:
    """End a span from `start_span` (None, or a span already ended, is fine), with attributes and an error status."""
    if span is None or not span.is_recording():
        return
    if attributes:
        span.set_attributes(attributes)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
