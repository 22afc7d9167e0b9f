"""A small LLaVA-style vision-language model, as built in lessons 7.1 (the ViT) and 7.2 (everything else).

LLaVA (Liu et al. 2023, arXiv:2304.08485; LLaVA-1.5, arXiv:2310.03744): a vision encoder gives one feature per patch
(or grid cell), an MLP projector maps each to the language model's width, and the projected features *replace* the
embeddings of the `<image>` placeholder tokens before the language model (the course GPT, `models.gpt`) runs:

    h0_t = W2 GELU(W1 z_k)   if token t is the k-th <image>,   E[x_t] otherwise.

Sequence layout (7.2's, extended to chat): the image's placeholders come first, then the turns,
`<image> x N | question <answer> answer <eos> | question <answer> answer <eos> ...`. Lesson 7.2 trains single turns
(`qa_batch`: the answer is the target at the `<answer>` position); `chat_batch` adds an `<eos>` target after each
answer so that generation knows where a turn ends, and is equal to `qa_batch` on the first turn.

Training (7.2): pretrain the frozen encoder (`pretrain_grid_encoder`), pretrain the GPT on scene text, stage 1 trains
the projector alone on captions (`caption_batch`), stage 2 projector + LM on questions (`qa_batch` / `chat_batch`);
`train_steps` is the loop. `LlavaStyleVLM` bundles encoder, projector and LM with `generate` and safetensors
save/load. Notebook cells marked `# teaching-copy: ...` are proven equal to this file by
`tests/test_teaching_copies_vlm.py`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_roadmap.data.scenes import COLOURS, SHAPES
from llm_roadmap.models.gpt import GPT, GPTConfig

SPECIALS = ("<pad>", "<image>", "<answer>", "<eos>")
PAD, IMG, ANS, EOS = range(4)
IGNORE = -100  # cross-entropy's ignore_index: positions without a target


# ----------------------------------------------------------------------------------------------------------- text
def words(text: str) -> list[str]:
    """Split scene text into words, with '?' its own word (7.2's tokenizer)."""
    return text.replace("?", " ?").split()


class SceneTokenizer:
    """One id per word of the closed scene vocabulary; ids 0-3 are `SPECIALS`."""

    def __init__(self, vocab: Sequence[str]):
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"the vocabulary must start with {SPECIALS}, got {list(vocab[:4])}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("the vocabulary has repeated words")
        self.vocab = list(vocab)
        self.stoi = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def from_scenes(cls, scenes: Iterable) -> SceneTokenizer:
        """7.2's vocabulary: the specials, then every word of the scenes' captions, questions and answers, sorted."""
        scenes = list(scenes)
        found = {w for s in scenes for q in s.questions() for w in words(s.caption()) + words(q.text) + [q.answer]}
        return cls(list(SPECIALS) + sorted(found))

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Word ids of `text`; a word outside the vocabulary raises ValueError (no silent <unk>)."""
        unknown = [w for w in words(text) if w not in self.stoi]
        if unknown:
            raise ValueError(f"words {unknown} are not in the scene vocabulary ({len(self)} words)")
        return [self.stoi[w] for w in words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Words of `ids` joined by spaces (specials included, so nothing is hidden)."""
        return " ".join(self.vocab[int(i)] for i in ids)


# ------------------------------------------------------------------------------------------------- 7.1: the ViT
def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's cheap approximation of GELU: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with CLIP's q/k/v/out projection names; optionally causal."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = (p(x).view(B, T, self.heads, D // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with quick_gelu (7.1's `Block`)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = Attention(width, heads)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.fc2(quick_gelu(self.fc1(self.layer_norm2(x))))


class ViT(nn.Module):
    """7.1's Vision Transformer (CLIP layout): patchify, class token, positions, ln_pre, blocks, ln_post on CLS."""

    def __init__(self, image_size: int, patch: int, width: int, layers: int, heads: int):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}")
        self.patch, n_patches = patch, (image_size // patch) ** 2
        self.patch_embed = nn.Linear(3 * patch * patch, width, bias=False)
        self.class_token = nn.Parameter(0.02 * torch.randn(width))
        self.positions = nn.Parameter(0.02 * torch.randn(n_patches + 1, width))
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.blocks = nn.ModuleList(ViTBlock(width, heads) for _ in range(layers))

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, 3*P*P): patches in row-major order, each flattened channel-first."""
        B, C, H, W = images.shape
        P = self.patch
        patches = images.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 1, 3, 5)
        return patches.reshape(B, (H // P) * (W // P), C * P * P)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[class token; patch embeddings] + position embeddings: (B, N + 1, width)."""
        patches = self.patch_embed(self.patchify(images))
        cls = self.class_token.expand(len(images), 1, -1)
        return torch.cat([cls, patches], dim=1) + self.positions

    def hidden_states(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The input of every block (after ln_pre) and the last block's output: layers + 1 tensors, as in HF."""
        states = [self.ln_pre(self.embed(images))]
        for block in self.blocks:
            states.append(block(states[-1]))
        return states

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The image's feature: ln_post of the class token's output (CLIP's pooled output)."""
        return self.ln_post(self.hidden_states(images)[-1][:, 0])

    def features(self, images: torch.Tensor, layer: int = -2) -> torch.Tensor:
        """LLaVA-1.5's image features: hidden state `layer` (second-to-last), class token dropped: (B, N, width)."""
        return self.hidden_states(images)[layer][:, 1:]


def vit_from_hf_clip_vision(hf_model: nn.Module) -> ViT:
    """Our ViT with the weights of a transformers CLIPVisionModel (the patch conv flattened to a matrix)."""
    c = hf_model.config
    vit = ViT(c.image_size, c.patch_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads)
    rename = {"embeddings.class_embedding": "class_token", "embeddings.position_embedding.weight": "positions",
              "embeddings.patch_embedding.weight": "patch_embed.weight", "pre_layrnorm": "ln_pre",
              "post_layernorm": "ln_post", "encoder.layers": "blocks", "mlp.": ""}
    state = {}
    for name, tensor in hf_model.state_dict().items():
        for old, new in rename.items():
            name = name.replace(old, new)
        state[name.removeprefix("vision_model.")] = tensor.flatten(1) if name.endswith("patch_embed.weight") else tensor
    vit.load_state_dict(state)  # strict: every weight must find its place
    return vit


# --------------------------------------------------------------------------- 7.2: the grid encoder and its labels
def cell_labels(scene, grid_side: int = 4) -> torch.Tensor:
    """(2, grid_side**2): per grid cell, 1 + colour index and 1 + shape index of the object centred there (0 = none)."""
    cell = scene.image_size // grid_side
    colour_names = list(COLOURS)
    y = np.zeros((2, grid_side * grid_side), np.int64)
    for t in scene.things:
        index = int(t.y // cell) * grid_side + int(t.x // cell)
        y[0, index], y[1, index] = colour_names.index(t.colour) + 1, SHAPES.index(t.shape) + 1
    return torch.tensor(y)


def conv_encoder(image_size: int = 32, width: int = 16, d: int = 64) -> nn.Sequential:
    """7.2's encoder: image_size px -> a 4x4 grid of d-dim features (three conv + max-pool stages, a 1x1 conv)."""
    if image_size % 16:
        raise ValueError(f"image_size {image_size} must be a multiple of 16 (a 4x4 grid after pooling)")
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(2 * width, d, 3, padding=1), nn.ReLU(), nn.MaxPool2d(image_size // 16),
                         nn.Conv2d(d, d, 1))


class GridEncoder(nn.Module):
    """7.2's conv encoder as a module: (B, 3, H, W) -> (B, 16, d), cells in reading order."""

    def __init__(self, image_size: int = 32, width: int = 16, d: int = 64):
        super().__init__()
        self.net = conv_encoder(image_size, width, d)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(2).transpose(1, 2)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The image features the projector reads (the same as forward)."""
        return self(images)


def pretrain_grid_encoder(pixels: torch.Tensor, labels: torch.Tensor, steps: int, batch: int, lr: float = 1e-2,
                          image_size: int = 32, d: int = 64) -> tuple[GridEncoder, nn.Linear]:
    """7.2's encoder pretraining: per cell, classify colour (7 ways) and shape (5 ways); returns the frozen encoder
    and the linear probe. Seed the global RNG first: init and batches draw from it."""
    encoder, probe = GridEncoder(image_size, d=d), nn.Linear(d, len(COLOURS) + 1 + len(SHAPES) + 1)
    n_colour = len(COLOURS) + 1
    opt = torch.optim.AdamW([*encoder.parameters(), *probe.parameters()], lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    for _ in range(steps):
        idx = torch.randint(0, len(pixels), (batch,))
        out = probe(encoder(pixels[idx]))
        loss = (F.cross_entropy(out[..., :n_colour].flatten(0, 1), labels[idx, 0].flatten())
                + F.cross_entropy(out[..., n_colour:].flatten(0, 1), labels[idx, 1].flatten()))
        opt.zero_grad(), loss.backward(), opt.step(), sched.step()
    return encoder.requires_grad_(False).eval(), probe


# ----------------------------------------------------------------------------------- 7.2: projector and splicing
class Projector(nn.Module):
    """LLaVA-1.5's connector: Linear, GELU, Linear (LLaVA-1 used a single Linear)."""

    def __init__(self, d_vision: int, d_text: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_vision, d_text), nn.Linear(d_text, d_text)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(z)))


def splice_image_tokens(embeds: torch.Tensor, marks: torch.Tensor, image_features: torch.Tensor,
                        image_token_id: int) -> torch.Tensor:
    """Put image b's features, in order, where `marks` (B, T) holds the image token in sequence b."""
    is_image = marks == image_token_id
    counts = is_image.sum(1)
    if (counts != image_features.shape[1]).any():
        raise ValueError(f"{counts.tolist()} image tokens for {image_features.shape[1]} features per image")
    out = embeds.clone()
    out[is_image] = image_features.reshape(-1, image_features.shape[-1]).to(out.dtype)  # row-major: b, then t
    return out


def vlm_logits(lm: GPT, ids: torch.Tensor, image_feats: torch.Tensor | None = None, proj: nn.Module | None = None,
               image_token_id: int = IMG) -> torch.Tensor:
    """LLaVA: embed the text, splice the projected image features at the <image> positions, run the GPT."""
    if ids.shape[1] > lm.cfg.block_size:
        raise ValueError(f"sequence length {ids.shape[1]} exceeds the GPT's block_size {lm.cfg.block_size}")
    x = lm.wte(ids)
    if image_feats is not None:
        x = splice_image_tokens(x, ids, proj(image_feats), image_token_id)
    x = x + lm.wpe(torch.arange(ids.shape[1], device=ids.device))
    for block in lm.h:
        x = block(x)
    return lm.lm_head(lm.ln_f(x))


# ---------------------------------------------------------------------------------------------- 7.2: batches
def pad_rows(rows: Sequence[Sequence[int]], pad: int = PAD) -> torch.Tensor:
    """Right-pad lists of ids into one (len(rows), longest) tensor."""
    ids = torch.full((len(rows), max(map(len, rows))), pad)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    return ids


def caption_batch(scenes: Sequence, stoi: dict[str, int], with_image: bool = True,
                  n_image_tokens: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """<image> x N, caption, <eos>; targets: the caption tokens (next-token), never the image positions.

    As in 7.2, the targets are the ids rolled left, so the longest row's last position targets its first token."""
    n = n_image_tokens * with_image
    ids = pad_rows([[IMG] * n + [stoi[w] for w in words(s.caption())] + [EOS] for s in scenes])
    targets = ids.roll(-1, 1).masked_fill(ids.roll(-1, 1) == PAD, IGNORE)
    targets[:, :n] = IGNORE  # the last image token predicts the caption's first word
    if with_image:
        targets[:, n - 1] = ids[:, n]
    return ids, targets


def qa_batch(items: Sequence[tuple[int, object]], stoi: dict[str, int], with_image: bool = True,
             n_image_tokens: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scene index, Question) pairs -> ids `<image> x N, question, <answer>`, the one-word answer as the target at
    the <answer> position, and that position per row."""
    rows = [[IMG] * n_image_tokens * with_image + [stoi[w] for w in words(q.text)] + [ANS] for _, q in items]
    ids, where = pad_rows(rows), torch.tensor([len(r) - 1 for r in rows])
    targets = torch.full_like(ids, IGNORE)
    targets[torch.arange(len(rows)), where] = torch.tensor([stoi[q.answer] for _, q in items])
    return ids, targets, where


def chat_row(turns: Sequence[tuple[str, str | None]], stoi: dict[str, int], with_image: bool = True,
             n_image_tokens: int = 16) -> tuple[list[int], list[int]]:
    """One conversation about one image: ids `<image> x N (q <answer> a <eos>)*` and per-position targets (answer
    words and each turn's closing <eos>, predicted from the position before; IGNORE elsewhere). A last turn whose
    answer is None ends at <answer>: the prompt to generate from."""
    ids = [IMG] * n_image_tokens * with_image
    targets = [IGNORE] * len(ids)
    for i, (question, answer) in enumerate(turns):
        if answer is None and i != len(turns) - 1:
            raise ValueError("only the last turn may be unanswered")
        q = [stoi[w] for w in words(question)] + [ANS]
        ids += q
        targets += [IGNORE] * len(q)
        if answer is not None:
            a = [stoi[w] for w in words(answer)] + [EOS]
            targets[-1] = a[0]  # <answer> predicts the answer's first word
            ids += a
            targets += a[1:] + [IGNORE]  # each answer word predicts the next; <eos> predicts nothing
    return ids, targets


def chat_batch(conversations: Sequence[Sequence[tuple[str, str | None]]], stoi: dict[str, int],
               with_image: bool = True, n_image_tokens: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """`chat_row` for each conversation, right-padded (targets padded with IGNORE)."""
    rows = [chat_row(c, stoi, with_image, n_image_tokens) for c in conversations]
    return pad_rows([r for r, _ in rows]), pad_rows([t for _, t in rows], pad=IGNORE)


def train_steps(params: Iterable[torch.Tensor], steps: int, loss_fn: Callable[[], torch.Tensor],
                lr: float) -> list[float]:
    """7.2's loop: AdamW (no weight decay) on `loss_fn()`, `steps` times; returns the losses."""
    opt = torch.optim.AdamW(params, lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad(), loss.backward(), opt.step()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------------------------------------------- the model
class LlavaStyleVLM(nn.Module):
    """Vision encoder (frozen in 7.2) + projector + course GPT, with <image> x n_image_tokens spliced in."""

    def __init__(self, encoder: nn.Module | None, projector: Projector, lm: GPT, n_image_tokens: int = 16,
                 image_token_id: int = IMG):
        super().__init__()
        self.encoder, self.projector, self.lm = encoder, projector, lm
        self.n_image_tokens, self.image_token_id = n_image_tokens, image_token_id

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the encoder's (B, n_image_tokens, d_vision) features."""
        if self.encoder is None:
            raise ValueError("this VLM has no vision encoder: pass image features, not pixels")
        feats = self.encoder.features(pixels)
        if feats.shape[1] != self.n_image_tokens:
            raise ValueError(f"the encoder gives {feats.shape[1]} features, the model expects {self.n_image_tokens}")
        return feats

    def forward(self, ids: torch.Tensor, image_feats: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab); without image features, the GPT on the text alone (no <image> tokens allowed)."""
        if image_feats is None and (ids == self.image_token_id).any():
            raise ValueError("the ids hold <image> tokens but no image features were given")
        return vlm_logits(self.lm, ids, image_feats, self.projector, self.image_token_id)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, image_feats: torch.Tensor | None = None, max_new_tokens: int = 4,
                 stop_id: int | None = EOS) -> torch.Tensor:
        """Greedy continuation of one or more prompts (all of one length); stops once every row produced stop_id.
        Returns the new tokens only, (B, <= max_new_tokens); after a row's stop_id it repeats stop_id."""
        out = []
        done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            next_id = self(ids, image_feats)[:, -1].argmax(-1)
            if stop_id is not None:
                next_id = next_id.masked_fill(done, stop_id)
                done |= next_id == stop_id
            out.append(next_id)
            ids = torch.cat([ids, next_id[:, None]], dim=1)
            if stop_id is not None and done.all():
                break
        return torch.stack(out, dim=1) if out else ids[:, :0]

    def answer(self, tokenizer: SceneTokenizer, image_feats: torch.Tensor, question: str,
               history: Sequence[tuple[str, str]] = (), max_new_tokens: int = 4) -> str:
        """A reply to `question` about one image (features (1, N, d)), after the earlier turns in `history`."""
        ids, _ = chat_row([*history, (question, None)], tokenizer.stoi, True, self.n_image_tokens)
        new = self.generate(torch.tensor([ids], device=image_feats.device), image_feats, max_new_tokens)[0].tolist()
        return tokenizer.decode(new[: new.index(EOS)] if EOS in new else new)


def accuracy_by_kind(model: LlavaStyleVLM, items: Sequence[tuple[int, object]], stoi: dict[str, int],
                     feats: torch.Tensor | None) -> dict[str, float]:
    """7.2's metric: the argmax word after <answer> vs the truth, per question kind and over all; `feats` holds the
    image features of the scene each item indexes (None: the text-only model, no image tokens)."""
    with torch.no_grad():
        ids, targets, where = qa_batch(items, stoi, with_image=feats is not None, n_image_tokens=model.n_image_tokens)
        image_feats = None if feats is None else feats[torch.tensor([i for i, _ in items])]
        logits = model(ids, image_feats)
    rows = torch.arange(len(ids))
    correct = (logits[rows, where].argmax(-1) == targets[rows, where]).cpu().numpy()
    kinds = np.array([q.kind for _, q in items])
    return {str(k): float(correct[kinds == k].mean()) for k in sorted(set(kinds))} | {"all": float(correct.mean())}


# ------------------------------------------------------------------------------------------------ save / load
def save_vlm(model: LlavaStyleVLM, tokenizer: SceneTokenizer, folder: str | Path) -> Path:
    """Write model.safetensors (weights) and config.json (sizes, encoder kind, vocabulary) into `folder`."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    enc = model.encoder
    if enc is None:
        encoder = None
    elif isinstance(enc, GridEncoder):
        convs = [m for m in enc.net if isinstance(m, nn.Conv2d)]
        encoder = dict(kind="grid", image_size=16 * enc.net[8].kernel_size, width=convs[0].out_channels,
                       d=convs[-1].out_channels)
    elif isinstance(enc, ViT):
        width = enc.patch_embed.out_features
        encoder = dict(kind="vit", image_size=enc.patch * math.isqrt(enc.positions.shape[0] - 1), patch=enc.patch,
                       width=width, layers=len(enc.blocks), heads=enc.blocks[0].self_attn.heads)
    else:
        raise TypeError(f"cannot save an encoder of type {type(enc).__name__}; use GridEncoder or ViT")
    config = dict(gpt=vars(model.lm.cfg), d_vision=model.projector.fc1.in_features, encoder=encoder,
                  n_image_tokens=model.n_image_tokens, image_token_id=model.image_token_id, vocab=tokenizer.vocab)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    save_model(model, str(folder / "model.safetensors"))  # handles the GPT's tied head
    return folder


def load_vlm(folder: str | Path, device: str = "cpu") -> tuple[LlavaStyleVLM, SceneTokenizer]:
    """The model and tokenizer `save_vlm` wrote (safetensors: no pickle, no code runs on load)."""
    from safetensors.torch import load_model

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    enc = config["encoder"]
    if enc is None:
        encoder = None
    elif enc["kind"] == "grid":
        encoder = GridEncoder(enc["image_size"], enc["width"], enc["d"])
    elif enc["kind"] == "vit":
        encoder = ViT(enc["image_size"], enc["patch"], enc["width"], enc["layers"], enc["heads"])
    else:
        raise ValueError(f"unknown encoder kind {enc['kind']!r} in {folder / 'config.json'}")
    lm = GPT(GPTConfig(**config["gpt"]))
    model = LlavaStyleVLM(encoder, Projector(config["d_vision"], lm.cfg.n_embd), lm, config["n_image_tokens"],
                          config["image_token_id"])
    load_model(model, str(folder / "model.safetensors"), device=device)
    if encoder is not None:
        encoder.requires_grad_(False).eval()
    return model.to(device).eval(), SceneTokenizer(config["vocab"])
