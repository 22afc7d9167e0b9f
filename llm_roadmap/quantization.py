"""Lesson 4.3's weight quantizers, for the lessons and capstones that quantize a trained model.

- `grid`, `to_int`, `quantize_to_grid`: absmax (symmetric) and zero-point (asymmetric) round-to-nearest grids, one
  per row; `fake_quantize` applies them per tensor, per output channel or per group of inputs.
- `hessian`, `gptq_quantize`: GPTQ (Frantar et al. 2022, Algorithm 1, Cholesky form, lazy block updates).
- `awq_quantize`: activation-aware scaling (the idea behind AWQ, Lin et al. 2023) searched on calibration inputs.
- `quantizable_linears`, `calibration_inputs`, `weight_only_methods`, `quantize_model`: quantize every `nn.Linear`
  of a model (the course's `GPT` or a Hugging Face causal LM) with any of those methods ("fake quantization": the
  weights stay float, rounded to the grid).
- `model_bytes`, `mean_bits`: the storage the quantized format would take (codes, scales and zero points counted);
  `dynamic_int8`, `serialized_bytes`: PyTorch's real int8 layers and the bytes `torch.save` writes.
- `lm_loss`, `perplexity`: the quality side of the trade-off.

Lesson 4.3 writes these in cells starting `# teaching-copy: quant`; `tests/test_teaching_copies_phase3_4.py` proves the
two copies give the same numbers.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn

from llm_roadmap.models.gpt import GPT

Grid = tuple[torch.Tensor, torch.Tensor, int, int]  # scale, zero point, smallest and largest integer
Quantizer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (weight, calibration inputs) -> weight on grid


def grid(w: torch.Tensor, bits: int, symmetric: bool) -> Grid:
    """Scale, zero point and integer range for each row of w (the last dim is what shares one grid)."""
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer from 2 to 16, got {bits!r}")
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = w.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
        return scale, torch.zeros_like(scale), -qmax, qmax
    qmax = 2**bits - 1
    lo = w.amin(-1, keepdim=True).clamp(max=0)  # widen to include 0, so that zero is represented exactly
    hi = w.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo).clamp(min=1e-12) / qmax
    return scale, torch.round(-lo / scale), 0, qmax


def to_int(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | float, qmin: int, qmax: int) -> torch.Tensor:
    """Integers on the grid: round(w / scale) + zero, clamped to the integer range."""
    return torch.clamp(torch.round(w / scale) + zero, qmin, qmax)


def quantize_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | float, qmin: int, qmax: int
                     ) -> torch.Tensor:
    """Quantize then dequantize ("fake quantization"): the float each weight becomes."""
    return (to_int(w, scale, zero, qmin, qmax) - zero) * scale


def fake_quantize(w: torch.Tensor, bits: int, granularity: str, group_size: int = 32, symmetric: bool = True
                  ) -> torch.Tensor:
    """Quantize-dequantize a weight matrix (out, in) with one grid per tensor, per output channel or per group."""
    if granularity not in ("tensor", "channel", "group"):
        raise ValueError(f"granularity must be 'tensor', 'channel' or 'group', got {granularity!r}")
    if granularity == "group" and (group_size < 1 or w.shape[-1] % group_size):
        raise ValueError(f"group_size {group_size} must divide the {w.shape[-1]} inputs of each row")
    rows = {"tensor": lambda: w.reshape(1, -1), "channel": lambda: w, "group": lambda: w.reshape(-1, group_size)}
    rows = rows[granularity]()
    return quantize_to_grid(rows, *grid(rows, bits, symmetric)).reshape(w.shape)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return ((a - b).norm() / b.norm()).item()


def hessian(x_calib: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """H = 2 X X^T + lambda I for calibration inputs x_calib (tokens, d_in), in float64."""
    h = 2 * x_calib.double().T @ x_calib.double()
    return h + damp * h.diagonal().mean() * torch.eye(len(h), dtype=h.dtype, device=h.device)


def gptq_quantize(w: torch.Tensor, x_calib: torch.Tensor, bits: int, group_size: int | None = None,
                  symmetric: bool = False, block_size: int = 32) -> torch.Tensor:
    """GPTQ (Algorithm 1): quantize w (out, in) column by column, spreading each error with the inverse Hessian."""
    if x_calib.ndim != 2 or x_calib.shape[1] != w.shape[1]:
        raise ValueError(f"calibration inputs must be (tokens, {w.shape[1]}), got {tuple(x_calib.shape)}")
    w = w.double().clone()
    n_cols = w.shape[1]
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian(x_calib))), upper=True)
    q = torch.zeros_like(w)
    g = grid(w, bits, symmetric)  # per output channel, unless groups replace it below
    for i in range(0, n_cols, block_size):
        end = min(i + block_size, n_cols)
        errors = torch.zeros(w.shape[0], end - i, dtype=w.dtype, device=w.device)
        for j in range(i, end):
            if group_size is not None and j % group_size == 0:
                g = grid(w[:, j:j + group_size], bits, symmetric)  # from the updated weights
            q[:, j] = quantize_to_grid(w[:, j:j + 1], *g)[:, 0]
            err = (w[:, j] - q[:, j]) / h_inv[j, j]
            w[:, j:end] -= err[:, None] * h_inv[j, j:end][None, :]  # update the rest of this block now
            errors[:, j - i] = err
        w[:, end:] -= errors @ h_inv[i:end, end:]  # lazy batch update of all later columns
    return q.to(x_calib.dtype)


def awq_quantize(w: torch.Tensor, x_calib: torch.Tensor, bits: int, group_size: int, n_alphas: int = 21
                 ) -> tuple[torch.Tensor, float]:
    """Grid-search alpha in s = mean|x|^alpha; quantize W diag(s) per group; return Q(W diag(s)) diag(s)^-1."""
    if x_calib.ndim != 2 or x_calib.shape[1] != w.shape[1]:
        raise ValueError(f"calibration inputs must be (tokens, {w.shape[1]}), got {tuple(x_calib.shape)}")
    mean_abs = x_calib.abs().mean(0).clamp(min=1e-8)
    y_ref = x_calib @ w.T
    best = (float("inf"), None, None)
    for alpha in torch.linspace(0, 1, n_alphas).tolist():
        s = mean_abs**alpha
        s = s / (s.max() * s.min()).sqrt()  # AWQ's normalisation: centre the scales around 1
        w_hat = fake_quantize(w * s, bits, "group", group_size, symmetric=False) / s
        err = (x_calib @ w_hat.T - y_ref).pow(2).mean().item()
        if err < best[0]:
            best = (err, alpha, w_hat)
    return best[2], best[1]


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of windows ids (batch, T+1), for our GPT and for Hugging Face models."""
    if isinstance(model, GPT):
        return model(ids[:, :-1], ids[:, 1:])[1]
    return model(input_ids=ids, labels=ids).loss


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 16) -> float:
    """exp(mean next-token loss) over windows (n, T+1)."""
    dev = next(model.parameters()).device
    losses = [lm_loss(model, windows[i:i + batch_size].to(dev)).item() * len(windows[i:i + batch_size])
              for i in range(0, len(windows), batch_size)]
    return math.exp(sum(losses) / len(windows))


def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear, the LM head included (in our GPT it shares its weight with the token embedding)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def calibration_inputs(model: nn.Module, windows: torch.Tensor, max_tokens: int = 4096) -> dict[str, torch.Tensor]:
    """Each linear layer's input rows (tokens, d_in) on calibration windows, captured with forward hooks."""
    store = {n: [] for n in quantizable_linears(model)}

    def hook(name):
        def save(module, inputs, output):
            if sum(len(t) for t in store[name]) < max_tokens:
                store[name].append(inputs[0].reshape(-1, inputs[0].shape[-1]).float())
        return save

    hooks = [m.register_forward_hook(hook(n)) for n, m in quantizable_linears(model).items()]
    dev = next(model.parameters()).device
    try:
        for i in range(0, len(windows), 4):
            lm_loss(model, windows[i:i + 4].to(dev))
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v)[:max_tokens] for n, v in store.items()}


def weight_only_methods(group: int) -> dict[str, tuple[Quantizer, Callable[[torch.Tensor], float]]]:
    """name -> (quantizer(w, x_calib) -> w_hat, bits per weight(w)), all simulated in float ("fake quantization")."""
    methods = {
        "int8 per-tensor": (lambda w, x: fake_quantize(w, 8, "tensor"), lambda w: 8 + 32 / w.numel()),
        "int8 per-channel": (lambda w, x: fake_quantize(w, 8, "channel"), lambda w: 8 + 16 / w.shape[1]),
    }
    for b in (4, 3):  # a b-bit code per weight + an fp16 scale and a b-bit zero point per group
        bits_of = lambda w, b=b: b + (16 + b) / group  # noqa: E731
        methods[f"int{b} group RTN"] = (lambda w, x, b=b: fake_quantize(w, b, "group", group, symmetric=False), bits_of)
        methods[f"int{b} GPTQ"] = (lambda w, x, b=b: gptq_quantize(w, x, b, group), bits_of)
        methods[f"int{b} AWQ-style"] = (lambda w, x, b=b: awq_quantize(w, x, b, group)[0], bits_of)
    return methods


@torch.no_grad()
def quantize_model(model: nn.Module, quantizer: Quantizer, calib: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of model whose linears hold quantizer(weight, their calibration inputs)."""
    quantized = copy.deepcopy(model)
    for name, layer in quantizable_linears(quantized).items():
        if name not in calib:
            raise KeyError(f"no calibration inputs for linear layer {name!r} (calibrate this model first)")
        x = calib[name].to(layer.weight.device)
        layer.weight.copy_(quantizer(layer.weight.float(), x).to(layer.weight.dtype))
    return quantized


def model_bytes(model: nn.Module, bits_of: Callable[[torch.Tensor], float] | None = None) -> float:
    """Storage in bytes: the linears at bits_of(weight) bits per weight, every other tensor as stored."""
    linears = {id(m.weight): m.weight for m in quantizable_linears(model).values()}
    other = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in linears)
    return other + sum(w.numel() * (bits_of(w) if bits_of else 8 * w.element_size()) / 8 for w in linears.values())


def mean_bits(model: nn.Module, bits_of: Callable[[torch.Tensor], float]) -> float:
    """Bits per weight over all linear weights, weighted by their sizes."""
    ws = [m.weight for m in quantizable_linears(model).values()]
    return sum(bits_of(w) * w.numel() for w in ws) / sum(w.numel() for w in ws)


def quantization_table(model: nn.Module, calib_windows: torch.Tensor, eval_windows: torch.Tensor, group: int,
                       max_tokens: int, progress: bool = True) -> dict[str, dict[str, float]]:
    """method -> perplexity on eval_windows, bits per linear weight and size in KB, fp32 first, every method after."""
    from tqdm.auto import tqdm

    calib = calibration_inputs(model, calib_windows, max_tokens)
    rows = {"fp32": dict(ppl=perplexity(model, eval_windows), bits=32.0, kb=model_bytes(model) / 1e3)}
    for name, (quantizer, bits_of) in tqdm(weight_only_methods(group).items(), desc="quantize", disable=not progress):
        rows[name] = dict(ppl=perplexity(quantize_model(model, quantizer, calib), eval_windows),
                          bits=mean_bits(model, bits_of), kb=model_bytes(model, bits_of) / 1e3)
    return rows


def dynamic_int8(model: nn.Module) -> nn.Module:
    """PyTorch's dynamic int8 quantization of the same linears (a CPU copy; a tied embedding stays float)."""
    spec = {name: torch.ao.quantization.default_dynamic_qconfig for name in quantizable_linears(model)}
    with warnings.catch_warnings():  # torch >= 2.13 deprecates these APIs for torchao; they still work (lesson 4.3)
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu(), spec, dtype=torch.qint8)


def serialized_bytes(model: nn.Module) -> int:
    """Bytes that torch.save writes for the model's state dict."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()
