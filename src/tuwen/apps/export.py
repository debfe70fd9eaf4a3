"""``tuwen export MODEL --format onnx --out DIR``: the retrieval paths of a saved model as ONNX.

Three graphs, each with a dynamic batch (and, for text, a dynamic length): the image tower +
ITC projection (unit-norm embeddings and the image tokens), the text tower + ITC projection,
and the ITM scorer (fusion + matching head over given tokens). Beside them the text encoder's
tokenizer and a manifest with the preprocessing, so that ``apps.onnx_backend`` reads the
folder without torch. The export checks itself before it writes the manifest: the ONNX
graphs under onnxruntime against the PyTorch model on ``CHECK_SIZE`` images and texts
(largest absolute difference at most ``TOLERANCE``), and the tokenizers-only tokenisation
against transformers'. A tower that ``torch.export`` cannot trace is refused in one line
that names it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tuwen import __version__, fsio
from tuwen.apps.onnx_backend import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PARTS,
    TOKENIZER_DIR,
    TOKENIZER_FILE,
    OnnxPipeline,
    TextEncoding,
)
from tuwen.apps.pipeline import model_fingerprint
from tuwen.errors import TuwenError
from tuwen.models.image_text_model import ImageTextModel

TOLERANCE = 1e-4
CHECK_SIZE = 32
# one file per graph below this many bytes of weights (ONNX's protobuf limit is 2 GiB)
EXTERNAL_DATA_BYTES = 1 << 30
# texts whose token ids must be the same under transformers and under tokenizers alone
CHECK_TEXTS = ["a red circle above a blue square", "What colour is the triangle?",
               "two  green\tsquares, left of  a yellow one!", "", "x " * 600]


class ExportRefused(TuwenError):
    """A model (or a part of it) that cannot be exported faithfully."""


class ImageEmbedding(nn.Module):
    """pixel_values -> (unit-norm ITC embeddings, image tokens)."""

    def __init__(self, model: ImageTextModel) -> None:
        super().__init__()
        self.encoder, self.head = model.image_encoder, model.itc_head

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.encoder(pixel_values)
        return self.head.embed_image(image.pooled), image.tokens  # (B, E), (B, N, D)


class TextEmbedding(nn.Module):
    """input_ids, attention_mask -> (unit-norm ITC embeddings, text tokens)."""

    def __init__(self, model: ImageTextModel) -> None:
        super().__init__()
        self.encoder, self.head = model.text_encoder, model.itc_head

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the tower itself, not model.encode_text: its length buckets change no value at a
        # real position, and a graph has no data-dependent grouping
        text = self.encoder(input_ids, attention_mask)
        return self.head.embed_text(text.pooled), text.tokens  # (B, E), (B, L, D)


class MatchScorer(nn.Module):
    """image tokens, text tokens, attention_mask -> ITM match probability (B,)."""

    def __init__(self, model: ImageTextModel) -> None:
        super().__init__()
        self.fusion, self.head = model.fusion, model.itm_head

    def forward(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        fused = self.fusion(text_tokens, attention_mask, image_tokens)
        return self.head(fused.pooled).float().softmax(dim=-1)[:, 1]


@dataclass
class Part:
    name: str                  # a key of onnx_backend.PARTS
    tower: str                 # what a refusal names
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic: dict[str, dict]   # input name -> {axis: torch.export.Dim}


def _parts(model: ImageTextModel, pixels: torch.Tensor, ids: torch.Tensor,
           mask: torch.Tensor) -> list[Part]:
    spec = model.spec.model
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=1)
    with torch.no_grad():
        image_tokens = ImageEmbedding(model)(pixels)[1]
        text_tokens = TextEmbedding(model)(ids, mask)[1]
    text_axes = {0: batch, 1: length}
    # text first: the tower most likely refused (lstm, gru) fails before the others run
    return [
        Part("text", f"the {spec.text_encoder.type} text encoder", TextEmbedding(model),
             {"input_ids": ids, "attention_mask": mask}, ["text_embeds", "text_tokens"],
             {"input_ids": text_axes, "attention_mask": text_axes}),
        Part("image", f"the {spec.image_encoder.type} image encoder", ImageEmbedding(model),
             {"pixel_values": pixels}, ["image_embeds", "image_tokens"],
             {"pixel_values": {0: batch}}),
        Part("itm", f"the {spec.fusion.type} fusion", MatchScorer(model),
             {"image_tokens": image_tokens, "text_tokens": text_tokens, "attention_mask": mask},
             ["itm"], {"image_tokens": {0: batch}, "text_tokens": text_axes,
                       "attention_mask": text_axes}),
    ]


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Failed to export", "- "))]
    return (useful or lines or [type(err).__name__])[0][:300]


def export_part(part: Part, path: Path) -> None:
    """``part`` to ``path`` with torch.export (the dynamo exporter); quiet unless it fails."""
    weights = sum(p.numel() * p.element_size() for p in part.module.parameters())
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)  # "torchvision is not installed" notes, step banners
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(part.module.eval(), tuple(part.inputs.values()), str(path),
                              input_names=list(part.inputs), output_names=part.outputs,
                              dynamic_shapes=tuple(part.dynamic[name] for name in part.inputs),
                              dynamo=True, external_data=weights > EXTERNAL_DATA_BYTES)
    except Exception as err:  # torch.export raises many kinds; each is this one refusal
        raise ExportRefused(f"{part.tower} cannot be exported to ONNX ({part.name} graph): "
                            f"{_first_line(err)}") from None
    finally:
        log.setLevel(level)


@dataclass
class ExportReport:
    out: Path
    max_abs_diff: dict[str, float]
    seconds: float
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in self.max_abs_diff.items())
        return (f"exported {', '.join(self.files)} to {self.out} in {self.seconds:.1f} s; "
                f"onnxruntime vs PyTorch on {CHECK_SIZE} images and texts, largest absolute "
                f"difference: {diffs} (tolerance {TOLERANCE:g})")


def _text_tokenizer(model: ImageTextModel, model_dir: Path):
    tokenizer = model.text_tokenizer or model.tokenizer
    if tokenizer is None:
        raise ExportRefused(f"{model_dir}: no tokenizer saved with the model")
    if tokenizer.pad_token_id is None:
        raise ExportRefused(f"{model_dir}: the text encoder's tokenizer has no padding token")
    return tokenizer


def _manifest(model: ImageTextModel, model_dir: Path, tokenizer) -> dict:
    spec = model.spec
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "tuwen_version": __version__,
        "model_id": model_fingerprint(model_dir), "source": str(model_dir.resolve()),
        "embed_dim": spec.model.embed_dim, "files": dict(PARTS),
        "inputs": {"image": ["pixel_values"], "text": ["input_ids", "attention_mask"],
                   "itm": ["image_tokens", "text_tokens", "attention_mask"]},
        "outputs": {"image": ["image_embeds", "image_tokens"],
                    "text": ["text_embeds", "text_tokens"], "itm": ["itm"]},
        "image": {"size": spec.image_size, "mean": list(spec.image_mean),
                  "std": list(spec.image_std), "resize": "shorter side, bicubic",
                  "crop": "centre square", "scale": "x / 255, then (x - mean) / std"},
        "text": {"normalize": spec.text.model_dump(), "max_length": spec.max_text_length,
                 "pad_token_id": tokenizer.pad_token_id, "pad_token": tokenizer.pad_token,
                 "padding_side": tokenizer.padding_side,
                 "tokenizer": f"{TOKENIZER_DIR}/{TOKENIZER_FILE}"},
    }


def _check_inputs(model: ImageTextModel, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` seeded images (preprocessed as the model's own transform does) and ``n`` token
    sequences of lengths 1..max_text_length, right-padded."""
    from PIL import Image

    from tuwen.data.images import ImageTransform

    rng = np.random.default_rng(0)
    spec = model.spec
    transform = ImageTransform.for_model(spec)
    side = spec.image_size + 7  # not the model's size: resize and crop run too
    pixels = np.stack([transform.array(Image.fromarray(
        rng.integers(0, 256, (side, side, 3), dtype=np.uint8))) for _ in range(n)])
    vocab = spec.text_vocab_size or spec.vocab_size
    lengths = rng.integers(1, spec.max_text_length + 1, n)
    lengths[0] = spec.max_text_length
    mask = (np.arange(spec.max_text_length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(1, vocab, mask.shape), 0).astype(np.int64)
    return pixels, ids, mask


def check_export(model: ImageTextModel, onnx: OnnxPipeline, n: int = CHECK_SIZE,
                 ) -> dict[str, float]:
    """Largest absolute difference of each output, onnxruntime against PyTorch; the ITM
    score runs on each backend's own tokens (the whole chain)."""
    pixels, ids, mask = _check_inputs(model, n)
    with torch.no_grad():
        image_embeds, image_tokens = ImageEmbedding(model)(torch.from_numpy(pixels))
        text_embeds, text_tokens = TextEmbedding(model)(torch.from_numpy(ids),
                                                        torch.from_numpy(mask))
        itm = MatchScorer(model)(image_tokens, text_tokens, torch.from_numpy(mask))
    o_image_embeds, o_image_tokens = onnx.run_image(pixels)
    o_text_embeds, o_text_tokens = onnx.run_text(ids, mask)
    o_itm = onnx.run_itm(o_image_tokens, o_text_tokens, mask)
    pairs = {"image_embeds": (image_embeds, o_image_embeds),
             "text_embeds": (text_embeds, o_text_embeds), "itm": (itm, o_itm)}
    return {name: float(np.abs(t.numpy() - o).max()) for name, (t, o) in pairs.items()}


def check_tokenizer(tokenizer, encode: TextEncoding, normalize) -> None:
    texts = [normalize.retrieval(t) for t in CHECK_TEXTS]
    ours = encode(texts)
    theirs = tokenizer(texts, padding="longest", truncation=True, max_length=encode.max_length,
                       return_tensors="np")
    for name, array in zip(("input_ids", "attention_mask"), ours):
        if not np.array_equal(array, theirs[name]):
            raise ExportRefused(f"the text tokenizer encodes differently without transformers "
                                f"({name} differ on the check texts)")


def export_onnx(model_dir: str | Path, out: str | Path, check_size: int = CHECK_SIZE,
                tolerance: float = TOLERANCE) -> ExportReport:
    """Export ``model_dir`` (a saved model folder) into ``out``; the manifest is written
    last, and only when the check passes."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    except ImportError as err:
        raise TuwenError(f"tuwen export --format onnx needs {err.name}: pip install "
                         "'tuwen[onnx]'") from None
    start = time.perf_counter()
    model_dir, out = Path(model_dir), Path(out)
    model = ImageTextModel.from_pretrained(model_dir).float().eval()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # a folder without one is no export
    pixels, ids, mask = (torch.from_numpy(a) for a in _check_inputs(model, 2))
    for part in _parts(model, pixels, ids, mask):
        export_part(part, out / PARTS[part.name])
    tokenizer = _text_tokenizer(model, model_dir)
    tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    if not (out / TOKENIZER_DIR / TOKENIZER_FILE).is_file():
        raise ExportRefused(f"{model_dir}: the text tokenizer has no {TOKENIZER_FILE} (a slow "
                            "tokenizer); the ONNX reader needs a fast one")
    manifest = _manifest(model, model_dir, tokenizer)
    fsio.write_json(out / MANIFEST_FILE, manifest, indent=2)
    onnx = OnnxPipeline.from_export(out)
    check_tokenizer(tokenizer, onnx.encode, onnx.normalize)
    diffs = check_export(model, onnx, check_size)
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > tolerance:
        (out / MANIFEST_FILE).unlink()
        raise ExportRefused(f"ONNX and PyTorch disagree: {worst} differs by {diffs[worst]:.2e} "
                            f"(tolerance {tolerance:g}); nothing usable was written to {out}")
    manifest["check"] = {"n": check_size, "tolerance": tolerance, "max_abs_diff": diffs,
                         "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}
    fsio.write_json(out / MANIFEST_FILE, manifest, indent=2)
    return ExportReport(out, diffs, time.perf_counter() - start,
                        [*PARTS.values(), f"{TOKENIZER_DIR}/", MANIFEST_FILE])
