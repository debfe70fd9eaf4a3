"""One inference entry point: a saved model folder -> captions, answers, embeddings, scores
and attention maps. The CLI and the server use nothing else.

``Pipeline.from_pretrained(RUN/model)`` loads the model, its tokenizer and its answer
vocabulary in one call, with no network access. Every method takes a list and runs it in
batches of ``batch_size`` under ``torch.inference_mode()``, through the tasks'
``predict_step`` functions and the model's public methods, with the image preprocessing
and text normalisation the model was trained with (as ``tuwen eval`` does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from tuwen.apps.conversation import parse_history
from tuwen.apps.images import ImageLimits, open_image
from tuwen.data.answers import AnswerVocab
from tuwen.data.images import ImageTransform
from tuwen.data.text import TextNormalizer
from tuwen.data.vqa_text import left_padded_prompts
from tuwen.errors import TuwenError
from tuwen.model_files import CONFIG_FILE, WEIGHTS_FILE
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks import captioning, chat, retrieval, vqa
from tuwen.tasks.batching import decode_until_eos
from tuwen.tasks.classify import (
    DEFAULT_TEMPLATES,
    ClassifyOptions,
    class_embeddings,
    class_probabilities,
)
from tuwen.tasks.saved_model import SavedModel, load

if TYPE_CHECKING:
    from tuwen.evaluation.attention import AttentionMaps

ImageInput = str | Path | bytes | Image.Image
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


@dataclass
class Answer:
    text: str
    # the most likely answers with their probabilities, best first (classifying models);
    # a generating model writes one answer and has none
    alternatives: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Score:
    itc: float   # cosine similarity of the unit-norm ITC embeddings, -1..1
    itm: float   # ITM probability that the text matches the image, 0..1


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    if dtype not in DTYPES:
        raise TuwenError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def model_fingerprint(directory: str | Path) -> str:
    """The model's identity: SHA-256 of its config.json, its weights' size and their first
    and last MiB (two trainings of one config differ there; reading all of a large model's
    weights would cost seconds)."""
    directory = Path(directory)
    digest = hashlib.sha256((directory / CONFIG_FILE).read_bytes())
    weights = directory / WEIGHTS_FILE
    size = weights.stat().st_size
    digest.update(str(size).encode())
    with weights.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


@dataclass
class Pipeline:
    model: ImageTextModel
    tokenizer: object
    vocab: AnswerVocab | None
    transform: ImageTransform
    model_id: str = ""
    batch_size: int = 32
    image_limits: ImageLimits = ImageLimits()
    text_tokenizer: object | None = None  # the text encoder's own; None: `tokenizer` serves
    max_reply_tokens: int = 64  # a reply in a conversation (``answer`` with history)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None,
                        dtype: str | torch.dtype | None = None) -> Pipeline:
        """``device``: "cpu", "cuda", "cuda:1" ... (default: a GPU when there is one);
        ``dtype``: fp32 (default), bf16 or fp16 weights and activations."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        saved = load(directory, device=device, dtype=resolve_dtype(dtype))
        return cls(saved.model, saved.tokenizer, saved.vocab, saved.transform,
                   model_id=model_fingerprint(directory), text_tokenizer=saved.text_tokenizer)

    # ------------------------------------------------------------ inputs

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def normalize(self) -> TextNormalizer:
        return TextNormalizer.from_config(self.model.spec.text)  # as in training

    def load(self, image: ImageInput) -> Image.Image:
        """A path, bytes or a PIL image -> RGB PIL image (bytes are checked, see apps.images)."""
        return open_image(image, self.image_limits, self.transform.min_side)

    def pixels(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """(B, 3, H, W) model input on the model's device and dtype."""
        if not len(images):
            raise TuwenError("no images given")
        batch = torch.stack([self.transform(self.load(image)) for image in images])
        return batch.to(self.device, self.dtype)

    def _chunks(self, n: int):
        return (slice(start, start + self.batch_size) for start in range(0, n, self.batch_size))

    def _batched(self, fn: Callable, *columns: Sequence) -> list:
        out: list = []
        with torch.inference_mode():
            for chunk in self._chunks(len(columns[0])):
                out.extend(fn(*(column[chunk] for column in columns)))
        return out

    def _decode(self, ids: torch.Tensor) -> list[str]:
        return decode_until_eos(self.tokenizer, ids, self.model.spec.eos_token_id)

    # ------------------------------------------------------------ tasks

    def caption(self, images: Sequence[ImageInput], decoding: str = "beam", beam_size: int = 3,
                max_length: int = 30, **options) -> list[str]:
        """One caption per image; ``options`` as ``generation.generate`` takes them
        (length_penalty, top_p, temperature, generator)."""
        def run(chunk):
            ids = captioning.predict_step(self.model, self.pixels(chunk), decoding=decoding,
                                          beam_size=beam_size, max_new_tokens=max_length,
                                          **options)
            return self._decode(ids)
        return self._batched(run, list(images))

    def answer(self, images: Sequence[ImageInput], questions: Sequence[str],
               top_k: int = 5, histories: Sequence[Sequence] | None = None) -> list[Answer]:
        """One answer per (image, question) pair: classified over the answer vocabulary with
        its ``top_k`` alternatives, or generated (``model.vqa.mode: generate``).

        ``histories``: each question's earlier turns (``apps.conversation``; empty: none). A
        question with history, or any question to a model without a VQA head (one trained
        on conversations only), is answered as the next turn of its conversation: the
        reply generated greedily after the turns rendered as the chat task renders them."""
        if len(images) != len(questions):
            raise TuwenError(f"{len(images)} images but {len(questions)} questions: "
                             "one question per image")
        histories = [parse_history(list(h or []), f"histories[{i}]")
                     for i, h in enumerate(histories or [[]] * len(questions))]
        if len(histories) != len(questions):
            raise TuwenError(f"{len(histories)} histories but {len(questions)} questions: "
                             "one history (possibly empty) per question")
        answers_questions = vqa.generates_answers(self.model) or self.vocab is not None
        turns = [i for i, h in enumerate(histories) if h or not answers_questions]
        single = [i for i in range(len(questions)) if i not in set(turns)]
        out: dict[int, Answer] = {}
        if single:
            run = self._generated_answers if vqa.generates_answers(self.model) else \
                (lambda px, qs: self._classified_answers(px, qs, top_k))
            texts = [self.normalize(questions[i]) for i in single]
            out.update(zip(single, self._batched(lambda im, qs: run(self.pixels(im), qs),
                                                 [images[i] for i in single], texts)))
        if turns:
            out.update(zip(turns, self._replies([images[i] for i in turns],
                                                [questions[i].strip() for i in turns],
                                                [histories[i] for i in turns])))
        return [out[i] for i in range(len(questions))]

    def _replies(self, images: list[ImageInput], messages: list[str],
                 histories: list[list]) -> list[Answer]:
        def run(ims, msgs, hists):
            prompts = chat.reply_prompts(self.tokenizer, self.model, hists, msgs,
                                         [True] * len(msgs))
            texts = chat.replies(self.model, self.tokenizer, self.pixels(ims),
                                 list(range(len(ims))), prompts,
                                 max_new_tokens=self.max_reply_tokens, batch_size=len(ims))
            return [Answer(t) for t in texts]
        return self._batched(run, images, messages, histories)

    def _generated_answers(self, pixels: torch.Tensor, questions: list[str]) -> list[Answer]:
        spec = self.model.spec
        ids, mask = left_padded_prompts(self.tokenizer, questions, spec.max_text_length, spec.chat)
        out = vqa.generate_answers(self.model, pixels, ids.to(self.device), mask.to(self.device))
        return [Answer(text) for text in self._decode(out)]

    def _classified_answers(self, pixels: torch.Tensor, questions: list[str],
                            top_k: int) -> list[Answer]:
        ids, mask = self._tokens(questions)
        image = self.model.encode_image(pixels)
        probs = vqa.answer_logits(self.model, ids, mask, image.tokens).float().softmax(dim=-1)
        top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        out = []
        for values, indices in zip(top.values.tolist(), top.indices.tolist()):
            alternatives = [(self.vocab.answer(i), round(p, 4)) for p, i in zip(values, indices)]
            out.append(Answer(alternatives[0][0], alternatives))
        return out

    def _tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts for the text encoder (questions, queries), in its own tokenizer."""
        tokenizer = self.text_tokenizer or self.tokenizer
        enc = tokenizer(texts, padding="longest", truncation=True,
                        max_length=self.model.spec.max_text_length, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(N, E) float32 unit-norm ITC embeddings."""
        def run(chunk):
            pooled = retrieval.embed_images(self.model, self.pixels(chunk)).pooled
            return self.model.itc_head.embed_image(pooled).float().cpu().numpy()
        return np.asarray(self._batched(run, list(images)), dtype=np.float32).reshape(
            -1, self.embed_dim)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, E) float32 unit-norm ITC embeddings of texts (normalised as in retrieval)."""
        def run(chunk):
            ids, mask = self._tokens([self.normalize.retrieval(t) for t in chunk])
            return retrieval.embed_texts(self.model, ids, mask)[0].float().cpu().numpy()
        return np.asarray(self._batched(run, list(texts)), dtype=np.float32).reshape(
            -1, self.embed_dim)

    @property
    def embed_dim(self) -> int:
        return self.model.spec.model.embed_dim

    def classify(self, images: Sequence[ImageInput], labels: Sequence[str],
                 templates: Sequence[str] = DEFAULT_TEMPLATES,
                 top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Zero-shot: each image's ``top_k`` most likely of ``labels`` with their probabilities,
        best first (ITC cosine to each label's mean template embedding, softmax at the
        model's learned temperature; tasks.classify)."""
        labels = [str(label).strip() for label in labels]
        if not labels or not all(labels) or len(set(labels)) != len(labels):
            raise TuwenError("classify needs distinct, non-empty labels")
        try:
            ClassifyOptions(templates=list(templates))
        except ValueError as err:  # pydantic's: one '{}' per template
            raise TuwenError(f"templates: {err.errors()[0]['msg']}") from None
        with torch.inference_mode():
            class_embeds = class_embeddings(self.model, self.text_tokenizer or self.tokenizer,
                                            labels, list(templates),
                                            self.model.spec.max_text_length)
        image_embeds = torch.from_numpy(self.embed_images(images))
        probs = class_probabilities(self.model, image_embeds, class_embeds)
        top = probs.topk(min(top_k, len(labels)), dim=-1)
        return [[(labels[i], round(p, 4)) for p, i in zip(values, indices)]
                for values, indices in zip(top.values.tolist(), top.indices.tolist())]

    def score(self, images: Sequence[ImageInput], texts: Sequence[str]) -> list[Score]:
        """ITC similarity and ITM probability of each (image, text) pair."""
        if len(images) != len(texts):
            raise TuwenError(f"{len(images)} images but {len(texts)} texts: one text per image")

        def run(chunk, words):
            feats = retrieval.embed_images(self.model, self.pixels(chunk))
            image_embeds = self.model.itc_head.embed_image(feats.pooled)
            ids, mask = self._tokens([self.normalize.retrieval(t) for t in words])
            text_embeds, text = retrieval.embed_texts(self.model, ids, mask)
            itc = (image_embeds * text_embeds).sum(dim=-1).float().tolist()
            itm = retrieval.match_scores(self.model, text, feats.tokens).tolist()
            return [Score(a, b) for a, b in zip(itc, itm)]
        return self._batched(run, list(images), list(texts))

    def explain(self, image: ImageInput, text: str | None = None, **options) -> AttentionMaps:
        """Per-token attention maps of one image over its patch grid, as ``tuwen attention``
        draws them: of ``text``, or of the caption the model writes (greedy) when it is None.
        ``options``: source ("decoder" or "fusion"), question, layer, head, rollout."""
        from tuwen.evaluation.attention import attention_maps  # explain only

        loaded = SavedModel(self.model, self.tokenizer, self.text_tokenizer, self.vocab,
                            self.transform, self.normalize)
        if text is not None:
            text = self.normalize(text)
        with torch.inference_mode():
            return attention_maps(loaded, self.pixels([image]), text=text, **options)
