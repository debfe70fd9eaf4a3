"""What a run needs before its first step: training records, tokenizer, answer vocabulary,
and the model spec that ties their sizes to the model config.

The tokenizer and vocabulary are written into ``RUN/model/`` at once, so a resumed run
(and the final model) uses exactly the ones training started with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from tuwen.config import Config, HFTowerConfig, ModelConfig
from tuwen.data.answers import AnswerVocab
from tuwen.data.prepare import SplitData, build_answer_vocab, build_tokenizer, read_split
from tuwen.data.tokenizer import save_text_tokenizer, save_tokenizer
from tuwen.errors import ConfigError, TuwenError
from tuwen.model_files import VOCAB_FILE
from tuwen.models.chat import decoder_chat, special_ids
from tuwen.models.hf_image import Preprocessing, resolve_preprocessing
from tuwen.models.hf_text import hf_tokenizer
from tuwen.models.spec import ModelSpec
from tuwen.tasks.saved_model import load_text_assets
from tuwen.tasks.table import model_heads


@dataclass
class Assets:
    train: SplitData
    tokenizer: object
    vocab: AnswerVocab | None
    spec: ModelSpec
    text_tokenizer: object | None = None  # the text encoder's own; None: it uses `tokenizer`


def check_bad_fraction(data: SplitData, max_fraction: float) -> None:
    total = len(data.captions) + len(data.questions) + len(data.skipped)
    if data.skipped and len(data.skipped) > max_fraction * total:
        raise TuwenError(f"split {data.split!r}: {len(data.skipped)} of {total} records unusable, "
                         f"more than data.max_bad_fraction={max_fraction}; first: "
                         f"{data.skipped[0]}")


def with_tower_preprocessing(config: Config) -> Config:
    """``data.image_size/image_mean/image_std`` replaced by what an hf image tower's image
    processor says (logged when they change); other configs come back as they are."""
    data = config.data
    default = Preprocessing(data.image_size, tuple(data.image_mean), tuple(data.image_std))
    pre = resolve_preprocessing(config.model, default)
    if pre == default:
        return config
    data = data.model_copy(update={"image_size": pre.size, "image_mean": pre.mean,
                                   "image_std": pre.std})
    return config.model_copy(update={"data": data})


def tokenizer_sources(model: ModelConfig) -> dict[str, str]:
    """Model sections that bring their own tokenizer: section -> hub name or folder."""
    sections = {name: getattr(model, name) for name in ("text_encoder", "decoder")}
    return {f"model.{name}": section.name_or_path for name, section in sections.items()
            if isinstance(section, HFTowerConfig) and section.name_or_path is not None}


def choose_tokenizers(config: Config, train: SplitData) -> tuple[object, object | None]:
    """(the decoder's tokenizer, the text encoder's own or None when it shares it).

    The decoder's is a named causal LM's tokenizer, else a WordPiece trained on the training
    texts, whatever the text tower uses: a from-scratch decoder's softmax then spans the
    words its captions use, not BERT's 30k pieces (``data.tokenizer.share_text_encoder``
    shares a named text tower's instead, BOS/EOS mapped to CLS/SEP). A named text tower
    whose tokenizer is not the decoder's keeps its own (BLIP-2's BERT Q-Former beside OPT):
    two tokenizers. Towers built from an ``hf_config`` are sized to the decoder's.
    """
    sources = tokenizer_sources(config.model)
    text_name, lm_name = sources.get("model.text_encoder"), sources.get("model.decoder")
    if lm_name is not None:
        lm = hf_tokenizer(lm_name, "model.decoder")
    elif text_name is not None and config.data.tokenizer.share_text_encoder:
        return hf_tokenizer(text_name, "model.text_encoder"), None
    else:
        lm = build_tokenizer(train, config.data.tokenizer.vocab_size)
    if text_name is None or text_name == lm_name:
        return lm, None
    return lm, hf_tokenizer(text_name, "model.text_encoder")


def choose_tokenizer(config: Config, train: SplitData):
    """The decoder's tokenizer (see ``choose_tokenizers``)."""
    return choose_tokenizers(config, train)[0]


def prepare_assets(config: Config, model_dir: Path, reuse: bool = False) -> Assets:
    config = with_tower_preprocessing(config)  # train() has done it; direct callers too
    train = read_split(config.data, config.data.train_split, stream=True)  # shards: streamed
    check_bad_fraction(train, config.data.max_bad_fraction)
    saved = load_text_assets(model_dir) if reuse else None
    if saved is not None:  # a resumed run (or another process) reads what the run wrote
        tokenizer, text_tokenizer, vocab = saved
    else:
        tokenizer, text_tokenizer = choose_tokenizers(config, train)
        vocab = build_answer_vocab(train, config.data.answer_vocab_size)
        model_dir.mkdir(parents=True, exist_ok=True)
        save_tokenizer(tokenizer, model_dir)
        save_text_tokenizer(text_tokenizer, model_dir)
        if vocab is not None:
            vocab.save(model_dir / VOCAB_FILE)
    chat = decoder_chat(config.model, tokenizer)  # an instruct LM's template, or None
    spec = ModelSpec(model=config.model, vocab_size=len(tokenizer),
                     num_answers=len(vocab) if vocab is not None else 1,
                     image_size=config.data.image_size,
                     max_text_length=config.data.max_text_length,
                     image_mean=config.data.image_mean, image_std=config.data.image_std,
                     text=config.data.text, chat=chat, **special_ids(tokenizer, chat),
                     **text_vocab(text_tokenizer))
    spec = replace(spec, heads=model_heads(spec))  # every task's heads (tasks.table)
    return Assets(train, tokenizer, vocab, spec, text_tokenizer)


def text_vocab(text_tokenizer) -> dict[str, int]:
    """The spec fields of the text encoder's own tokenizer (none when it shares the LM's)."""
    if text_tokenizer is None:
        return {}
    return {"text_vocab_size": len(text_tokenizer),
            "text_pad_token_id": text_tokenizer.pad_token_id}


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_config(config: Config, run_dir: Path) -> None:
    """Resuming into a different model shape or data would silently mix two runs."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = _flatten(yaml.safe_load(saved_path.read_text()))
    now = _flatten(config.model_dump(mode="json"))
    fixed = ("model.", "data.root", "data.image_size", "data.max_text_length",
             "data.tokenizer.", "data.answer_vocab_size")
    differing = sorted(k for k in set(saved) | set(now)
                       if k.startswith(fixed) and saved.get(k) != now.get(k))
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in differing)
        raise ConfigError(f"--resume with a config that changes {details} "
                          f"(saved in {saved_path}); start a new run directory instead")
