"""The one execution environment of the harness: threads, offline flags, backends, timeouts, budget, seeds, and the
warnings that mean wrong results. The runner (`make run`), the test command (`make test`) and the standalone script
(`tools/run_alone.sh`) all take their settings from here; shell scripts read them with `python -m roadmap_tools env`.
"""

from __future__ import annotations

import os
import re

# The course's promise: a lesson's small config runs in under a minute on a 2-core CPU. The harness measures the
# kernel's CPU time (the kernel process and the child processes it waited for), which a loaded machine barely
# changes, beside wall time, which it does. The test command fails a notebook whose CPU time exceeds the budget by
# more than the margin (a clear overrun, not noise); wall time over WALL_LIMIT_FACTOR x budget also fails (a lesson
# that waits instead of computing).
BUDGET_S = float(os.environ.get("ROADMAP_BUDGET_S", "60"))  # the override exists for the harness's own tests
BUDGET_MARGIN = 1.25
WALL_LIMIT_FACTOR = 5.0
CELL_TIMEOUT_S = 600  # against a hung cell; far above any cell of a small config

# The committed outputs come from the first seed; the others show that the checks are not seed luck.
SEEDS = (0, 1, 2)

# Settings for every notebook kernel and every test process. One torch/BLAS thread: on a 2-core machine shared by
# two test workers (or a learner's other work), two threads per process oversubscribe the cores and make tiny
# tensors slower, and CPU time stays a fair measure.
COMMON = {
    "PYTHONHASHSEED": "0",  # set iteration order of str hashes, so printed sets and dicts are reproducible
    "TOKENIZERS_PARALLELISM": "false",  # no fork warning from Hugging Face tokenizers
    "TQDM_MININTERVAL": "5",  # progress bars redraw at most every 5 s: few stderr outputs in logs
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # no debugpy "frozen modules" notice on kernel start
}
SMALL = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",  # the small config is offline: a hub access fails at once with a clear error
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}

# Warnings that mean a result may be wrong. The test command fails a notebook whose outputs contain one; the fix is
# in the lesson, never a filter. Each entry: (pattern, why it matters).
DENYLIST: list[tuple[str, str]] = [
    (r"silently incorrect", "PyTorch says results may be wrong"),
    (r"autograd kernel was not registered", "an op without a backward: gradients are dropped"),
    (r"None of the inputs have requires_grad=True", "checkpointing without gradients: parameters get no update"),
    (r"does not require grad and does not have a grad_fn", "a loss that cannot be backpropagated"),
    (r"\.grad attribute of a Tensor that is not a leaf", "reading .grad of a non-leaf: it is None"),
    (r"were not initialized from the model checkpoint", "pretrained weights missing: layers stay random"),
    (r"were not used when initializing", "checkpoint weights ignored: the architecture does not match"),
    (r"Mean of empty slice", "a mean over nothing: the number is nan"),
    (r"invalid value encountered", "a nan produced in NumPy arithmetic"),
]
_DENY = [(re.compile(p, re.IGNORECASE), why) for p, why in DENYLIST]


# Figures: a kernel draws them inline into the notebook (Jupyter's own backend; a MPLBACKEND=Agg inherited from a
# shell would silently drop every figure from the outputs), other processes draw to no window.
KERNEL_MPLBACKEND = "module://matplotlib_inline.backend_inline"


def kernel_env(size: str = "small", base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a notebook kernel runs in: `base` (default os.environ) with the harness settings on top."""
    env = dict(os.environ if base is None else base)
    env.update(COMMON)
    env["MPLBACKEND"] = KERNEL_MPLBACKEND
    if size == "small":
        env.update(SMALL)
    return env


def shell_exports(size: str = "small") -> str:
    """`export K=V` lines of the harness settings, for shell scripts: eval "$(python -m roadmap_tools env)"."""
    settings = {**COMMON, "MPLBACKEND": "Agg", **(SMALL if size == "small" else {})}
    return "\n".join(f"export {k}={v}" for k, v in settings.items())


def denied_warnings(text: str) -> list[str]:
    """The denylisted warnings in `text`: one line each, the offending line and why it matters."""
    found = []
    for line in text.splitlines():
        for pattern, why in _DENY:
            if pattern.search(line):
                found.append(f"{line.strip()[:200]}  <- {why}")
    return found


def cpu_limit_s() -> float:
    """CPU seconds above which the test command fails a notebook."""
    return BUDGET_S * BUDGET_MARGIN
