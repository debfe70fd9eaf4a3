"""Where the model looks: per-token attention maps over the image patches.

For a caption (generated, or given) the decoder's cross-attention row that predicts each
token is one map over the image patches; for a text or question passed through the fusion,
each text token's attention to the patches is one (concat: the text-to-image block of the
joint attention; weighted_sum: its attention pooling, with the gates beside it). Layers and
heads are averaged or picked. With ``rollout`` the patch-token maps are carried back to the
input patches through the ViT's self-attention by attention rollout (Abnar & Zuidema,
2020): per layer ``0.5 * A + 0.5 * I`` (heads averaged, rows renormalised), multiplied from
the last layer down; the patch tokens are the last N of the encoder's sequence (a CLS and
any register tokens come first). The grid geometry always comes from the image encoder's output.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from tuwen.data.images import load_image, resize_and_crop, to_rgb
from tuwen.data.tokenizer import decode_text
from tuwen.errors import TuwenError
from tuwen.models.fusion import FusionOutput
from tuwen.models.generation import caption_prompt, greedy_generate
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks import vqa
from tuwen.tasks.saved_model import SavedModel

Pick = int | Literal["mean"]
SOURCES = ("decoder", "fusion")


@dataclass
class AttentionMaps:
    tokens: list[str]              # the title of each map
    maps: np.ndarray               # (T, rows, cols) attention mass per patch
    grid: tuple[int, int]          # (rows, cols), from the image encoder
    source: str                    # "decoder" or "fusion"
    text: str                      # the caption or question the maps belong to
    answer: str | None = None      # the VQA answer, for a question
    gates: np.ndarray | None = None  # weighted_sum fusion: gate per token (T,) or overall (1,)


def parse_pick(text: str, what: str) -> Pick:
    """``"mean"`` or an integer index (negative counts from the end)."""
    if text == "mean":
        return "mean"
    try:
        return int(text)
    except ValueError:
        raise TuwenError(f"--{what} {text!r}: expected an integer index or 'mean'") from None


def pick(weights: torch.Tensor, index: Pick, dim: int, what: str) -> torch.Tensor:
    """Average ``weights`` over ``dim`` or take one index of it (the dim is removed)."""
    if index == "mean":
        return weights.mean(dim=dim)
    count = weights.shape[dim]
    if not -count <= index < count:
        raise TuwenError(f"{what} {index} does not exist: the attention has {count} {what}s "
                         f"(0..{count - 1}, or negative from the end, or 'mean')")
    return weights.select(dim, index)


def select(attentions, layer: Pick = "mean", head: Pick = "mean") -> torch.Tensor:
    """Per-layer weights (B, H, L, N) of the first batch row -> one (L, N) map per query."""
    if isinstance(attentions, torch.Tensor):  # a fusion with a single attention
        attentions = (attentions,)
    if not attentions:
        raise TuwenError("the model returned no attention weights for this source")
    stacked = torch.stack([a[0].float() for a in attentions])  # (layers, H, L, N)
    return pick(pick(stacked, layer, 0, "layer"), head, 0, "head")


def attention_rollout(vit_attentions) -> torch.Tensor:
    """Attention rollout through self-attention layers (B=1, H, S, S) -> (S, S).

    ``R[i, j]``: how much of output token ``i`` flows from input token ``j``, counting the
    residual connection as half of every layer (Abnar & Zuidema, 2020).
    """
    rollout = None
    for layer in vit_attentions:
        a = layer[0].float().mean(dim=0)  # (S, S), heads averaged
        a = 0.5 * a + 0.5 * torch.eye(a.shape[0], dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    if rollout is None:
        raise TuwenError("attention rollout needs an image encoder with at least one "
                         "self-attention layer")
    return rollout


def _image_features(model: ImageTextModel, pixel_values: torch.Tensor, rollout: bool):
    if not rollout:
        return model.encode_image(pixel_values)
    encoder = model.image_encoder
    feats = None
    if "output_attentions" in inspect.signature(encoder.forward).parameters:
        feats = encoder(pixel_values, output_attentions=True)
    if feats is None or not feats.attentions:
        raise TuwenError(f"--rollout needs a ViT image encoder with self-attention; this model's "
                         f"{type(encoder).__name__} returns no attention weights")
    return feats


def _caption_ids(model: ImageTextModel, tokenizer, image_tokens: torch.Tensor,
                 text: str | None, max_new_tokens: int) -> list[int]:
    """Token ids of ``text`` (no special tokens), or of the greedy caption of the image."""
    if text is not None:
        ids = tokenizer(text, add_special_tokens=False, truncation=True,
                        max_length=model.spec.max_text_length - 1)["input_ids"]
    else:
        ids = greedy_generate(model, image_tokens, max_new_tokens)[0].tolist()
        eos = model.spec.eos_token_id
        ids = ids[: ids.index(eos)] if eos in ids else ids
    if not ids:
        raise TuwenError("no caption tokens to draw maps for (empty --text, or the model "
                         "generated an empty caption)")
    return ids


def _decoder_maps(model: ImageTextModel, image_tokens: torch.Tensor, ids: list[int],
                  layer: Pick, head: Pick) -> torch.Tensor:
    """Position t-1 of [BOS, w1..wT] (or of the chat prompt, then w1..wT) predicts wt: its
    cross-attention is wt's map."""
    prompt = caption_prompt(model.spec)
    inputs = torch.tensor([[*prompt, *ids]], device=image_tokens.device)
    out = model.decode(inputs, image_tokens, output_attentions=True)
    start = len(prompt) - 1
    return select(out.cross_attentions, layer, head)[start: start + len(ids)]  # (T, N)


def _gates(gates, length: int) -> np.ndarray | None:
    """Gate values of a gated fusion: one per text token when the shape allows, else one."""
    if gates is None:
        return None
    g = gates[0].detach().float()
    if g.ndim >= 1 and g.shape[0] == length:
        return g.reshape(length, -1).mean(dim=1).cpu().numpy()
    return g.mean().reshape(1).cpu().numpy()


def _fusion_maps(loaded: SavedModel, image_tokens: torch.Tensor, text: str, layer: Pick,
                 head: Pick):
    """Maps of each text token ([CLS] first, [SEP] dropped) through the fusion, the fused
    output (for the VQA head) and the gates of a gated fusion; the text is read in the text
    encoder's tokenizer, as the fusion was trained on it."""
    model, tok = loaded.model, loaded.text_tok
    enc = tok([text], truncation=True, max_length=model.spec.max_text_length,
              return_tensors="pt").to(image_tokens.device)
    fused = model.fuse(model.encode_text(enc["input_ids"], enc["attention_mask"]), image_tokens,
                       output_attentions=True)
    ids = enc["input_ids"][0].tolist()
    keep = [i for i, t in enumerate(ids) if t not in (tok.sep_token_id, tok.pad_token_id)]
    maps = select(fused.attentions, layer, head)[keep]  # (T, N)
    gates = _gates(fused.gates, len(ids))
    if gates is not None and len(gates) == len(ids):
        gates = gates[keep]
    return tok.convert_ids_to_tokens([ids[i] for i in keep]), maps, fused, gates


@torch.no_grad()
def attention_maps(loaded: SavedModel, pixel_values: torch.Tensor, *, text: str | None = None,
                   question: str | None = None, source: str = "decoder", layer: Pick = "mean",
                   head: Pick = "mean", rollout: bool = False,
                   max_new_tokens: int = 30) -> AttentionMaps:
    """Per-token maps over the patch grid for one image (``pixel_values`` (1, 3, H, W))."""
    if source not in SOURCES:
        raise TuwenError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    if question is not None and (source != "fusion" or text is not None):
        raise TuwenError("a question is read by the fusion, not the decoder: use "
                         "--source fusion (and no --text) with --question")
    model = loaded.model.eval()
    feats = _image_features(model, pixel_values, rollout)
    rows, cols = feats.grid
    if feats.tokens.shape[1] != rows * cols:
        raise TuwenError(f"the image encoder returned {feats.tokens.shape[1]} tokens for a "
                         f"{rows}x{cols} patch grid")
    answer, gates = None, None
    if question is not None:
        tokens, maps, fused, gates = _fusion_maps(loaded, feats.tokens, question, layer, head)
        text, answer = question, _answer(loaded, fused, pixel_values, question)
    else:
        ids = _caption_ids(model, loaded.tokenizer, feats.tokens, text, max_new_tokens)
        text = decode_text(loaded.tokenizer, ids)
        if source == "decoder":
            tokens = loaded.tokenizer.convert_ids_to_tokens(ids)
            maps = _decoder_maps(model, feats.tokens, ids, layer, head)
        else:
            tokens, maps, _, gates = _fusion_maps(loaded, feats.tokens, text, layer, head)
    if rollout:  # patch tokens are the last N of the encoder's sequence (after CLS/registers)
        n = rows * cols
        maps = maps @ attention_rollout(feats.attentions)[-n:, -n:]  # (T, N) input patches
    return AttentionMaps(list(tokens), maps.reshape(-1, rows, cols).cpu().numpy(), (rows, cols),
                         source, text, answer, gates)


def _answer(loaded: SavedModel, fused: FusionOutput, pixel_values: torch.Tensor,
            question: str) -> str:
    """The model's answer: classified from the fused question, or written by the LM after
    the question prompt (``model.vqa.mode: generate``), as ``tuwen ask`` answers it."""
    model = loaded.model
    if vqa.generates_answers(model):
        return vqa.answer_questions(model, loaded.tokenizer, None, pixel_values, [0], [question],
                                    max_length=model.spec.max_text_length)[0]
    if loaded.vocab is None:
        raise TuwenError("this model was trained without VQA data; it has no answers")
    mask = torch.ones(fused.fused.shape[:2], device=fused.fused.device)  # one unpadded question
    logits = loaded.model.vqa_head(fused.pooled, fused.fused, mask)
    return loaded.vocab.answer(int(logits.argmax(dim=-1)[0]))


def image_pixels(loaded: SavedModel, image_path: str | Path) -> torch.Tensor:
    """The model's input for one image file, (1, 3, H, W) on the model's device."""
    device = next(loaded.model.parameters()).device
    return loaded.transform(load_image(image_path, loaded.transform.min_side))[None].to(device)


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, rows, cols) -> (T, H, W), bilinear, as the maps are overlaid on the image."""
    t = torch.from_numpy(np.asarray(maps, dtype=np.float32))[:, None]  # (T, 1, rows, cols)
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return out[:, 0].numpy()


def display_image(image_path: str | Path, size: int = 256) -> np.ndarray:
    """The region of the image the model sees (its centre square), at ``size`` px, (H, W, 3)."""
    return np.asarray(resize_and_crop(to_rgb(load_image(image_path)), size))
