"""Any Hugging Face vision backbone as the image tower (ViT, ResNet, CLIP/SigLIP vision, ...).

Transformers' patch tokens and CNNs' last feature map both become grid tokens (B, N, D),
projected to ``hidden_size``; a CLS token (and any register tokens after it) is kept out
of the tokens, so ``N == rows * cols`` of ``grid`` for every encoder.
"""

from __future__ import annotations

import inspect
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tuwen.config import HFImageEncoderConfig, ModelConfig
from tuwen.errors import ConfigError
from tuwen.model_files import PROCESSOR_FILE
from tuwen.models.image_encoders import ImageFeatures
from tuwen.models.towers import Tower

logger = logging.getLogger(__name__)


def grid_tokens(hidden: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], int]:
    """Backbone output -> (tokens (B, N, C), (rows, cols), number of prefix tokens).

    A square image gives a square grid, so N = side² + prefix (CLS, registers) with a small
    prefix; a CNN's (B, C, h, w) map is flattened row-major.
    """
    if hidden.ndim == 4:
        return hidden.flatten(2).transpose(1, 2), (hidden.shape[2], hidden.shape[3]), 0
    side = math.isqrt(hidden.shape[1])
    prefix = hidden.shape[1] - side * side
    return hidden[:, prefix:], (side, side), prefix


@contextmanager
def eager_attention(model: nn.Module, needed: bool):
    """Fused attention kernels return no weights; switch to eager only while they are asked."""
    before = getattr(model.config, "_attn_implementation", None)  # None: a CNN
    switch = needed and before not in (None, "eager")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)


@dataclass(frozen=True)
class BackboneLayout:
    """What a backbone really returns at the model's image size (``probe_backbone``)."""

    feature_size: int      # width of its tokens (channels of a CNN's last map)
    pooled_size: int       # width of its pooled output (its pooler's, else the tokens')
    grid: tuple[int, int]  # (rows, cols) of its token grid
    prefix: int            # CLS and register tokens in front of the grid
    interpolate: bool      # pass interpolate_pos_encoding=True (ViT, CLIP, SigLIP, Swin, ...)


def takes_interpolation(backbone: nn.Module) -> bool:
    """Whether the model's forward can resize its position embeddings to the image size
    (DINOv2 always does, and has no such argument)."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return "interpolate_pos_encoding" in inspect.signature(base.forward).parameters


@torch.no_grad()
def probe_backbone(backbone: nn.Module, image_size: int, where: str) -> BackboneLayout:
    """One forward of a blank image at ``image_size``: the token grid and widths come from
    what the model outputs, not from config attribute names (CNNs such as MobileNetV2 have
    no ``hidden_size``). What cannot be wired is a one-line error naming the model."""
    name = getattr(getattr(backbone, "config", None), "model_type", type(backbone).__name__)
    interpolate = takes_interpolation(backbone)
    extra = {"interpolate_pos_encoding": True} if interpolate else {}
    was_training = backbone.training
    backbone.eval()  # BatchNorm statistics stay as loaded
    try:
        out = backbone(pixel_values=torch.zeros(1, 3, image_size, image_size), **extra)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0][:160]
        raise ConfigError(f"{where}: {name!r} cannot encode {image_size}-px images "
                          f"({first})") from None
    finally:
        backbone.train(was_training)
    hidden = getattr(out, "last_hidden_state", None)
    if not torch.is_tensor(hidden) or hidden.ndim not in (3, 4):
        raise ConfigError(f"{where}: {name!r} returns no last_hidden_state of image tokens "
                          "(B, N, C) or feature map (B, C, h, w); it cannot be the image tower")
    tokens, grid, prefix = grid_tokens(hidden)
    pooled = getattr(out, "pooler_output", None)
    pooled_size = pooled.flatten(1).shape[1] if torch.is_tensor(pooled) else tokens.shape[-1]
    return BackboneLayout(tokens.shape[-1], pooled_size, grid, prefix, interpolate)


class HFImageEncoder(Tower):
    body_name = "backbone"

    def __init__(self, backbone: nn.Module, feature_size: int, dim: int,
                 pooled_size: int | None = None, interpolate: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(feature_size, dim)
        # poolers live in their own space (and may have their own width)
        self.pooled_proj = nn.Linear(pooled_size or feature_size, dim)
        self.extra = {"interpolate_pos_encoding": True} if interpolate else {}

    def forward(self, pixel_values: torch.Tensor,
                output_attentions: bool = False) -> ImageFeatures:
        asked = {"output_attentions": True} if output_attentions else {}  # CNNs have none
        with eager_attention(self.backbone, output_attentions):
            out = self.backbone(pixel_values=pixel_values, **asked, **self.extra)
        tokens, grid, prefix = grid_tokens(out.last_hidden_state)  # (B, N, C)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:  # ViT built without its (mostly untrained) pooler
            pooled = out.last_hidden_state[:, 0] if prefix else tokens.mean(dim=1)
        return ImageFeatures(tokens=self.proj(tokens), pooled=self.pooled_proj(pooled.flatten(1)),
                             grid=grid, has_cls=prefix > 0,
                             attentions=getattr(out, "attentions", None) or None)


# ---------------------------------------------------------------- preprocessing

@dataclass(frozen=True)
class Preprocessing:
    """What tuwen's ImageTransform needs: square side, per-channel mean and std."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def resolve_preprocessing(model: ModelConfig, default: Preprocessing,
                          log: bool = True) -> Preprocessing:
    """The preprocessing the model needs: ``default`` (data.image_size/mean/std) unless the
    image tower is an hf one that says otherwise; a change is logged, naming both."""
    cfg = model.image_encoder
    if cfg.type != "hf":
        return default
    pre = hf_preprocessing(cfg, default)
    if pre != default and log:
        source = cfg.name_or_path or "model.image_encoder.hf_config"
        logger.warning("model.image_encoder: images are preprocessed as %s needs them: %d px, "
                       "mean %s, std %s (data.image_size=%d, mean %s, std %s not used)", source,
                       pre.size, pre.mean, pre.std, default.size, default.mean, default.std)
    return pre


def hf_preprocessing(cfg: HFImageEncoderConfig, default: Preprocessing) -> Preprocessing:
    """The tower's own preprocessing: its image processor when it has one, else its
    config's image size with ``default``'s mean/std (random weights: mean/std unknown);
    ``cfg.image_size`` replaces the size."""
    pre = _tower_preprocessing(cfg, default)
    if cfg.image_size is None:
        return pre
    return Preprocessing(cfg.image_size, pre.mean, pre.std)


def _tower_preprocessing(cfg: HFImageEncoderConfig, default: Preprocessing) -> Preprocessing:
    from tuwen.models.hf_backbone import hf_config_for

    if cfg.name_or_path is not None:
        processor = processor_dict(cfg.name_or_path)
        if processor is not None:
            return from_processor(processor, default, cfg.name_or_path)
        size = getattr(hf_config_for(cfg, "image", "model.image_encoder", {}), "image_size", None)
    else:
        size = cfg.hf_config.get("image_size")
    return Preprocessing(int(size or default.size), default.mean, default.std)


def processor_dict(name_or_path: str) -> dict | None:
    """The model's preprocessor_config.json; None when it has none (then its config is all
    there is). A folder's broken file is an error, never silently replaced by defaults."""
    from transformers.image_processing_utils import ImageProcessingMixin

    folder = Path(name_or_path)
    if folder.is_dir() and not (folder / PROCESSOR_FILE).is_file():
        return None
    try:
        raw, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path)
    except OSError as err:
        if folder.is_dir():
            first = (str(err).strip() or type(err).__name__).splitlines()[0]
            raise ConfigError(f"{folder / PROCESSOR_FILE}: cannot be read ({first})") from None
        return None  # a hub model without one
    return raw


def from_processor(p: dict, default: Preprocessing, source: str) -> Preprocessing:
    """A preprocessor_config.json (ViT, CLIP, SigLIP, ConvNext/ResNet styles) -> size/mean/std."""
    size = p.get("crop_size") if p.get("do_center_crop") and p.get("crop_size") else p.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    if not isinstance(size, int):
        raise ConfigError(f"{source}: preprocessor_config.json has no usable image size "
                          f"(size={p.get('size')!r}, crop_size={p.get('crop_size')!r})")
    if p.get("do_normalize", True) is False:
        return Preprocessing(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    mean, std = p.get("image_mean", default.mean), p.get("image_std", default.std)
    return Preprocessing(size, tuple(float(v) for v in mean), tuple(float(v) for v in std))


def preprocessor_config(pre: Preprocessing) -> dict:
    """tuwen's ImageTransform written as an image processor config that AutoImageProcessor
    loads: shorter side to ``size`` (bicubic), centre crop, rescale, normalise."""
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
            "size": {"shortest_edge": pre.size}, "resample": 3, "do_center_crop": True,
            "crop_size": {"height": pre.size, "width": pre.size}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(pre.mean),
            "image_std": list(pre.std), "do_convert_rgb": True}
