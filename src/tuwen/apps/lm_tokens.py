"""What each sample costs the language model: its tokens by part, for ``--dry-run``.

A Hugging Face LM reads, per caption or generated answer, the image tokens (a projected
prefix; with ``conditioning: cross_attention`` they are read beside the sequence instead),
the prompt (BOS, or the chat template's turns with the caption request or the question)
and the text it is trained to write (with its end token). The image count is the real
image tower's, at the configured size (built from its config with random weights, offline),
after ``model.decoder.reduce``; the prompt and text counts come from the LM's own tokenizer
and chat template, when they are on disk, over the dry run's sample sentences.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoTokenizer

from tuwen.config import Config, HFTowerConfig
from tuwen.models.builder import IMAGE_ENCODERS
from tuwen.models.chat import chat_format
from tuwen.models.hf_image import Preprocessing, hf_preprocessing
from tuwen.models.hf_text import with_bos_eos
from tuwen.models.spec import ModelSpec

# image tokens the LM may read as a prefix before the dry run advises model.decoder.reduce
MANY_IMAGE_TOKENS = 64
CAPTIONS = ["a red circle left of a blue square", "two green triangles above a yellow square",
            "a dog runs on the grass"]
QUESTIONS = [("what colour is the circle?", "red"), ("how many triangles are there?", "two")]


@dataclass
class LMTokens:
    image: int | None             # per sample, after reduction (None: not known offline)
    image_tower: int | None       # what the image tower gives before reduction
    prefix: bool                  # the image is in the sequence (prefix) or cross-attended
    caption: tuple[float, float] | None  # (prompt, text) mean tokens; None: no tokenizer
    answer: tuple[float, float] | None   # the same for generated VQA answers
    note: str = ""                # what could not be counted offline

    def lines(self) -> list[str]:
        where = "prefix" if self.prefix else "cross-attended, not in the sequence"
        image = "?" if self.image is None else str(self.image)
        if self.image is not None and self.image_tower != self.image:
            image += f" (the image tower's {self.image_tower}, reduced)"
        out = [f"  LM tokens per sample: image {image} ({where})"]
        for name, parts in (("caption", self.caption), ("vqa answer", self.answer)):
            if parts is not None:
                total = parts[0] + parts[1] + (self.image or 0 if self.prefix else 0)
                out.append(f"    {name}: prompt {parts[0]:.0f} + text {parts[1]:.0f} "
                           f"(sample sentences) = {total:.0f} with the image")
        if self.note:
            out.append(f"    ({self.note})")
        if self.prefix and self.image is not None and self.image == self.image_tower and \
                self.image > MANY_IMAGE_TOKENS:
            out.append(f"  WARNING: the LM reads {self.image} image tokens per sample "
                       "(model.decoder.reduce: none); its cost grows with them: "
                       "model.decoder.reduce: {type: pixel_shuffle, factor: 2} gives "
                       f"{self.image // 4}")
        return out


def lm_tokens(config: Config) -> LMTokens | None:
    """The LM's tokens per sample by part for ``config`` (an ``hf_causal_lm`` decoder)."""
    decoder = config.model.decoder
    if decoder.type != "hf_causal_lm":
        return None
    notes = []
    tower = image_tower_tokens(config)
    if tower is None:
        notes.append("the image tower's config is not on disk: image tokens unknown")
    image = None if tower is None else reduced(tower, decoder.reduce)
    tok = local_tokenizer(decoder)
    caption = answer = None
    if tok is None:
        notes.append("the LM's tokenizer is not on disk: prompt and text not counted")
    else:
        chat = chat_format(tok, decoder.chat_template, decoder.system_prompt)
        caption = _parts(tok, chat, [(None, c) for c in CAPTIONS])
        if config.model.vqa.mode == "generate":
            answer = _parts(tok, chat, QUESTIONS)
    return LMTokens(image, tower, decoder.conditioning == "prefix", caption, answer,
                    "; ".join(notes))


def _parts(tok, chat, samples: list[tuple[str | None, str]]) -> tuple[float, float]:
    """Mean (prompt, text) tokens of (question or None for a caption, target) samples."""
    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    prompts, texts = [], []
    for question, target in samples:
        if chat is None:
            prompt = 1 if question is None else count(f"question: {question} answer:") + 1
        else:
            prompt = len(chat.caption_prompt) if question is None else \
                count(chat.prompt(question))
        prompts.append(prompt)
        texts.append(count(target) + 1)  # + the end of the reply
    return statistics.mean(prompts), statistics.mean(texts)


def local_tokenizer(decoder: HFTowerConfig):
    if decoder.name_or_path is None:
        return None
    try:
        tok = AutoTokenizer.from_pretrained(decoder.name_or_path, local_files_only=True)
    except (OSError, ValueError):
        return None
    return with_bos_eos(tok, "model.decoder")


def image_tower_tokens(config: Config) -> int | None:
    """Image tokens per image of the configured tower at ``data.image_size`` (after an hf
    tower's processor set it): the tower built with random weights, one blank image."""
    cfg, data = config.model.image_encoder, config.data
    saved, size = {}, data.image_size
    if cfg.type == "hf":
        if cfg.name_or_path is not None:
            try:
                saved["image_encoder"] = AutoConfig.from_pretrained(
                    cfg.name_or_path, local_files_only=True).to_dict()
            except (OSError, ValueError):
                return None
        size = hf_preprocessing(cfg, Preprocessing(size, tuple(data.image_mean),
                                                   tuple(data.image_std))).size
    spec = ModelSpec(model=config.model, vocab_size=8, num_answers=2, image_size=size,
                     max_text_length=8)
    torch.manual_seed(0)
    tower = IMAGE_ENCODERS[cfg.type](spec, saved)
    with torch.no_grad():
        tokens = tower.eval()(torch.zeros(1, 3, spec.image_size, spec.image_size)).tokens
    return tokens.shape[1]


def reduced(tokens: int, reduce) -> int:
    if reduce.type == "pixel_shuffle":
        return tokens // reduce.factor ** 2
    if reduce.type == "avg_pool":
        return reduce.tokens
    return tokens
