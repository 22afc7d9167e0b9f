"""A notebook's teaching copy of a package component must agree with the package.

Lesson 3.2 writes the GPT visibly, in cells whose source starts with `# teaching-copy: gpt`; the package ships the
same model as `llm_roadmap.models.gpt` for later lessons. These tests execute only those marked cells and check that
both copies have the same parameter names and shapes, the same initialisation, the same logits and loss with the
same weights, the same Hugging Face GPT-2 loading, and the same decoding, so that neither can drift from the other.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import nbformat
import pytest
import torch

from llm_roadmap.models import gpt as package

ROOT = Path(__file__).resolve().parents[1]
GPT_NOTEBOOK = ROOT / "phase03_llms" / "02_pretraining_gpt.ipynb"
GPT_MARKER = "# teaching-copy: gpt"
GPT_NAMES = ("GPTConfig", "CausalSelfAttention", "MLP", "Block", "GPT", "filter_logits", "generate",
             "gpt_from_hf_gpt2")
SIZES = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)


def load_teaching_copy(notebook: Path, marker: str) -> types.ModuleType:
    """Execute, in a fresh module, the code cells of `notebook` whose source starts with `marker`."""
    cells = [c.source for c in nbformat.read(notebook, as_version=4).cells
             if c.cell_type == "code" and c.source.startswith(marker)]
    assert cells, f"{notebook.name} has no cell starting with {marker!r}"
    module = types.ModuleType(f"teaching_copy_{notebook.stem}")
    sys.modules[module.__name__] = module  # dataclasses look their class's module up in sys.modules
    try:
        exec(compile("\n\n".join(cells), str(notebook), "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


@pytest.fixture(scope="module")
def nb():
    return load_teaching_copy(GPT_NOTEBOOK, GPT_MARKER)


def both_models(nb, **overrides):
    """(package model, notebook model), each built right after torch.manual_seed(0)."""
    sizes = {**SIZES, **overrides}
    torch.manual_seed(0)
    ours = package.GPT(package.GPTConfig(**sizes))
    torch.manual_seed(0)
    theirs = nb.GPT(nb.GPTConfig(**sizes))
    return ours.eval(), theirs.eval()


def test_teaching_copy_defines_the_components(nb):
    missing = [name for name in GPT_NAMES if not hasattr(nb, name)]
    assert not missing, f"the teaching-copy cells no longer define {missing}"
    assert nb.GPTConfig.__dataclass_fields__.keys() == package.GPTConfig.__dataclass_fields__.keys()


def test_same_parameter_names_shapes_tying_and_initialisation(nb):
    pkg, copy = both_models(nb)
    pkg_state, copy_state = pkg.state_dict(), copy.state_dict()
    assert list(pkg_state) == list(copy_state), "parameter names or their order differ"
    for name, tensor in pkg_state.items():
        assert copy_state[name].shape == tensor.shape, name
        # same construction order and init calls after the same seed: bitwise the same initial weights
        assert torch.equal(copy_state[name], tensor), f"initialisation of {name} differs"
    assert copy.lm_head.weight is copy.wte.weight, "the notebook's head is no longer tied to the token embedding"
    assert sum(p.numel() for p in copy.parameters()) == sum(p.numel() for p in pkg.parameters())


@pytest.mark.parametrize("overrides", [{}, dict(bias=False), dict(n_layer=3, n_head=2, dropout=0.1,
                                                                   layer_norm_epsilon=1e-3)])
def test_same_logits_and_loss_with_the_same_weights(nb, overrides):
    pkg, copy = both_models(nb, **overrides)
    with torch.no_grad():  # random weights far from init, so every component matters
        for p in pkg.parameters():
            p.normal_(0.0, 0.3)
    copy.load_state_dict(pkg.state_dict())  # strict: names and shapes must match
    idx = torch.randint(0, SIZES["vocab_size"], (3, SIZES["block_size"]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pkg_logits, pkg_loss = pkg(idx[:, :-1], idx[:, 1:])
        copy_logits, copy_loss = copy(idx[:, :-1], idx[:, 1:])
        torch.testing.assert_close(copy_logits, pkg_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(copy_loss, pkg_loss, atol=1e-5, rtol=1e-5)
        # the comparison is sensitive: a small change to one LayerNorm gain shows in the logits
        copy.h[0].ln_1.weight.mul_(1.01)
        assert (copy(idx)[0] - pkg(idx)[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="block_size"):
        copy(torch.zeros(1, SIZES["block_size"] + 1, dtype=torch.long))


def test_same_hf_gpt2_loading_and_decoding(nb):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=61, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                    bos_token_id=None, eos_token_id=None)).eval()
    with torch.no_grad():  # away from the 0.02 init, where e.g. the GELU variant would not show in the logits
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    pkg, copy = package.GPT.from_hf_gpt2(hf).eval(), nb.gpt_from_hf_gpt2(hf).eval()
    idx = torch.randint(0, 61, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(copy(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(copy(idx)[0], pkg(idx)[0], atol=1e-6, rtol=1e-6)
    prompt = idx[:1, :4]
    assert torch.equal(nb.generate(copy, prompt, 10, temperature=0), pkg.generate(prompt, 10, temperature=0))
    for decoding in [dict(temperature=0.8), dict(temperature=1.0, top_k=5), dict(temperature=0.7, top_p=0.9)]:
        sampled_copy = nb.generate(copy, prompt.repeat(4, 1), 10, generator=torch.Generator().manual_seed(3),
                                   **decoding)
        sampled_pkg = pkg.generate(prompt.repeat(4, 1), 10, generator=torch.Generator().manual_seed(3), **decoding)
        assert torch.equal(sampled_copy, sampled_pkg), decoding


def test_same_top_k_top_p_filters(nb):
    logits = 2 * torch.randn(32, 40, generator=torch.Generator().manual_seed(4))
    for top_k, top_p in [(1, None), (7, None), (None, 0.3), (None, 0.95), (10, 0.8), (40, 1.0)]:
        assert torch.equal(nb.filter_logits(logits, top_k, top_p), package.filter_logits(logits, top_k, top_p)), (
            top_k, top_p)
