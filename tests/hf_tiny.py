"""Tiny Hugging Face towers for the tests: configs, and folders saved the way the hub has
them (weights, config, image processor or tokenizer), loaded back by path."""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    BertTokenizer,
    PreTrainedTokenizerFast,
)

from tuwen.config import ModelConfig
from tuwen.models.spec import ModelSpec

SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
         "intermediate_size": 64}
IMAGE_CONFIGS = {
    "vit": {"model_type": "vit", "image_size": 32, "patch_size": 8, **SMALL},
    "resnet": {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16],
               "depths": [1, 1], "layer_type": "basic"},
    "clip_vision_model": {"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8,
                          **SMALL},
    "siglip_vision_model": {"model_type": "siglip_vision_model", "image_size": 32,
                            "patch_size": 8, **SMALL},
}
# (grid, has CLS, feature width) of each at 32 px: ResNet's stem and stage 2 divide by 8
IMAGE_LAYOUT = {"vit": ((4, 4), True, 32), "resnet": ((4, 4), False, 16),
                "clip_vision_model": ((4, 4), True, 32),
                "siglip_vision_model": ((4, 4), False, 32)}
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "green", "circle",
         "square", "triangle", "left", "right", "of", "the", "what", "colour", "is", "?", ".",
         "##s", "above", "below"]
BERT = {"model_type": "bert", "vocab_size": len(WORDS), "max_position_embeddings": 64, **SMALL}
PROCESSOR = {"image_processor_type": "ViTImageProcessor", "do_resize": True,
             "size": {"height": 32, "width": 32}, "do_normalize": True,
             "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}


def hf_model(raw: dict) -> torch.nn.Module:
    raw = dict(raw)
    return AutoModel.from_config(AutoConfig.for_model(raw.pop("model_type"), **raw))


def save_image_model(kind: str, directory: Path, processor: dict | None = PROCESSOR) -> Path:
    """A random tiny vision model saved like a hub checkpoint (with a processor config)."""
    torch.manual_seed(11)
    hf_model(IMAGE_CONFIGS[kind]).save_pretrained(directory)
    if processor is not None:
        (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


def bert_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def save_bert(directory: Path) -> Path:
    """A random tiny BERT and its WordPiece tokenizer (no BOS/EOS, like bert-base)."""
    torch.manual_seed(12)
    hf_model(BERT).save_pretrained(directory)
    bert_tokenizer().save_pretrained(directory)
    return directory


def hf_spec(image: dict | None = None, text: dict | None = None, vocab_size: int = 50,
            **model_overrides) -> ModelSpec:
    """tests/tiny.py's tiny_spec with other towers (tower sections as dicts)."""
    fields = {"hidden_size": 32, "embed_dim": 16,
              "image_encoder": image or {"type": "small_vit", "patch_size": 8, "layers": 1,
                                         "heads": 2},
              "text_encoder": text or {"layers": 1, "heads": 2},
              "fusion": {"layers": 1, "heads": 2}, "decoder": {"layers": 1, "heads": 2},
              **model_overrides}
    return ModelSpec(model=ModelConfig(**fields), vocab_size=vocab_size, num_answers=7,
                     image_size=32, max_text_length=16)


def text_batch(vocab_size: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two texts, the second padded after 3 tokens; ids start at 5 (past the specials)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (2, 6), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    return ids.masked_fill(mask == 0, 0), mask


LM_TEXTS = ["a red circle left of a blue square", "two green triangles", "a yellow square",
            "what colour is the circle?", "how many shapes are there?", "is there a square?",
            "question: answer: red blue green yellow yes no one two three"]
# (architecture, special tokens) of tiny GPT-2 and Llama LMs
LMS = {
    "gpt2": ({"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64},
             {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
    "llama": ({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
               "max_position_embeddings": 64},
              {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
}


def bpe_tokenizer(specials: dict) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the LM's special tokens and, like GPT-2's and
    Llama's, no padding token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, show_progress=False,
                                  special_tokens=list(dict.fromkeys(specials.values())),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(LM_TEXTS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def save_lm(kind: str, directory: Path) -> Path:
    """A random tiny causal LM (``LMS[kind]``) and its BPE tokenizer, saved like a hub
    checkpoint."""
    raw, specials = LMS[kind]
    tok = bpe_tokenizer(specials)
    raw = {**raw, "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
           "eos_token_id": tok.eos_token_id}
    torch.manual_seed(5)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


# ---------------------------------------------------------------- an instruct LM
# A Llama-3-style chat template: BOS, then turns closed by an end-of-turn token that is not
# the tokenizer's EOS, so tests see which one ends a reply.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<|start|>' + m['role'] + '\n' + "
                 "m['content'] + '<|eot|>' }}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|start|>assistant\n' }}{% endif %}")


# The same with a default system turn when the messages bring none (as SmolLM2's template)
DEFAULT_SYSTEM = "You are a helpful assistant."
SYSTEM_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|start|>system\n" + DEFAULT_SYSTEM + "<|eot|>' }}{% endif %}"
    "{{ '<|start|>' + m['role'] + '\n' + m['content'] + '<|eot|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start|>assistant\n' }}{% endif %}")


def chat_tokenizer(template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    tok = bpe_tokenizer(LMS["llama"][1])
    tok.add_special_tokens({"additional_special_tokens": ["<|start|>", "<|eot|>"]})
    tok.chat_template = template
    return tok


def save_chat_lm(directory: Path, template: str = CHAT_TEMPLATE) -> Path:
    """A random tiny Llama with a chat template (``CHAT_TEMPLATE``), saved like a hub
    instruct model."""
    raw, _ = LMS["llama"]
    tok = chat_tokenizer(template)
    raw = {**raw, "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
           "eos_token_id": tok.eos_token_id, "max_position_embeddings": 128}
    torch.manual_seed(5)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def chat_lm_model(hub: dict, max_length: int, **decoder):
    """A tiny model of a saved ViT, BERT and chat LM (``hub``: their folders), generating its
    VQA answers; ``decoder``: more keys of the LM's section (chat_template, system_prompt)."""
    import torch

    from tuwen.models.image_text_model import ImageTextModel

    torch.manual_seed(0)
    return ImageTextModel.from_encoders(
        str(hub["vit"]), str(hub["bert"]), hidden_size=32, embed_dim=16,
        max_text_length=max_length, num_answers=3,
        fusion={"type": "cross_attention", "layers": 1, "heads": 2},
        decoder={"type": "hf_causal_lm", "name_or_path": str(hub["lm"]), **decoder},
        vqa={"mode": "generate"})
