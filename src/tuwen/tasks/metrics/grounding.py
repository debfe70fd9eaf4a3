"""Grounding on the shapes data: does the fusion look at the objects a question names?

The shapes generator writes every image's objects (``scenes.json``: colour, shape, centre,
radius). In a relative-position question ("is the red circle left of the blue square?")
each named object's shape word should attend, through the fusion's text -> image
cross-attention, to that object's patches: only then can the fused question carry where
each of the two objects is. This measures the share of that attention which lands on the
named object's patches, per fusion layer (mean over heads, and the best head), next to the
share a uniform attention would give. A model that answers from a "bag of objects" spreads
its attention over all objects and scores near uniform; relative position cannot be answered
that way, which is what this is for.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tuwen.data.shapes import read_scenes
from tuwen.data.shapes_scene import COLOURS, SHAPES, ShapeObject
from tuwen.data.shapes_text import RELATIONS
from tuwen.data.text import TextNormalizer
from tuwen.models.image_text_model import ImageTextModel

# shapes_text's relative-position question: "is the {colour} {shape} {relation} the ...?"
_COLOUR, _SHAPE = "|".join(COLOURS), "|".join(SHAPES)
RELATION = re.compile(rf"^is the (?P<c1>{_COLOUR}) (?P<s1>{_SHAPE}) (?:{'|'.join(RELATIONS)}) "
                      rf"the (?P<c2>{_COLOUR}) (?P<s2>{_SHAPE}) ?\??$")


@dataclass(frozen=True)
class Scenes:
    objects: Mapping[str, list[ShapeObject]]  # image id (a string) -> its objects
    image_size: int  # the generated images' side: the objects' coordinates are in its pixels


def load_scenes(root: str | Path) -> Scenes | None:
    """The shapes data's ground truth in ``root`` (``scenes.json`` and the image size from
    ``manifest.json``); None when ``root`` is not a shapes data folder."""
    root = Path(root)
    manifest = root / "manifest.json"
    if not (root / "scenes.json").is_file() or not manifest.is_file():
        return None
    try:
        size = json.loads(manifest.read_text(encoding="utf-8"))["image_size"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None  # not a shapes manifest: no grounding, nothing else depends on it
    return Scenes(read_scenes(root / "scenes.json"), int(size))


def object_patches(obj: ShapeObject, image_size: int, grid: tuple[int, int]) -> list[int]:
    """Row-major indexes of the patches that the object's bounding square overlaps."""
    rows, cols = grid
    ph, pw = image_size / rows, image_size / cols

    def span(lo: float, hi: float, step: float, n: int) -> range:
        first = max(0, math.floor(lo / step))
        last = min(n - 1, math.ceil(hi / step) - 1)
        return range(first, last + 1)

    return [r * cols + c
            for r in span(obj.y - obj.radius, obj.y + obj.radius, ph, rows)
            for c in span(obj.x - obj.radius, obj.x + obj.radius, pw, cols)]


def named_objects(question: str, objects: Sequence[ShapeObject],
                  ) -> list[tuple[int, ShapeObject]] | None:
    """For a relative-position question, each named object with the character offset of
    its shape word; None for other questions or when a name does not pick out one object."""
    match = RELATION.match(question)
    if match is None:
        return None
    found = []
    for k in (1, 2):
        colour, shape = match.group(f"c{k}"), match.group(f"s{k}")
        fits = [o for o in objects if o.colour == colour and o.shape == shape]
        if len(fits) != 1:
            return None
        found.append((match.start(f"s{k}"), fits[0]))
    return found


def relation_grounding(model: ImageTextModel, tokenizer, pixels: torch.Tensor,
                       questions: Sequence[str], objects: Sequence[Sequence[ShapeObject]],
                       max_length: int, batch_size: int = 128,
                       scene_size: int | None = None) -> dict | None:
    """Attention share on named objects over the relative-position ``questions`` (each
    asked of the image in the same row of ``pixels``, whose scene is ``objects``, in pixels
    of a ``scene_size`` image: the input size when None; the patch grid covers the whole
    image at any resolution).

    Returns ``{"questions", "uniform", "per_layer", "best_head_per_layer"}`` (shares in
    [0, 1]), or None when no question qualifies or the fusion gives no cross-attention."""
    normalize = TextNormalizer.from_config(model.spec.text)
    size = scene_size or pixels.shape[-1]
    picked = []  # (row, normalised text, [(shape word's char offset, object)])
    for row, (question, scene) in enumerate(zip(questions, objects)):
        text = normalize(question)
        named = named_objects(text, scene)
        if named is not None:
            picked.append((row, text, named))
    if not picked:
        return None
    device = next(model.parameters()).device
    sums: list[torch.Tensor] = []
    uniform, count = 0.0, 0
    for start in range(0, len(picked), batch_size):
        chunk = picked[start: start + batch_size]
        enc = tokenizer([t for _, t, _ in chunk], padding="longest", truncation=True,
                        max_length=max_length, return_offsets_mapping=True,
                        return_tensors="pt")
        with torch.no_grad():
            image = model.encode_image(pixels[[r for r, _, _ in chunk]].to(device))
            text = model.encode_text(enc["input_ids"].to(device),
                                     enc["attention_mask"].to(device))
            fused = model.fuse(text, image.tokens, output_attentions=True)
        if not fused.attentions:
            return None
        grid = image.grid
        n_patches = grid[0] * grid[1]
        for b, (_, _, named) in enumerate(chunk):
            offsets = enc["offset_mapping"][b].tolist()
            for char, obj in named:
                token = next((i for i, (lo, hi) in enumerate(offsets)
                              if lo <= char < hi), None)
                if token is None:  # truncated away
                    continue
                patches = object_patches(obj, size, grid)
                # per layer: (H,) share of the word's attention on the object's patches
                shares = torch.stack([layer[b, :, token, patches].float().sum(-1).cpu()
                                      for layer in fused.attentions])
                sums.append(shares)
                uniform += len(patches) / n_patches
                count += 1
    if not count:
        return None
    mean = torch.stack(sums).mean(0)  # (layers, heads)
    return {"questions": len(picked), "uniform": round(uniform / count, 4),
            "per_layer": [round(v, 4) for v in mean.mean(-1).tolist()],
            "best_head_per_layer": [round(v, 4) for v in mean.max(-1).values.tolist()]}


def scene_rows(image_ids: Sequence, scenes: Mapping[str, list[ShapeObject]],
               ) -> list[list[ShapeObject]] | None:
    """Each image's objects, or None when an image has no scene (not shapes data)."""
    rows = [scenes.get(str(i)) for i in image_ids]
    return None if any(r is None for r in rows) else rows
