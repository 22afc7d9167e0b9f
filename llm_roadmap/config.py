"""Config resolution, seeding, device and dtype choice, Colab detection."""

from __future__ import annotations

import os
import random
import sys

import numpy as np

SIZES = ("small", "full")


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules


def has_cuda() -> bool:
    """True when torch is importable and sees a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_size(size: str = "auto") -> str:
    """Turn a notebook's SIZE parameter into "small" or "full".

    "auto" means small without a CUDA GPU and full with one; the environment variable LLM_ROADMAP_SIZE, when set,
    decides "auto" instead (the runner uses it to refresh committed outputs in the small config).
    """
    if size not in ("auto", *SIZES):
        raise ValueError(f"SIZE must be 'auto', 'small' or 'full', got {size!r}")
    if size == "auto":
        forced = os.environ.get("LLM_ROADMAP_SIZE", "").strip()
        if forced:
            if forced not in SIZES:
                raise ValueError(f"LLM_ROADMAP_SIZE must be 'small' or 'full', got {forced!r}")
            return forced
        return "full" if has_cuda() else "small"
    return size


CAPPED_ENV = "LLM_ROADMAP_CAPPED"


def capped(full, small):
    """The full config with every integer capped at the small config's value under the same key (recursively), and
    every list of numbers (sizes, lengths, ranks) replaced by the small config's list.

    What the harness's full-path run uses: the full code path (hub models and data sets, here tiny stand-ins) with
    the small config's steps, sizes and counts, so that it runs on a CPU in seconds. Strings, floats, booleans and
    keys the small config lacks stay as the full config has them.
    """
    def is_int(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    def is_numbers(x) -> bool:  # a list of numbers, or of such lists (e.g. stages=((32, 32), (64, 64)))
        return isinstance(x, (list, tuple)) and all(is_int(v) or isinstance(v, float) or is_numbers(v) for v in x)

    if isinstance(full, dict) and isinstance(small, dict):
        return {key: capped(value, small[key]) if key in small else value for key, value in full.items()}
    if is_int(full) and is_int(small):
        return min(full, small)
    if is_numbers(full) and is_numbers(small):
        return small
    return full


def pick_config(configs: dict[str, dict], size: str) -> dict:
    """The config for a resolved size: configs[size], except that the full config is capped (see `capped`) when the
    environment variable LLM_ROADMAP_CAPPED is 1, as the harness sets it to exercise full code paths on a CPU."""
    if size not in configs:
        raise ValueError(f"no config named {size!r}; the notebook defines {sorted(configs)}")
    if size == "full" and os.environ.get(CAPPED_ENV, "") == "1":
        return capped(configs["full"], configs.get("small", {}))
    return configs[size]


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)  # also seeds every CUDA device


def pick_device(prefer: str | None = None) -> str:
    """"cuda" when a GPU is there, else "cpu" (or `prefer`, if given and available)."""
    if prefer is not None:
        if prefer.startswith("cuda") and not has_cuda():
            raise RuntimeError(f"device {prefer!r} asked for, but no CUDA GPU is visible; use 'cpu'")
        return prefer
    return "cuda" if has_cuda() else "cpu"


def pick_dtype(device: str):
    """The training dtype for a device: bf16 on GPUs that support it, fp16 on older GPUs (a T4), fp32 on CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def trainer_precision(device: str) -> dict[str, bool]:
    """The precision flags for transformers' TrainingArguments and TRL's configs (SFTConfig, DPOConfig, GRPOConfig).

    The course's one precision rule, the same as pick_dtype: fp32 on CPU, fp16 mixed precision on GPUs without bf16
    (a T4), bf16 where supported. TRL's configs default to bf16=True, which fails on CPU and is emulated (slow, and
    not what a comparison against fp32 expects) on a T4: always pass these flags, e.g. SFTConfig(**trainer_precision(
    device), ...).
    """
    import torch

    dtype = pick_dtype(device)
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16, "use_cpu": not device.startswith("cuda")}


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), for naming the hardware behind a timing."""
    import platform

    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_runtime() -> str:
    """One line naming python, torch and the device (for a CPU: its model, the vector instructions torch uses, the
    threads), for the top of a notebook: a speed-up measured below is a fact about this hardware."""
    parts = [f"python {sys.version.split()[0]}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
        else:
            threads = torch.get_num_threads()
            capability = torch.backends.cpu.get_cpu_capability()
            parts.append(f"CPU {cpu_name()} ({capability}, {threads} thread{'s' if threads != 1 else ''})")
    except ImportError:
        parts.append("torch not installed")
    parts.append("Colab" if in_colab() else "local")
    return " | ".join(parts)
