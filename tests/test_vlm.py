"""Tests of llm_roadmap.models.vlm: lesson 7.2's LLaVA-style model (and 7.1's ViT) as the package ships them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_roadmap.data.scenes import COLOURS, SceneGenerator
from llm_roadmap.models import vlm as V
from llm_roadmap.models.gpt import GPT, GPTConfig


def tiny_vlm(vocab_size: int = 40, n_embd: int = 32, seed: int = 0, encoder: str = "grid") -> V.LlavaStyleVLM:
    torch.manual_seed(seed)
    enc = V.GridEncoder(32) if encoder == "grid" else V.ViT(32, 8, 48, 2, 4)
    lm = GPT(GPTConfig(vocab_size=vocab_size, block_size=48, n_layer=2, n_head=4, n_embd=n_embd))
    return V.LlavaStyleVLM(enc, V.Projector(64 if encoder == "grid" else 48, n_embd), lm).eval()


def test_encoders_give_one_feature_per_cell_or_patch():
    pixels = torch.rand(3, 3, 32, 32)
    assert V.GridEncoder(32)(pixels).shape == (3, 16, 64)
    vit = V.ViT(32, 8, 48, 2, 4)
    assert vit(pixels).shape == (3, 48) and vit.features(pixels).shape == (3, 16, 48)
    with pytest.raises(ValueError, match="multiple"):
        V.conv_encoder(40)


def test_vit_equals_clip_vision_model_pooled_and_layer_minus_2():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    hf = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=48, intermediate_size=192,
                                          num_hidden_layers=3, num_attention_heads=4, hidden_act="quick_gelu")).eval()
    ours = V.vit_from_hf_clip_vision(hf).eval()
    pixels = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True)
        assert (ours(pixels) - ref.pooler_output).abs().max() < 1e-5
        assert (ours.features(pixels) - ref.hidden_states[-2][:, 1:]).abs().max() < 1e-5
        # broken twin: the last layer instead of LLaVA's second-to-last is far off
        assert (ours.features(pixels, layer=-1) - ref.hidden_states[-2][:, 1:]).abs().max() > 1e-2


def test_projector_and_splicing_equal_llava_for_conditional_generation():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4),
        text_config=LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
        image_token_id=99)).eval()
    proj = V.Projector(64, 64)
    theirs = llava.model.multi_modal_projector
    proj.load_state_dict({"fc1.weight": theirs.linear_1.weight, "fc1.bias": theirs.linear_1.bias,
                          "fc2.weight": theirs.linear_2.weight, "fc2.bias": theirs.linear_2.bias})
    ids = torch.cat([torch.randint(0, 90, (2, 3)), torch.full((2, 16), 99), torch.randint(0, 90, (2, 5))], 1)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = llava(input_ids=ids, pixel_values=pixels).logits
        patches = llava.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        logits = {}
        for name, marks in (("ours", ids), ("one late", ids.roll(1, 1))):
            embeds = V.splice_image_tokens(llava.model.get_input_embeddings()(ids), marks, proj(patches), 99)
            logits[name] = llava.lm_head(llava.model.language_model(inputs_embeds=embeds).last_hidden_state)
    ok, late = ((logits[k] - ref).abs().max().item() for k in ("ours", "one late"))
    assert ok < 1e-5 and late > 1000 * max(ok, 1e-7), (ok, late)


def test_splice_puts_features_exactly_at_the_image_positions():
    embeds = torch.randn(2, 10, 8)
    marks = torch.tensor([[5, V.IMG, V.IMG, V.IMG, 6, 7, 8, 9, 0, 0], [V.IMG, 4, 5, V.IMG, 6, V.IMG, 8, 9, 4, 4]])
    feats = torch.randn(2, 3, 8)
    out = V.splice_image_tokens(embeds, marks, feats, V.IMG)
    for b in range(2):
        where = (marks[b] == V.IMG).nonzero().flatten()
        assert torch.equal(out[b, where], feats[b])  # in order, image b's own features
        keep = marks[b] != V.IMG
        assert torch.equal(out[b, keep], embeds[b, keep])
    assert not torch.equal(embeds[0, 1], out[0, 1])  # the input is not modified in place
    with pytest.raises(ValueError, match="image tokens for"):
        V.splice_image_tokens(embeds, marks, torch.randn(2, 4, 8), V.IMG)


def test_logits_shape_and_causal_masking():
    model = tiny_vlm()
    ids = torch.cat([torch.full((2, 16), V.IMG), torch.randint(4, 40, (2, 8))], 1)
    feats = model.image_features(torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        base = model(ids, feats)
        assert base.shape == (2, 24, 40)
        later = ids.clone()
        later[:, 20] = (later[:, 20] - 3) % 36 + 4  # change token 20: positions < 20 must not move
        moved = model(later, feats)
        assert torch.equal(moved[:, :20], base[:, :20]) and (moved[:, 20:] - base[:, 20:]).abs().max() > 1e-4
        other = feats.clone()
        other[:, 10] += 1.0  # change image token 10's feature: positions < 10 unchanged, >= 10 moved
        moved = model(ids, other)
        assert torch.equal(moved[:, :10], base[:, :10]) and (moved[:, 10:] - base[:, 10:]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="no image features"):
        model(ids)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.full((1, 49), 5))


def test_batches_qa_caption_and_chat_agree():
    rng = np.random.default_rng(0)
    scenes = SceneGenerator(32).sample(20, rng)
    tok = V.SceneTokenizer.from_scenes(scenes)
    items = [(i, q) for i, s in enumerate(scenes) for q in s.questions()][:12]
    ids, targets, where = V.qa_batch(items, tok.stoi)
    chat_ids, chat_targets = V.chat_batch([[(q.text, q.answer)] for _, q in items], tok.stoi)
    for r, (_, q) in enumerate(items):
        n = int(where[r]) + 1  # the qa row is the chat row's prefix, with the same answer target at <answer>
        assert torch.equal(chat_ids[r, :n], ids[r, :n]) and chat_ids[r, n] == tok.stoi[q.answer]
        assert chat_targets[r, n - 1] == targets[r, n - 1] == tok.stoi[q.answer] and chat_targets[r, n] == V.EOS
        assert (targets[r] != V.IGNORE).sum() == 1 and (chat_targets[r] != V.IGNORE).sum() == 2
    two_turns, two_targets = V.chat_row([("what colour is the circle?", "red"), ("how many squares are there?",
                                                                                   "two")], tok.stoi)
    assert tok.decode(t for t in two_targets if t != V.IGNORE) == "red <eos> two <eos>"
    assert tok.decode(two_turns[16:]).split().count("<eos>") == 2
    cap_ids, cap_targets = V.caption_batch(scenes[:4], tok.stoi)
    assert (cap_ids[:, :16] == V.IMG).all() and (cap_targets[:, :15] == V.IGNORE).all()
    assert torch.equal(cap_targets[:, 15], cap_ids[:, 16])  # the last image token predicts the first word
    with pytest.raises(ValueError, match="not in the scene vocabulary"):
        tok.encode("what colour is the zebra?")
    with pytest.raises(ValueError, match="only the last turn"):
        V.chat_row([("how many circles are there?", None), ("how many circles are there?", "one")], tok.stoi)


@pytest.fixture
def one_thread():
    """One torch thread (tiny matmuls; parallel test workers), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_learns_a_scene_question_above_the_text_only_control(one_thread):
    """Colour of the one shape in a scene: from the image it is learnable, from the question alone it is a prior.

    Measured (seeds 0-3 of this setup): VLM 0.89-1.0 vs text-only 0.17-0.26 (200 questions, 5 s.e. = 0.18); with
    400 encoder steps instead of 800, seed 2 stayed at 0.12-0.27: the frozen encoder is what must be good enough."""
    rng = np.random.default_rng(0)
    gen = SceneGenerator(32, max_things=1)
    train, test = gen.sample(600, rng, "train"), gen.sample(200, rng, "test")
    tok = V.SceneTokenizer.from_scenes(train + test)
    pixels = torch.tensor(np.stack([s.array() for s in train]))
    torch.manual_seed(0)
    encoder, _ = V.pretrain_grid_encoder(pixels, torch.stack([V.cell_labels(s) for s in train]), steps=800, batch=32)
    with torch.no_grad():
        feats, feats_test = encoder(pixels), encoder(torch.tensor(np.stack([s.array() for s in test])))
    pick = lambda scenes: [(i, q) for i, s in enumerate(scenes) for q in s.questions() if q.kind == "colour"]
    items, test_items = pick(train), pick(test)
    models = {}
    for name, with_image in (("image", True), ("text only", False)):
        torch.manual_seed(0)
        lm = GPT(GPTConfig(vocab_size=len(tok), block_size=32, n_layer=1, n_head=4, n_embd=32))
        model = models[name] = V.LlavaStyleVLM(encoder, V.Projector(64, 32), lm)
        ids, targets, _ = V.qa_batch(items, tok.stoi, with_image=with_image)
        scene = torch.tensor([i for i, _ in items])

        def loss(model=model, ids=ids, targets=targets, with_image=with_image, scene=scene):
            sel = torch.randint(0, len(ids), (64,))
            logits = model(ids[sel], feats[scene[sel]] if with_image else None)
            return F.cross_entropy(logits.flatten(0, 1), targets[sel].flatten())

        V.train_steps([*lm.parameters(), *model.projector.parameters()], STEPS, loss, 3e-3)
    acc = V.accuracy_by_kind(models["image"], test_items, tok.stoi, feats_test)["colour"]
    control = V.accuracy_by_kind(models["text only"], test_items, tok.stoi, None)["colour"]
    shuffled = V.accuracy_by_kind(models["image"], test_items, tok.stoi, feats_test.roll(1, 0))["colour"]
    stderr = (0.25 / len(test_items)) ** 0.5
    assert acc > control + 5 * stderr, (acc, control)
    assert shuffled < control + 3 * stderr, (shuffled, control)  # another scene's image loses the gain
    i, q = test_items[0]
    # trained on single answers without <eos>, it repeats; the first word is the answer accuracy_by_kind scored
    assert models["image"].answer(tok, feats_test[i:i + 1], q.text).split()[0] in COLOURS


STEPS = 300


def test_generate_stops_at_eos_and_is_greedy():
    model = tiny_vlm()
    ids = torch.cat([torch.full((2, 16), V.IMG), torch.randint(4, 40, (2, 5))], 1)
    feats = torch.randn(2, 16, 64)
    new = model.generate(ids, feats, max_new_tokens=6, stop_id=None)
    with torch.no_grad():  # brute force: one argmax at a time
        seq = ids
        for _ in range(6):
            seq = torch.cat([seq, model(seq, feats)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(new, seq[:, ids.shape[1]:])
    with torch.no_grad():
        model.lm.ln_f.bias.fill_(1.0)  # the final hidden state sums to n_embd (LayerNorm's output has mean 0) ...
        model.lm.lm_head.weight[V.EOS] = 100.0  # ... so <eos> always wins (tied head: the embedding moves too)
    assert torch.equal(model.generate(ids, feats, max_new_tokens=6), torch.full((2, 1), V.EOS))


@pytest.mark.parametrize("encoder", ["grid", "vit"])
def test_save_and_load_via_safetensors(tmp_path, encoder):
    model = tiny_vlm(encoder=encoder)
    tok = V.SceneTokenizer(list(V.SPECIALS) + [f"w{i}" for i in range(36)])
    folder = V.save_vlm(model, tok, tmp_path / "vlm")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded, tok2 = V.load_vlm(folder)
    assert tok2.vocab == tok.vocab and loaded.lm.lm_head.weight is loaded.lm.wte.weight
    pixels = torch.rand(2, 3, 32, 32)
    ids = torch.cat([torch.full((2, 16), V.IMG), torch.randint(4, 40, (2, 5))], 1)
    with torch.no_grad():
        assert torch.equal(loaded(ids, loaded.image_features(pixels)), model(ids, model.image_features(pixels)))
