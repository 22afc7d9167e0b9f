"""The service's settings: one frozen dataclass per app, so two apps in one process never share limits or keys."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

API_KEYS_ENV = "LLM_ROADMAP_API_KEYS"  # comma-separated; keys travel in the environment, never on a command line


@dataclass(frozen=True)
class ServerSettings:
    """Where the server listens and every limit it enforces (0 turns a rate limit off)."""

    host: str = "127.0.0.1"  # loopback only: other machines cannot reach it unless you say so
    port: int = 8000
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # empty: no authentication (refused off loopback)
    model_name: str | None = None  # the id clients send as `model`; default: the backend's name
    max_tokens_cap: int = 256  # the most tokens one request may ask for
    default_max_tokens: int = 16  # /v1/completions' default (OpenAI's); chat defaults to the cap
    max_body_bytes: int = 64 * 1024  # larger request bodies get 413
    max_concurrent: int = 4  # requests generating at once
    max_queue: int = 16  # requests waiting for a slot; one more gets 503
    rate_limit_rps: float = 10.0  # per API key (or per client address without keys): refill, requests per second
    rate_limit_burst: int = 20  # per key: the bucket's size
    request_timeout_s: float = 60.0  # queue wait + generation; longer gets 504 (or an error event mid-stream)
    retry_after_s: int = 1  # what 503 tells clients to wait
    shutdown_timeout_s: float = 30.0  # graceful shutdown: how long in-flight requests may take to finish
    max_stop_sequences: int = 4
    max_stop_chars: int = 64

    def __post_init__(self) -> None:
        positive = ("max_tokens_cap", "default_max_tokens", "max_body_bytes", "max_concurrent", "request_timeout_s",
                    "shutdown_timeout_s", "max_stop_sequences", "max_stop_chars")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("max_queue", "rate_limit_rps", "rate_limit_burst", "retry_after_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.rate_limit_rps > 0 and self.rate_limit_burst < 1:
            raise ValueError("rate_limit_burst must be >= 1 when rate_limit_rps > 0")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ValueError("API keys must be non-empty and have no surrounding whitespace")
        if not self.api_keys and not is_loopback(self.host):
            raise ValueError(f"refusing to serve on {self.host!r} without API keys: set {API_KEYS_ENV} or bind "
                             "127.0.0.1")

    @property
    def auth_required(self) -> bool:
        """True when requests to /v1 must carry one of the configured keys."""
        return bool(self.api_keys)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost": addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_keys_from_env(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The keys in LLM_ROADMAP_API_KEYS (comma-separated; blanks dropped)."""
    raw = (os.environ if environ is None else environ).get(API_KEYS_ENV, "")
    return tuple(key.strip() for key in raw.split(",") if key.strip())
