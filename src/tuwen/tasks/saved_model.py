"""The one loader of a saved model folder: the model with both tokenizers, the answer
vocabulary, the image transform, the text normaliser and the chat format, in one call.

The pipeline, ``tuwen eval``, attention maps and training's validation all open a model
folder through ``load``; a resumed run reopens its tokenizers and vocabulary through
``load_text_assets``. The folder's file names are ``tuwen.model_files``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuwen.config.chat import ChatFormat
from tuwen.data.answers import AnswerVocab
from tuwen.data.images import ImageTransform
from tuwen.data.text import TextNormalizer
from tuwen.errors import TuwenError
from tuwen.model_files import TEXT_TOKENIZER_DIR, TOKENIZER_FILE, VOCAB_FILE
from tuwen.models.image_text_model import ImageTextModel, saved_tokenizer


@dataclass
class SavedModel:
    """Everything a saved model folder holds, ready to use."""

    model: ImageTextModel
    tokenizer: Any                # the language model's: captions, prompts, answers
    text_tokenizer: Any | None    # the text encoder's own; None: ``tokenizer`` serves both
    vocab: AnswerVocab | None     # VQA's answer classes; None without VQA or when generating
    transform: ImageTransform     # the model's image preprocessing (size, mean, std)
    normalize: TextNormalizer     # texts as the model was trained on them
    directory: Path | None = None  # where it was loaded from

    @property
    def chat(self) -> ChatFormat | None:
        """The LM's chat template, or None for plain prompts."""
        return self.model.spec.chat

    @property
    def text_tok(self) -> Any:
        """The tokenizer of the text encoder's inputs (retrieval texts, questions)."""
        return self.text_tokenizer or self.tokenizer


def load_vocab(directory: str | Path) -> AnswerVocab | None:
    path = Path(directory) / VOCAB_FILE
    return AnswerVocab.load(path) if path.is_file() else None


def load_text_assets(directory: str | Path) -> tuple[Any, Any | None, AnswerVocab | None] | None:
    """(tokenizer, text encoder's tokenizer or None, vocabulary or None) a run wrote into its
    model folder before its first step; None when it has not written them yet."""
    directory = Path(directory)
    if not (directory / TOKENIZER_FILE).is_file():
        return None
    text_dir = directory / TEXT_TOKENIZER_DIR
    return (saved_tokenizer(directory),
            saved_tokenizer(text_dir) if text_dir.is_dir() else None, load_vocab(directory))


def load(directory: str | Path, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> SavedModel:
    """Open ``directory`` (a ``RUN/model`` folder), offline; ``device`` and ``dtype`` place the
    model (default: where it was built, fp32), in eval mode."""
    directory = Path(directory)
    model = ImageTextModel.from_pretrained(directory)  # reads the tokenizers too
    if model.tokenizer is None:
        raise TuwenError(f"{directory}: no {TOKENIZER_FILE}; not a trained tuwen model folder")
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    spec = model.spec
    return SavedModel(model.eval(), model.tokenizer, model.text_tokenizer, load_vocab(directory),
                      ImageTransform.for_model(spec), TextNormalizer.from_config(spec.text),
                      directory)
