"""The torch-free reader of a ``tuwen export --format onnx`` folder.

``OnnxPipeline.from_export(DIR)`` embeds images and texts and scores image-text matches with
onnxruntime, numpy, PIL and the ``tokenizers`` library: the methods ``tuwen index`` and
``tuwen search`` call on a ``Pipeline`` (``load``, ``embed_images``, ``embed_texts``,
``model_id``, ``embed_dim``), with the same preprocessing (``data.images.ImageTransform``
and ``data.text.TextNormalizer``, which import no torch) and the same tokenisation as the
model was trained with. Nothing here imports torch; ``tests/apps/test_onnx_export.py`` checks
it in a fresh interpreter.

An export folder holds::

    manifest.json    what a reader needs: files, input and output names, preprocessing,
                     tokenisation, the source model's identity, and the export's own check
    image.onnx       pixel_values (B, 3, S, S) -> image_embeds (B, E) unit-norm,
                     image_tokens (B, N, D)
    text.onnx        input_ids, attention_mask (B, L) -> text_embeds (B, E) unit-norm,
                     text_tokens (B, L, D)
    itm.onnx         image_tokens, text_tokens, attention_mask -> itm (B,) match probability
    tokenizer/       the text encoder's tokenizer (tokenizer.json)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tuwen.apps.images import ImageLimits, open_image
from tuwen.config import TextConfig
from tuwen.data.images import ImageTransform
from tuwen.data.text import TextNormalizer
from tuwen.errors import TuwenError

MANIFEST_FILE = "manifest.json"
FORMAT = "tuwen-onnx"
FORMAT_VERSION = 1
PARTS = {"image": "image.onnx", "text": "text.onnx", "itm": "itm.onnx"}
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = "tokenizer.json"

ImageInput = str | Path | bytes | Image.Image


@dataclass
class Score:
    itc: float   # cosine similarity of the unit-norm ITC embeddings, -1..1
    itm: float   # ITM probability that the text matches the image, 0..1


@dataclass(frozen=True)
class TextEncoding:
    """The text encoder's tokenisation as the model was trained with it (transformers'
    ``tokenizer(texts, padding="longest", truncation=True, max_length=...)``), on the
    ``tokenizers`` library alone."""

    tokenizer: object   # tokenizers.Tokenizer, truncation and padding set
    max_length: int

    @classmethod
    def from_file(cls, path: Path, max_length: int, pad_id: int, pad_token: str,
                  padding_side: str = "right") -> TextEncoding:
        from tokenizers import Tokenizer

        if not path.is_file():
            raise TuwenError(f"{path}: missing; the export has no tokenizer")
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(direction=padding_side, pad_id=pad_id, pad_token=pad_token)
        return cls(tokenizer, max_length)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both (B, L) int64, padded to the longest."""
        encoded = self.tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encoded], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encoded], dtype=np.int64)
        return ids, mask


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise TuwenError(f"{directory}: not a tuwen ONNX export (no {MANIFEST_FILE}); "
                         "write one with: tuwen export MODEL --format onnx --out DIR")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise TuwenError(f"{path}: not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise TuwenError(f"{path}: format {manifest.get('format')!r} version "
                         f"{manifest.get('format_version')!r}, expected {FORMAT!r} version "
                         f"{FORMAT_VERSION}")
    return manifest


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    if not path.is_file():
        raise TuwenError(f"{path}: missing from the export")
    options = ort.SessionOptions()
    # OMP_NUM_THREADS caps onnxruntime as it caps torch (the tests pin one thread)
    threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class OnnxPipeline:
    """An export folder, loaded: embeddings and match scores with onnxruntime."""

    directory: Path
    manifest: dict
    sessions: dict            # part name -> onnxruntime.InferenceSession
    encode: TextEncoding
    transform: ImageTransform
    normalize: TextNormalizer
    batch_size: int = 32
    image_limits: ImageLimits = ImageLimits()

    @classmethod
    def from_export(cls, directory: str | Path, threads: int | None = None) -> OnnxPipeline:
        """``threads``: onnxruntime's intra-op threads (default: OMP_NUM_THREADS, else
        onnxruntime's own choice, one per physical core)."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise TuwenError("the ONNX backend needs onnxruntime: pip install "
                             "'tuwen[onnx]'") from None
        directory = Path(directory)
        manifest = read_manifest(directory)
        sessions = {part: _session(directory / name, threads)
                    for part, name in manifest["files"].items()}
        text, image = manifest["text"], manifest["image"]
        encode = TextEncoding.from_file(directory / TOKENIZER_DIR / TOKENIZER_FILE,
                                        text["max_length"], text["pad_token_id"],
                                        text["pad_token"], text["padding_side"])
        transform = ImageTransform(image["size"], tuple(image["mean"]), tuple(image["std"]))
        normalize = TextNormalizer.from_config(TextConfig(**text["normalize"]))
        return cls(directory, manifest, sessions, encode, transform, normalize)

    @property
    def model_id(self) -> str:
        """The source model's identity (``pipeline.model_fingerprint``): an index built by
        either backend is searched by the other."""
        return self.manifest["model_id"]

    @property
    def embed_dim(self) -> int:
        return self.manifest["embed_dim"]

    def load(self, image: ImageInput) -> Image.Image:
        """A path, bytes or a PIL image -> RGB PIL image, as ``Pipeline.load`` does."""
        return open_image(image, self.image_limits, self.transform.min_side)

    def pixels(self, images: Sequence[ImageInput]) -> np.ndarray:
        if not len(images):
            raise TuwenError("no images given")
        return np.stack([self.transform.array(self.load(image)) for image in images])

    def tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts normalised for retrieval, tokenised: (input_ids, attention_mask)."""
        return self.encode([self.normalize.retrieval(t) for t in texts])

    def _chunks(self, n: int):
        return (slice(start, start + self.batch_size) for start in range(0, n, self.batch_size))

    def run_image(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embeds, tokens = self.sessions["image"].run(None, {"pixel_values": pixel_values})
        return embeds, tokens

    def run_text(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embeds, tokens = self.sessions["text"].run(None, {"input_ids": ids,
                                                          "attention_mask": mask})
        return embeds, tokens

    def run_itm(self, image_tokens: np.ndarray, text_tokens: np.ndarray,
                mask: np.ndarray) -> np.ndarray:
        return self.sessions["itm"].run(None, {"image_tokens": image_tokens,
                                               "text_tokens": text_tokens,
                                               "attention_mask": mask})[0]

    def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(N, E) float32 unit-norm ITC embeddings."""
        images = list(images)
        out = [self.run_image(self.pixels(images[chunk]))[0] for chunk in self._chunks(len(images))]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, E) float32 unit-norm ITC embeddings of texts (normalised as in retrieval)."""
        texts = list(texts)
        out = [self.run_text(*self.tokens(texts[chunk]))[0] for chunk in self._chunks(len(texts))]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def score(self, images: Sequence[ImageInput], texts: Sequence[str]) -> list[Score]:
        """ITC similarity and ITM probability of each (image, text) pair."""
        if len(images) != len(texts):
            raise TuwenError(f"{len(images)} images but {len(texts)} texts: one text per image")
        images, texts, out = list(images), list(texts), []
        for chunk in self._chunks(len(images)):
            image_embeds, image_tokens = self.run_image(self.pixels(images[chunk]))
            ids, mask = self.tokens(texts[chunk])
            text_embeds, text_tokens = self.run_text(ids, mask)
            itc = (image_embeds * text_embeds).sum(axis=-1)
            itm = self.run_itm(image_tokens, text_tokens, mask)
            out.extend(Score(float(a), float(b)) for a, b in zip(itc, itm))
        return out
