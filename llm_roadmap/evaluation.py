"""The evaluation harness of lesson 8.5: log-likelihood scoring as lm-eval-harness does it, multiple-choice accuracy
(acc and length-normalised acc_norm), exact match, bootstrap confidence intervals, calibration (ECE) and n-gram
contamination checks. Later lessons (phase 10's capstones) evaluate their models through it.

Conventions follow lm-eval 0.4 (`lm_eval.api.model.TemplateLM._encode_pair`, `lm_eval.api.task.ConfigurableTask`):
trailing spaces of the context move to the continuation; the continuation's tokens are those of encode(context +
continuation) after the first len(encode(context)); acc_norm divides each choice's log-likelihood by the number of
characters of the choice (without the target delimiter).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The token ids of a context and of its continuation, split the way lm-eval splits them."""
    if not context:
        raise ValueError("the context must not be empty (lm-eval scores an empty context after a prefix token)")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def loglikelihoods(model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 32,
                   max_length: int | None = None) -> list[float]:
    """log p(continuation | context) for each (context, continuation) pair, summed over the continuation's tokens."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    max_length = max_length or getattr(model.config, "max_position_embeddings", 2048)
    pairs = [encode_pair(tokenizer, context, continuation) for context, continuation in requests]
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        rows = [(c + t)[-(max_length + 1):][:-1] for c, t in batch]  # the last token is only predicted
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):  # right padding: causal attention never looks at the pads
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for i, (row, (_, target)) in enumerate(zip(rows, batch)):
            if not target:
                raise ValueError(f"request {start + i} has an empty continuation")
            positions = torch.arange(len(row) - len(target), len(row))
            scores.append(float(logprobs[i, positions, torch.tensor(target)].sum()))
    return scores


def multiple_choice_metrics(item_lls: Sequence[Sequence[float]], item_choices: Sequence[Sequence[str]],
                            gold: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-item predictions and 0/1 scores: acc (argmax of log-likelihood) and acc_norm (argmax per character)."""
    if not len(item_lls) == len(item_choices) == len(gold):
        raise ValueError("item_lls, item_choices and gold must have one entry per item")
    pred, pred_norm = [], []
    for lls, choices in zip(item_lls, item_choices):
        lls = np.asarray(lls, dtype=float)
        if len(lls) != len(choices):
            raise ValueError(f"{len(lls)} log-likelihoods for {len(choices)} choices")
        pred.append(int(np.argmax(lls)))
        pred_norm.append(int(np.argmax(lls / np.array([float(len(c)) for c in choices]))))
    pred, pred_norm, gold = np.array(pred), np.array(pred_norm), np.asarray(gold)
    return {"pred": pred, "pred_norm": pred_norm, "acc": (pred == gold).astype(float),
            "acc_norm": (pred_norm == gold).astype(float)}


def choice_probabilities(item_lls: Sequence[Sequence[float]], per_char_of: Sequence[Sequence[str]] | None = None
                         ) -> list[np.ndarray]:
    """Each item's distribution over its choices: softmax of the log-likelihoods (per character when given)."""
    out = []
    for i, lls in enumerate(item_lls):
        scores = np.asarray(lls, dtype=float)
        if per_char_of is not None:
            scores = scores / np.array([float(len(c)) for c in per_char_of[i]])
        scores = np.exp(scores - scores.max())
        out.append(scores / scores.sum())
    return out


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str], normalize: bool = False) -> np.ndarray:
    """Per-item 0/1 exact match (after `normalize_answer` when normalize=True)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    fix = normalize_answer if normalize else (lambda s: s)
    return np.array([float(fix(p) == fix(r)) for p, r in zip(predictions, references)])


def bootstrap_ci(scores: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[float, float, float]:
    """(mean, low, high): a percentile bootstrap confidence interval of a mean of per-item scores."""
    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        raise ValueError("no scores")
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, scores.size, size=(n_resamples, scores.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(scores.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap(scores_a: Sequence[float], scores_b: Sequence[float], n_resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean difference a - b, low, high): the same resampled items for both models, so their shared difficulty
    cancels. The difference is significant at this level when the interval excludes 0."""
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: shapes {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, n_resamples=n_resamples, confidence=confidence, seed=seed)


def reliability_bins(confidence: Sequence[float], correct: Sequence[float], n_bins: int = 10
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin (k-1)/M < p <= k/M of confidence: (count, mean confidence, accuracy); empty bins give nan."""
    conf, hit = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if conf.shape != hit.shape or conf.size == 0:
        raise ValueError("confidence and correct must be non-empty and the same shape")
    if (conf < 0).any() or (conf > 1).any():
        raise ValueError("confidences must lie in [0, 1]")
    bins = np.clip(np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], conf, side="left"), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=hit, minlength=n_bins) / count
    return count, mean_conf, accuracy


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[float], n_bins: int = 10) -> float:
    """ECE = sum over bins of (n_b / n) |accuracy_b - confidence_b| (Guo et al. 2017), equal-width bins."""
    count, mean_conf, accuracy = reliability_bins(confidence, correct, n_bins)
    filled = count > 0
    return float(np.sum(count[filled] / count.sum() * np.abs(accuracy[filled] - mean_conf[filled])))


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """The set of n-grams (tuples of n consecutive tokens)."""
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def ngram_overlap(test_texts: Sequence[str], train_texts: Sequence[str], n: int = 8) -> np.ndarray:
    """Per test text, the fraction of its word n-grams that occur in the training texts (GPT-3's contamination
    check used 13-grams; shorter texts need a smaller n). A text shorter than n words scores 0."""
    train = set().union(*(ngrams(t.lower().split(), n) for t in train_texts)) if train_texts else set()
    out = []
    for text in test_texts:
        grams = ngrams(text.lower().split(), n)
        out.append(len(grams & train) / len(grams) if grams else 0.0)
    return np.array(out)


def write_lm_eval_task(folder: str | Path, name: str, records: Sequence[dict], num_fewshot: int = 0,
                       description: str = "") -> Path:
    """Write a multiple-choice task for lm-eval (records with "context", "choices", "gold") as NAME.yaml and
    NAME.jsonl in `folder`; register it with lm_eval.tasks.TaskManager(include_path=folder). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        if set(record) < {"context", "choices", "gold"}:
            raise ValueError(f"a record needs context, choices and gold, got {sorted(record)}")
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    yaml = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
            f"test_split: test\nfewshot_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{{{context}}}}\"\n"
            f"doc_to_choice: \"{{{{choices}}}}\"\ndoc_to_target: gold\ntarget_delimiter: \" \"\n"
            f"num_fewshot: {num_fewshot}\ndescription: {json.dumps(description)}\nmetric_list:\n"
            "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / f"{name}.yaml").write_text(yaml, encoding="utf-8")
    return folder
