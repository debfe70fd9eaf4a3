"""Hugging Face text encoders (BERT and its family) as the text tower, and their tokenizer.

tuwen's decoder needs BOS/EOS ids; BERT-style tokenizers have none, so the caption starts
at [CLS] and ends at [SEP] (PAD stays [PAD]) — the tokenizer is saved with that mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tuwen.errors import ConfigError
from tuwen.models.text_encoders import TextFeatures
from tuwen.models.towers import Tower


class HFTextEncoder(Tower):
    body_name = "backbone"

    def __init__(self, backbone: nn.Module, feature_size: int, dim: int,
                 pooling: str = "cls") -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.proj = nn.Linear(feature_size, dim)
        self.pooled_proj = nn.Linear(feature_size, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        states = out.last_hidden_state  # (B, L, C)
        if self.pooling == "mean":
            weights = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
        else:
            pooled = getattr(out, "pooler_output", None)  # CLIP text: its EOS state
            if pooled is None:  # BERT built without its NSP pooler: the [CLS] position
                pooled = states[:, 0]
        return TextFeatures(tokens=self.proj(states),  # (B, L, D)
                            pooled=self.pooled_proj(pooled), attention_mask=attention_mask)


def resolve_pooling(pooling: str, name_or_path: str | None, where: str) -> str:
    """``cls`` or ``mean``: ``auto`` reads a sentence-transformers model's pooling module
    (``modules.json`` and its folder's ``config.json``), locally or from the HF cache; a
    model without one pools as ``cls``."""
    if pooling != "auto":
        return pooling
    modules = _model_file(name_or_path, "modules.json")
    if modules is None:
        return "cls"
    try:
        entries = json.loads(modules.read_text())
        folder = next(m["path"] for m in entries if m.get("type", "").endswith(".Pooling"))
        config = json.loads(_model_file(name_or_path, f"{folder}/config.json").read_text())
    except StopIteration:
        return "cls"
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ConfigError(f"{where}.pooling: auto could not read the pooling module of "
                          f"{name_or_path!r} ({type(err).__name__}: {err}); set cls or mean"
                          ) from None
    for mode, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token")):
        if config.get(key):
            return mode
    raise ConfigError(f"{where}.pooling: {name_or_path!r} pools in a way tuwen does not "
                      f"offer ({folder}/config.json); set cls or mean")


def _model_file(name_or_path: str | None, filename: str) -> Path | None:
    """A file of a local model folder, or of a hub model already in the HF cache."""
    if name_or_path is None:
        return None
    if Path(name_or_path).is_dir():
        path = Path(name_or_path) / filename
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache
    try:
        found = try_to_load_from_cache(name_or_path, filename)
    except ValueError:  # not a valid repo id
        return None
    return Path(found) if isinstance(found, str) else None


def hf_tokenizer(name_or_path: str, where: str) -> PreTrainedTokenizerBase:
    """The text tower's own tokenizer, from its hub name or folder, with BOS/EOS set."""
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise ConfigError(f"{where}.name_or_path: no tokenizer found for {name_or_path!r} "
                          f"locally or online ({first})") from None
    return with_bos_eos(tok, where)


def with_bos_eos(tok: PreTrainedTokenizerBase, where: str) -> PreTrainedTokenizerBase:
    """BOS/EOS from CLS/SEP where missing (BERT), BOS from EOS where there is no CLS either,
    PAD from EOS where missing (GPT-2, Llama)."""
    missing = {key: value for key, value in (("eos_token", tok.sep_token),
                                             ("bos_token", tok.cls_token))
               if getattr(tok, key) is None}
    eos = tok.eos_token or missing.get("eos_token")
    if missing.get("bos_token", "") is None:  # Qwen-style LM tokenizers: EOS starts too
        missing["bos_token"] = eos
    if tok.pad_token is None:
        missing["pad_token"] = eos
    if None in missing.values():
        raise ConfigError(f"{where}: tokenizer {type(tok).__name__} has no BOS/EOS/PAD tokens "
                          "(nor CLS/SEP to stand in for them); the decoder needs them")
    if missing:
        tok.add_special_tokens(missing)  # existing tokens: the vocabulary does not grow
    # tuwen pools the first position ([CLS]) and pads its decoder sequences itself; LM
    # tokenizers that pad on the left (for generation) would move it
    tok.padding_side = "right"
    return tok
