"""One inference entry point: a saved model folder -> captions, answers, embeddings.

``Pipeline.from_pretrained(RUN/model)`` loads the model, its tokenizer and its answer
vocabulary in one call, with no network access.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tuwen.data.answers import AnswerVocab
from tuwen.data.images import ImageTransform, load_image
from tuwen.data.text import TextNormalizer
from tuwen.data.tokenizer import decode_text, load_text_tokenizer, load_tokenizer
from tuwen.data.vqa_text import left_padded_prompts
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks import captioning, vqa
from tuwen.training.assets import VOCAB_FILE


@dataclass
class Pipeline:
    model: ImageTextModel
    tokenizer: object
    vocab: AnswerVocab | None
    transform: ImageTransform
    text_tokenizer: object | None = None  # the text encoder's own; None: `tokenizer` serves

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> Pipeline:
        directory = Path(directory)
        model = ImageTextModel.from_pretrained(directory).to(device)
        vocab_path = directory / VOCAB_FILE
        vocab = AnswerVocab.load(vocab_path) if vocab_path.is_file() else None
        spec = model.spec
        return cls(model, load_tokenizer(directory), vocab,
                   ImageTransform.for_model(spec), load_text_tokenizer(directory))

    def _pixels(self, images: list[str | Path]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        side = self.transform.min_side
        return torch.stack([self.transform(load_image(p, side)) for p in images]).to(device)

    def caption(self, images: list[str | Path], decoding: str = "beam", beam_size: int = 3,
                max_new_tokens: int = 30) -> list[str]:
        ids = captioning.predict_step(self.model, self._pixels(images), decoding=decoding,
                                      beam_size=beam_size, max_new_tokens=max_new_tokens)
        eos = self.model.spec.eos_token_id
        return [decode_text(self.tokenizer, row[: row.index(eos)] if eos in row else row)
                for row in ids.tolist()]

    def ask(self, images: list[str | Path], questions: list[str]) -> list[str]:
        device = next(self.model.parameters()).device
        normalize = TextNormalizer.from_config(self.model.spec.text)  # as in training
        questions = [normalize(q) for q in questions]
        if vqa.generates_answers(self.model):  # model.vqa.mode: generate
            ids, mask = left_padded_prompts(self.tokenizer, questions,
                                            self.model.spec.max_text_length)
            out = vqa.generate_answers(self.model, self._pixels(images), ids.to(device),
                                       mask.to(device))
            eos = self.model.spec.eos_token_id
            return [decode_text(self.tokenizer, row[: row.index(eos)] if eos in row else row)
                    for row in out.tolist()]
        if self.vocab is None:
            raise ValueError("this model was trained without VQA data; it cannot answer")
        enc = (self.text_tokenizer or self.tokenizer)(questions, padding="longest", truncation=True,
                             max_length=self.model.spec.max_text_length, return_tensors="pt")
        device = next(self.model.parameters()).device
        pred = vqa.predict_step(self.model, self._pixels(images), enc["input_ids"].to(device),
                                enc["attention_mask"].to(device))
        return [self.vocab.answer(i) for i in pred.tolist()]
