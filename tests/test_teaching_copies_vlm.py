"""Phase 7's teaching copies must agree with llm_roadmap.models.vlm, which the vision-text capstone imports.

Markers (first line of the cells; see the lead's notes for which cells): lesson 7.1 `# teaching-copy: vit`
(quick_gelu, Attention, Block, ViT); lesson 7.2 `# teaching-copy: llava` (Projector, splice_image_tokens) and
`# teaching-copy: vlm-scenes` (cell_labels, conv_encoder, pad_rows, caption_batch, qa_batch, vlm_logits, train).
The 7.2 cells read the notebook's globals at call time (cfg, stoi, PAD/IMG/ANS/EOS, GRID); the loader seeds them.
Each test is skipped while its marker is absent.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_roadmap.data.scenes import COLOURS, SHAPES, SceneGenerator
from llm_roadmap.models import vlm as V
from llm_roadmap.models.gpt import GPT, GPTConfig

PHASE = Path(__file__).resolve().parents[1] / "phase07_multimodal"
CLIP_NB, VLM_NB = PHASE / "01_clip.ipynb", PHASE / "02_vision_language_models.ipynb"


def marked_cells(notebook: Path, marker: str) -> list[str]:
    return [c.source for c in nbformat.read(notebook, as_version=4).cells
            if c.cell_type == "code" and c.source.startswith(marker)]


def load_cells(notebook: Path, marker: str, namespace: dict | None = None) -> types.ModuleType:
    """Execute the cells starting with `marker` in a fresh module whose globals start as `namespace`; skip if none."""
    cells = marked_cells(notebook, marker)
    if not cells:
        pytest.skip(f"markers not yet in notebooks: {notebook.name} has no cell starting with {marker!r}")
    module = types.ModuleType(f"teaching_copy_{notebook.stem}")
    module.__dict__.update(namespace or {})
    sys.modules[module.__name__] = module
    try:
        exec(compile("\n\n".join(cells), str(notebook), "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


def scene_namespace(scenes) -> dict:
    """The 7.2 globals the marked cells read: cfg, the special ids, the grid, the vocabulary, the imports."""
    tok = V.SceneTokenizer.from_scenes(scenes)
    return dict(cfg={"image_size": 32}, PAD=V.PAD, IMG=V.IMG, ANS=V.ANS, EOS=V.EOS, GRID=16, CELL=8,
                COLOUR_NAMES=list(COLOURS), stoi=tok.stoi, vocab=tok.vocab, words=V.words, np=np, torch=torch,
                nn=nn, F=F, COLOURS=COLOURS, SHAPES=SHAPES)


@pytest.fixture(scope="module")
def scenes():
    return SceneGenerator(32).sample(40, np.random.default_rng(0))


def test_vit_teaching_copy_equals_the_package():
    nb = load_cells(CLIP_NB, "# teaching-copy: vit")
    args = dict(image_size=32, patch=8, width=48, layers=2, heads=4)
    torch.manual_seed(0)
    theirs = nb.ViT(**args).eval()
    torch.manual_seed(0)
    ours = V.ViT(**args).eval()
    assert list(theirs.state_dict()) == list(ours.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(theirs.state_dict().values(), ours.state_dict().values()))
    with torch.no_grad():
        for p in theirs.parameters():  # weights far from init, so every component matters
            p.normal_(0, 0.3)
        ours.load_state_dict(theirs.state_dict())
        pixels = torch.rand(3, 3, 32, 32)
        assert torch.equal(nb.patchify(pixels) if hasattr(nb, "patchify") else theirs.patchify(pixels),
                           ours.patchify(pixels))
        assert (theirs(pixels) - ours(pixels)).abs().max() < 1e-6
        x = torch.randn(2, 5, 48)
        assert torch.equal(nb.quick_gelu(x), V.quick_gelu(x))


def test_llava_teaching_copy_equals_the_package():
    nb = load_cells(VLM_NB, "# teaching-copy: llava")
    torch.manual_seed(0)
    theirs = nb.Projector(64, 32)
    torch.manual_seed(0)
    ours = V.Projector(64, 32)
    z = torch.randn(2, 16, 64)
    assert torch.equal(theirs(z), ours(z))
    marks = torch.cat([torch.randint(4, 20, (2, 3)), torch.full((2, 16), 99), torch.randint(4, 20, (2, 4))], 1)
    embeds, feats = torch.randn(2, 23, 32), torch.randn(2, 16, 32)
    theirs_out = nb.splice_image_tokens(embeds, marks, feats, 99)
    assert torch.equal(theirs_out, V.splice_image_tokens(embeds, marks, feats, 99))
    for bad in (marks[:, :-5], torch.cat([marks, torch.full((2, 1), 99)], 1)):
        with pytest.raises(ValueError):
            nb.splice_image_tokens(torch.randn(2, bad.shape[1], 32), bad, feats, 99)


def test_vlm_scene_cells_equal_the_package(scenes):
    llava = load_cells(VLM_NB, "# teaching-copy: llava")  # vlm_logits calls the notebook's splice_image_tokens
    nb = load_cells(VLM_NB, "# teaching-copy: vlm-scenes",
                    scene_namespace(scenes) | dict(splice_image_tokens=llava.splice_image_tokens))
    stoi = nb.stoi
    assert all(torch.equal(nb.cell_labels(s), V.cell_labels(s)) for s in scenes)
    torch.manual_seed(0)
    theirs_enc = nb.conv_encoder()
    torch.manual_seed(0)
    ours_enc = V.GridEncoder(32)
    pixels = torch.tensor(np.stack([s.array() for s in scenes[:8]]))
    with torch.no_grad():
        assert torch.equal(theirs_enc(pixels).flatten(2).transpose(1, 2), ours_enc(pixels))
    items = [(i, q) for i, s in enumerate(scenes) for q in s.questions()]
    for with_image in (True, False):
        assert all(torch.equal(a, b) for a, b in zip(nb.qa_batch(items, with_image),
                                                     V.qa_batch(items, stoi, with_image)))
        assert all(torch.equal(a, b) for a, b in zip(nb.caption_batch(scenes, with_image),
                                                     V.caption_batch(scenes, stoi, with_image)))
    torch.manual_seed(0)
    lm = GPT(GPTConfig(vocab_size=len(stoi), block_size=48, n_layer=2, n_head=4, n_embd=32))
    proj = V.Projector(64, 32)
    ids = nb.qa_batch(items[:6])[0]
    feats = torch.randn(6, 16, 64)
    with torch.no_grad():
        assert torch.equal(nb.vlm_logits(lm, ids, feats, proj), V.vlm_logits(lm, ids, feats, proj))
        text_ids = nb.qa_batch(items[:6], False)[0]
        assert torch.equal(nb.vlm_logits(lm, text_ids), V.vlm_logits(lm, text_ids))
    # the training loop: same seed, same model, same losses
    runs, targets = [], nb.qa_batch(items[:6], False)[1]
    for train in (nb.train, V.train_steps):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=len(stoi), block_size=48, n_layer=1, n_head=4, n_embd=32))
        runs.append(train(model.parameters(), 5, lambda m=model: F.cross_entropy(
            V.vlm_logits(m, text_ids).flatten(0, 1), targets.flatten()), 3e-3))
    assert runs[0] == runs[1]
