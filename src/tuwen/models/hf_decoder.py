"""Hugging Face causal language models (GPT-2, Llama, SmolLM, ...) as the decoder.

The image reaches the LM in one of two ways (``model.decoder.conditioning``):

- ``prefix`` (LLaVA): the image tokens (B, N, hidden) go through a projector (``mlp``:
  Linear-GELU-Linear as in LLaVA-1.5, or ``linear``) to the LM's width and are prepended to
  the token embeddings as ``inputs_embeds``. Logits come back for the text positions only,
  so a loss never covers the image.
- ``cross_attention``: the LM is built with ``add_cross_attention=True`` (GPT-2, and any
  causal LM whose forward takes ``encoder_hidden_states``); the projected image tokens are
  its ``encoder_hidden_states``.

The module has ``CaptionDecoder``'s interface (``forward(input_ids, image_tokens,
attention_mask, output_attentions, cache) -> DecoderOutput``, ``new_cache()``,
``max_length``), so training, generation and attention maps treat both alike. Generation
uses the LM's own KV cache; with ``prefix`` the image enters it once, on the first step.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, DynamicCache, EncoderDecoderCache, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from tuwen.config import HFTowerConfig
from tuwen.errors import ConfigError
from tuwen.models.decoder import (
    DecoderOutput,
    PackedRows,
    additive_mask,
    labelled_loss,
    positions_from_mask,
)
from tuwen.models.hf_backbone import adapt, config_from_dict, quiet_load_report, warn_about_weights
from tuwen.models.layers import cpu_bf16_autocast
from tuwen.models.token_reduction import expand_weights
from tuwen.models.towers import Tower

# Causal LMs whose logits are exactly ``lm_head(body(...).last_hidden_state)``: training runs
# the head at the labelled positions only. Others (logit soft-capping, scaled logits) compute
# every position's logits, as generation does.
PLAIN_HEAD = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "smollm3", "phi", "phi3",
              "gpt_neox", "opt", "olmo", "olmo2", "stablelm", "gemma"}
# Attention implementations that take a custom 4D mask, as ``packed_loss`` passes one
PACKING_ATTENTION = ("eager", "sdpa")


def build_projector(kind: str, dim_in: int, dim_out: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim_in, dim_out)
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.GELU(), nn.Linear(dim_out, dim_out))


@dataclass
class HFDecoderCache:
    """The LM's own cache (updated in place by the LM) and what it holds."""

    past: Any                 # DynamicCache, or EncoderDecoderCache with cross-attention
    length: int = 0           # text positions in it
    prefix: int = 0           # image positions in front of them (prefix conditioning)
    # the attention mask of every position in it, when the image sits inside the text
    # (``image_at``); None: the image's positions, then the text's
    mask: torch.Tensor | None = None

    def reorder(self, index: torch.Tensor) -> None:
        self.past.reorder_cache(index)
        if self.mask is not None:
            self.mask = self.mask[index]


@contextmanager
def eager_attention(lm: nn.Module, needed: bool) -> Iterator[None]:
    """Fused attention kernels return no weights, and are slow in bf16 on a CPU; switch to
    the eager path while asked."""
    before = getattr(lm.config, "_attn_implementation", "eager")
    if not needed or before == "eager" or not hasattr(lm, "set_attn_implementation"):
        yield
        return
    lm.set_attn_implementation("eager")
    try:
        yield
    finally:
        lm.set_attn_implementation(before)


def splice_image(image: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor,
                 image_at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The image's tokens (B, N, W) inside the text's (B, L, W), before each row's token at
    ``image_at`` (B,): the joint embeddings (B, N + L, W), their mask (the text's ``mask``
    (B, L), 1 on the image) and where each text token went (B, L)."""
    (batch, length, width), n = embeds.shape, image.shape[1]
    index = torch.arange(length, device=embeds.device).expand(batch, length)
    text_at = index + n * (index >= image_at[:, None])  # (B, L)
    image_pos = image_at[:, None] + torch.arange(n, device=embeds.device)  # (B, N)
    joint = embeds.new_zeros(batch, n + length, width)
    joint.scatter_(1, text_at[..., None].expand(-1, -1, width), embeds)
    joint.scatter_(1, image_pos[..., None].expand(-1, -1, width), image)
    joint_mask = mask.new_ones(batch, n + length).scatter(1, text_at, mask)
    return joint, joint_mask, text_at


def text_positions(states: torch.Tensor, length: int,
                   text_at: torch.Tensor | None) -> torch.Tensor:
    """The last ``length`` positions of ``states`` (B, T, D), or with the image spliced in
    (``splice_image``) the text's own positions ``text_at`` (B, L)."""
    if text_at is None:
        return states[:, -length:]
    return states.gather(1, text_at[..., None].expand(-1, -1, states.shape[-1]))


class HFCausalLMDecoder(Tower):
    body_name = "lm"

    def __init__(self, lm: nn.Module, hidden_size: int, conditioning: str = "prefix",
                 projector: str = "mlp", max_length: int = 40,
                 reduce: nn.Module | None = None) -> None:
        super().__init__()
        if conditioning not in ("prefix", "cross_attention"):
            raise ValueError(f"conditioning must be prefix or cross_attention, got {conditioning}")
        self.lm, self.conditioning, self.max_length = lm, conditioning, max_length
        self.reduce = reduce  # fewer image tokens before the projector (token_reduction)
        width = hidden_size if reduce is None else reduce.out_features(hidden_size)
        self.projector = build_projector(projector, width, lm.config.hidden_size)
        self.positions = getattr(lm.config, "max_position_embeddings", None)
        # transformers 5 renamed past_key_values to cache (peft wraps the model: look inside)
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        params = inspect.signature(base.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def new_cache(self) -> HFDecoderCache:
        past = DynamicCache()
        if self.conditioning == "cross_attention":
            past = EncoderDecoderCache(past, DynamicCache())
        return HFDecoderCache(past)

    def forward(self, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                attention_mask: torch.Tensor | None = None, output_attentions: bool = False,
                cache: HFDecoderCache | None = None, labels: torch.Tensor | None = None,
                label_smoothing: float = 0.0,
                image_at: torch.Tensor | None = None) -> DecoderOutput:
        """``attention_mask`` covers the text positions, cached and new (B, past + L); with a
        ``cache``, ``input_ids`` are only the new tokens. With ``labels`` (B, L) the output
        is their ``loss`` and no logits: the LM head runs only where a label is set.
        ``image_at`` (B,): with prefix conditioning, the image's tokens go before each row's
        token at that index (a conversation's ``<image>``) instead of in front of all."""
        batch, length = input_ids.shape
        past = 0 if cache is None else cache.length
        embeds = self.lm.get_input_embeddings()(input_ids)  # (B, L, W)
        full = image_tokens.shape[1]
        if self.reduce is not None:
            image_tokens = self.reduce(image_tokens)  # (B, N', D')
        kwargs: dict[str, Any] = {}
        prefix, text_at = (cache.prefix if past else 0), None
        if attention_mask is None:
            attention_mask = input_ids.new_ones(batch, past + length)
        if self.conditioning == "cross_attention":
            kwargs["encoder_hidden_states"] = self.projector(image_tokens)  # (B, N, W)
        elif past == 0 and image_at is not None:  # the image inside the text, once
            image = self.projector(image_tokens).to(embeds.dtype)  # (B, N, W)
            embeds, mask, text_at = splice_image(image, embeds, attention_mask, image_at)
        elif past == 0:  # the image enters the sequence (and the cache) once
            image = self.projector(image_tokens).to(embeds.dtype)  # (B, N, W)
            embeds, prefix = torch.cat([image, embeds], dim=1), image.shape[1]
        if text_at is not None and output_attentions:
            raise ValueError("attention maps need the image in front (image_at=None)")
        if past and cache.mask is not None:  # the image inside the cached text
            mask = torch.cat([cache.mask, attention_mask[:, -length:]], dim=1)
        elif text_at is None:
            mask = torch.cat([attention_mask.new_ones(batch, prefix), attention_mask], dim=1)
        self._check_length(mask.shape[1])
        kwargs.update(inputs_embeds=embeds, attention_mask=mask,
                      position_ids=positions_from_mask(mask, embeds.shape[1]))
        eager = output_attentions or cpu_bf16_autocast(embeds.device)
        if labels is not None:
            with eager_attention(self.lm, eager):
                loss = self._loss(kwargs, length, labels, label_smoothing, text_at)
            return DecoderOutput(None, None, loss)
        if cache is not None:
            kwargs[self.cache_arg] = cache.past
        with eager_attention(self.lm, eager):
            out = self.lm(use_cache=cache is not None, output_attentions=output_attentions,
                          **kwargs)
        if cache is not None:
            cache.length, cache.prefix = past + length, prefix
            if text_at is not None or cache.mask is not None:
                cache.mask = mask
        weights = self._image_attentions(out, prefix, length, full) if output_attentions \
            else None
        return DecoderOutput(logits=text_positions(out.logits, length, text_at),
                             cross_attentions=weights)

    def loss(self, input_ids: torch.Tensor, image_tokens: torch.Tensor, labels: torch.Tensor,
             attention_mask: torch.Tensor | None = None, *,
             label_smoothing: float = 0.0,
             image_at: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced cross-entropy of ``labels`` (B, L; ``IGNORE`` where no loss):
        their mean."""
        return self(input_ids, image_tokens, attention_mask, labels=labels,
                    label_smoothing=label_smoothing, image_at=image_at).loss

    def _loss(self, inputs: dict[str, Any], length: int, labels: torch.Tensor,
              label_smoothing: float,
              text_at: torch.Tensor | None = None) -> torch.Tensor:
        hidden, head = self._text_outputs(inputs, length, text_at)
        return labelled_loss(hidden, labels, head, label_smoothing)

    def _text_outputs(self, inputs: dict[str, Any], length: int,
                      text_at: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, nn.Linear | None]:
        """The LM's body over ``inputs``: the text positions' final hidden states (the last
        ``length``, or ``text_at`` with the image spliced in) and the head that
        ``labelled_loss`` runs at the labelled ones; for an LM whose logits are more than a
        linear head, the text positions' logits and no head."""
        causal = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        if causal.config.model_type not in PLAIN_HEAD:
            logits = self.lm(use_cache=False, **inputs).logits  # (B, N + L, V)
            return text_positions(logits, length, text_at), None
        body = getattr(causal, causal.base_model_prefix)
        hidden = body(use_cache=False, **inputs).last_hidden_state  # (B, N + L, W)
        return text_positions(hidden, length, text_at), causal.get_output_embeddings()

    @property
    def packs(self) -> bool:
        """Whether ``packed_loss`` can run: the LM's attention takes a custom (B, 1, Q, K)
        mask."""
        return getattr(self.lm.config, "_attn_implementation", None) in PACKING_ATTENTION

    def packed_loss(self, packed: PackedRows, image_tokens: torch.Tensor,
                    label_smoothing: Sequence[float]) -> torch.Tensor:
        """One loss per row group (G,) of several tasks' sequences packed one row per image
        (``decoder.pack_by_image``; ``image_tokens`` (P, N, D), one image per packed row).

        Each sequence sees the image and the earlier tokens of its own sequence only, at the
        positions it has alone (after the prefix, 0.. of its own tokens), so its loss is
        that of its own forward; the image (prefix or cross-attention memory) is projected
        and, as a prefix, run through the LM once per image rather than once per sequence,
        and no sequence is padded to another task's length."""
        embeds = self.lm.get_input_embeddings()(packed.input_ids)  # (P, T, W)
        if self.reduce is not None:
            image_tokens = self.reduce(image_tokens)  # (P, N', D')
        image = self.projector(image_tokens)  # (P, N, W)
        inputs: dict[str, Any] = {"position_ids": packed.positions}
        prefix = 0
        if self.conditioning == "cross_attention":
            inputs["encoder_hidden_states"] = image
        else:
            prefix = image.shape[1]
            embeds = torch.cat([image.to(embeds.dtype), embeds], dim=1)  # (P, N + T, W)
            inputs["position_ids"] = torch.cat([torch.arange(prefix, device=embeds.device)
                                                .expand(len(embeds), -1),
                                                prefix + packed.positions], dim=1)
        self._check_length(prefix + int(packed.positions.max()) + 1)
        with eager_attention(self.lm, cpu_bf16_autocast(embeds.device)):
            allowed = packed.attends(prefix)  # (P, 1, N + T, N + T)
            inputs.update(inputs_embeds=embeds, attention_mask=allowed
                          if self.lm.config._attn_implementation == "sdpa"
                          else additive_mask(allowed, embeds.dtype))
            hidden, head = self._text_outputs(inputs, packed.input_ids.shape[1])
        return torch.stack([labelled_loss(hidden, packed.group_labels(g), head, eps)
                            for g, eps in enumerate(label_smoothing)])

    def _check_length(self, total: int) -> None:
        if self.positions is not None and total > self.positions:
            raise ValueError(f"{total} positions (image prefix + text) exceed the LM's "
                             f"max_position_embeddings={self.positions}")

    def _image_attentions(self, out, prefix: int, length: int,
                          full: int) -> tuple[torch.Tensor, ...]:
        """Per layer (B, H, L, N): the text positions' attention to the image, on the image
        encoder's full grid of N tokens even when the LM saw fewer."""
        if self.conditioning == "cross_attention":
            weights = tuple(a[:, :, -length:] for a in out.cross_attentions)
        else:
            weights = tuple(a[:, :, -length:, :prefix] for a in out.attentions)
        if self.reduce is None:
            return weights
        block = self.reduce.block(math.isqrt(full))
        return tuple(expand_weights(w, block) for w in weights)


# ---------------------------------------------------------------- building

def _first_line(err: Exception) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0]


def lm_config(cfg: HFTowerConfig, where: str, defaults: dict[str, Any]) -> PretrainedConfig:
    """The architecture the decoder section names; ``defaults`` (the tokenizer's sizes and
    special ids) fill what an ``hf_config`` leaves out."""
    if cfg.hf_config is not None:
        config = config_from_dict(cfg.hf_config, f"{where}.hf_config")
        for key, value in defaults.items():
            if key not in cfg.hf_config:
                setattr(config, key, value)
        return config
    try:
        return AutoConfig.from_pretrained(cfg.name_or_path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where}.name_or_path: {cfg.name_or_path!r} could not be found "
                          f"locally or online ({_first_line(err)})") from None


def causal_lm(cfg: HFTowerConfig, where: str, saved: dict[str, Any] | None,
              defaults: dict[str, Any]) -> tuple[nn.Module, PretrainedConfig]:
    """The LM, ready to train, and its resolved config (to save). ``saved``: the config a
    saved tuwen model recorded; the LM is then rebuilt from it offline, with random weights
    that ``from_pretrained`` overwrites."""
    config = (config_from_dict(saved, f"{where} (saved hf config)") if saved is not None
              else lm_config(cfg, where, defaults))
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is None:
        raise ConfigError(f"{where}: {config.model_type!r} is not a causal language model "
                          "(e.g. gpt2, llama, smollm) in transformers")
    if cfg.conditioning == "cross_attention":
        if "encoder_hidden_states" not in inspect.signature(model_class.forward).parameters:
            raise ConfigError(f"{where}.conditioning: {config.model_type!r} has no "
                              "cross-attention in transformers; use conditioning: prefix "
                              "(or a model such as gpt2)")
        config.add_cross_attention = True
    if saved is None and cfg.name_or_path is not None:
        try:
            with quiet_load_report():
                lm, info = model_class.from_pretrained(cfg.name_or_path, config=config,
                                                       output_loading_info=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{where}.name_or_path: {cfg.name_or_path!r} could not be "
                              f"loaded ({_first_line(err)})") from None
        warn_about_weights(info, where, cfg.name_or_path)
    else:
        lm = model_class(config)
    return adapt(lm.float(), cfg, where), config
