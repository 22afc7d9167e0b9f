"""Prometheus metrics and optional OpenTelemetry spans of one app (its own registry: no global state).

Metrics (read them at GET /metrics): requests by route and status, request latency, time to first token, decode
tokens per second, prompt and generated tokens, finished generations by reason, queue depth, requests generating,
and the batch size of each forward pass (what a batching engine such as lesson 4.4's reports through
`Backend.step_observer`). Spans (with a tracer passed to `create_app`): one per request, with children `tokenize`,
`queue`, `prefill` (until the first token) and `decode` (the rest).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
        self.decode_tokens_per_second = Histogram(f"{p}_decode_tokens_per_second",
                                                  "Per request: tokens after the first, over the time they took",
                                                  buckets=RATE_BUCKETS, registry=r)
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
