"""Stand-ins for the multimodal hub models of phase 7 (CLIP, a LLaVA, Whisper): the real model classes at width 64, with
processors of the real types built offline (tokenizers trained here on Python's help text, default image processors
and feature extractors). Used by roadmap_tools.standin_hub; see its docstring."""

from __future__ import annotations

WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
                    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
          "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
          "{% if part['type'] == 'image' %}{{ '<image>' }}"
          "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
          "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _bpe(specials: list[str], vocab_size: int = 600):
    """A byte-level BPE trained on Python's help text with `specials` first (ids 0..len-1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from llm_roadmap.data import pydoc_text

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([pydoc_text()[:150_000]], trainer)
    return bpe


def clip():
    """CLIPModel (ViT image tower, 32 px, patch 8) and a CLIPProcessor."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPTokenizerFast,
        CLIPVisionConfig,
    )

    tokenizer = CLIPTokenizerFast(tokenizer_object=_bpe(["<|startoftext|>", "<|endoftext|>"]),
                                  bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", model_max_length=77)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32))
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def llava():
    """LlavaForConditionalGeneration (SigLIP tower, 32 px, patch 8: 16 image tokens; a Qwen2 LM) and a LlavaProcessor
    with a ChatML template that places <image>."""
    import torch
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
        Qwen2TokenizerFast,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
    tokenizer = Qwen2TokenizerFast(tokenizer_object=_bpe(specials), eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None, model_max_length=4096)
    tokenizer.chat_template = CHATML
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    torch.manual_seed(0)
    vision = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                image_size=32, patch_size=8)
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       tie_word_embeddings=True, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                       pad_token_id=0)
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=image_token_id,
                         vision_feature_select_strategy="full", vision_feature_layer=-1, projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="full", chat_template=CHATML, image_token="<image>",
                               num_additional_image_tokens=0)
    return model, processor


def whisper():
    """WhisperForConditionalGeneration (2+2 layers, width 64, 80 mel bins, 30 s windows) and a WhisperProcessor, with
    the generation config fields that `generate(language=..., task=...)` reads."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    tokenizer = WhisperTokenizerFast(tokenizer_object=_bpe(WHISPER_SPECIALS), bos_token="<|endoftext|>",
                                     eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                                     model_max_length=448)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in WHISPER_SPECIALS}
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=448,
                           pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
                           eos_token_id=ids["<|endoftext|>"], decoder_start_token_id=ids["<|startoftranscript|>"],
                           begin_suppress_tokens=None, suppress_tokens=None)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"], is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"])
    return model, WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer)


BUILDERS = {"clip": clip, "llava": llava, "whisper": whisper}

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10(n_train: int = 2000, n_test: int = 500):
    """CIFAR-10's columns (img: 32x32 RGB, label: ClassLabel with the ten names), with synthetic scenes as pictures:
    one shape per image, class k drawn as its own colour-shape pair (learnable; not CIFAR's content)."""
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image

    from llm_roadmap.data.scenes import COLOURS, SHAPES, SceneGenerator

    pairs = [(c, s) for s in SHAPES for c in COLOURS][:10]
    generator = SceneGenerator(image_size=32, max_things=1, held_out=(), colours=tuple(COLOURS), shapes=SHAPES)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_train + n_test):
        label = i % 10
        while True:
            scene = generator.scene(rng, "train", n_things=1)
            if (scene.things[0].colour, scene.things[0].shape) == pairs[label]:
                break
        rows.append({"img": scene.image(), "label": label})
    features = Features({"img": Image(), "label": ClassLabel(names=CIFAR10_NAMES)})
    return {"train": Dataset.from_list(rows[:n_train], features=features),
            "test": Dataset.from_list(rows[n_train:], features=features)}


def librispeech_dummy(n: int = 24):
    """librispeech_asr_dummy's columns (file, audio={path, array, sampling_rate}, text, speaker_id, chapter_id, id),
    with the course's synthetic speech as the audio (symbols spoken as syllables; text in upper case as LibriSpeech
    writes it). The audio is a plain struct (datasets' Audio feature needs a decoder this machine lacks)."""
    import numpy as np
    from datasets import Dataset

    from llm_roadmap.data.speech import SyntheticSpeech

    speech, rng = SyntheticSpeech(), np.random.default_rng(0)
    words = {"0": "ZERO", "1": "ONE", "2": "TWO", "3": "THREE", "4": "FOUR", "5": "FIVE", "6": "SIX", "7": "SEVEN",
             "8": "EIGHT", "9": "NINE", "+": "PLUS", "-": "MINUS"}
    rows = []
    for i, (wave, text) in enumerate(speech.sample(n, rng, min_symbols=2, max_symbols=6)):
        path = f"{1272 + i % 3}-128104-{i:04d}.flac"
        rows.append({"file": path, "audio": {"path": path, "array": wave.astype(np.float64).tolist(),
                                             "sampling_rate": 16_000},
                     "text": " ".join(words[s] for s in text), "speaker_id": 1272 + i % 3, "chapter_id": 128104,
                     "id": f"{1272 + i % 3}-128104-{i:04d}"})
    return {"validation": Dataset.from_list(rows)}
