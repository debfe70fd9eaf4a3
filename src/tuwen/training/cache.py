"""Frozen-feature cache: a frozen image encoder's outputs, computed once, memory-mapped.

When the image encoder's body is frozen (``model.image_encoder.freeze: true``) and the
training images are not augmented, its output for an image never changes, so it is computed
once and read from disk after (``train.feature_cache``, on by default for a frozen tower:
``training.frozen`` decides, fills the cache before the first step and logs its reads;
``training.text_cache`` does the same for a frozen text tower).

The key of an entry is the sha256 of the encoder's *fingerprint* (class, every parameter and
buffer, the autocast precision) and of the preprocessed ``pixel_values`` row it was given.
The pixels are exactly what the image bytes and the preprocessing produce, so any change of
the image file, the resize/crop/normalisation or the weights gives a new key (a miss), and
nothing else does. Entries of one fingerprint live in ``DIR/<fingerprint>/``: one
append-only float32 file per output tensor (read through ``numpy.memmap``) and an
append-only index of ``key row`` lines, written after the rows, so a killed run leaves a
usable cache. Each process appends to its own files (named by its rank and a random id,
so runs that share ``train.feature_cache_dir`` at the same time do not collide) and reads
everyone's.

The cache replaces the ``forward`` of the frozen body (the whole small tower, or the
Hugging Face model inside an ``hf`` tower, whose new projection keeps training), so the
model, its parameter names and the tasks do not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tuwen import fsio
from tuwen.config import Config


def fingerprint(module: nn.Module, extra: str = "") -> str:
    """sha256 of a module's class, parameters and buffers (names, dtypes, shapes, values)."""
    digest = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}|{extra}"
                            .encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# forward arguments a tower passes on every call (hf_image: ViT-family models resize their
# position embeddings to the image size); cached outputs are those of such calls
SAME_OUTPUTS = ("interpolate_pos_encoding",)


def _row_key(row: torch.Tensor) -> str:
    return hashlib.sha256(row.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class _Store:
    """The files of one fingerprint: ``{field}-{writer}.f32`` rows and ``index-{writer}.txt``."""

    def __init__(self, directory: Path, writer: str) -> None:
        # one writer per store object: two runs (or ranks) sharing the folder never append
        # to one file, where each would number its rows without seeing the other's
        self.dir, self.writer = directory, f"{writer}-{uuid.uuid4().hex[:12]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta_path = self.dir / "meta.json"
        self.meta: dict | None = (json.loads(self.meta_path.read_text())
                                  if self.meta_path.is_file() else None)
        self.index: dict[str, tuple[str, int]] = {}
        self.rows = {}  # writer -> rows readable
        self.maps: dict[tuple[str, str], np.memmap] = {}
        self._seen: dict[str, int] = {}  # index file -> size already read
        self.refresh()

    def refresh(self) -> None:
        """Read the index lines every writer appended since the last refresh."""
        for path in sorted(self.dir.glob("index-*.txt")):
            writer = path.stem[len("index-"):]
            size = path.stat().st_size
            if size == self._seen.get(path.name, 0):
                continue
            with path.open() as f:
                f.seek(self._seen.get(path.name, 0))
                text = f.read()
            complete = text[: text.rfind("\n") + 1]  # a killed writer may leave half a line
            self._seen[path.name] = self._seen.get(path.name, 0) + len(complete.encode())
            for line in complete.splitlines():
                key, row = line.split()
                self.index[key] = (writer, int(row))
                self.rows[writer] = max(self.rows.get(writer, 0), int(row) + 1)

    def set_meta(self, fields: dict[str, list[int]], template: dict) -> None:
        self.meta = {"fields": fields, "template": template}
        fsio.write_json(self.meta_path, self.meta)

    def append(self, keys: list[str], arrays: dict[str, np.ndarray]) -> None:
        start = self.rows.get(self.writer, 0)
        for name, array in arrays.items():
            with (self.dir / f"{name}-{self.writer}.f32").open("ab") as f:
                f.write(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        with (self.dir / f"index-{self.writer}.txt").open("a") as f:
            f.write("".join(f"{k} {start + i}\n" for i, k in enumerate(keys)))
        self.refresh()

    def read(self, name: str, entries: list[tuple[str, int]]) -> np.ndarray:
        shape = self.meta["fields"][name]
        out = np.empty((len(entries), *shape), dtype=np.float32)
        for i, (writer, row) in enumerate(entries):
            out[i] = self._map(name, writer, row)[row]
        return out

    def _map(self, name: str, writer: str, row: int) -> np.memmap:
        mapped = self.maps.get((name, writer))
        if mapped is None or row >= len(mapped):
            shape = self.meta["fields"][name]
            path = self.dir / f"{name}-{writer}.f32"
            n = path.stat().st_size // (4 * int(np.prod(shape)))
            mapped = np.memmap(path, dtype=np.float32, mode="r", shape=(n, *shape))
            self.maps[(name, writer)] = mapped
        return mapped


def _tensor_fields(out) -> dict[str, torch.Tensor]:
    return {f.name: v for f in dataclasses.fields(out)
            if torch.is_tensor(v := getattr(out, f.name))}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


class FeatureCache:
    """Wraps a frozen module's forward: rows of ``pixel_values`` seen before are read from
    the store; the others are computed (eval mode, no grad) and appended."""

    def __init__(self, module: nn.Module, directory: Path, precision: str,
                 writer: str = "0") -> None:
        self.module, self.forward = module, module.forward
        self.options: dict = {}  # the SAME_OUTPUTS arguments the tower passes
        self.key = fingerprint(module, precision)[:32]
        self.store = _Store(Path(directory) / self.key, writer)
        self.template = None  # an output of the module, for its type and non-tensor fields
        self.hits = self.misses = 0
        module.forward = self.cached_forward

    def cached_forward(self, pixel_values: torch.Tensor, *args, **kwargs):
        rest = {k: v for k, v in kwargs.items() if k not in SAME_OUTPUTS}
        if args or any(rest.values()):  # e.g. output_attentions=True: not what is cached
            return self.forward(pixel_values, *args, **kwargs)
        self.options = {k: v for k, v in kwargs.items() if k in SAME_OUTPUTS}
        keys = [_row_key(row) for row in pixel_values]
        missing = [i for i, k in enumerate(keys) if k not in self.store.index]
        if missing:
            self.store.refresh()  # another process may have computed them meanwhile
            missing = [i for i, k in enumerate(keys) if k not in self.store.index]
        if missing:
            self.compute(pixel_values[missing], [keys[i] for i in missing])
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return self.load(keys, pixel_values)

    def compute(self, pixel_values: torch.Tensor, keys: list[str]) -> None:
        out = self.probe(pixel_values)
        tensors = _tensor_fields(out)
        self.template = out
        if self.store.meta is None:
            fields = {k: list(v.shape[1:]) for k, v in tensors.items()}
            template = {f.name: _plain(getattr(out, f.name)) for f in dataclasses.fields(out)
                        if f.name not in tensors}
            template["_dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
            self.store.set_meta(fields, template)
        self.store.append(keys, {k: v.float().cpu().numpy() for k, v in tensors.items()})

    def load(self, keys: list[str], pixel_values: torch.Tensor):
        if self.template is None:  # every row was cached by an earlier run
            self.template = self.probe(pixel_values[:1])
        entries = [self.store.index[k] for k in keys]
        dtype = getattr(torch, self.store.meta["template"]["_dtype"])
        tensors = {name: torch.from_numpy(self.store.read(name, entries))
                   .to(pixel_values.device, dtype) for name in self.store.meta["fields"]}
        return dataclasses.replace(self.template, **tensors)

    @torch.no_grad()
    def probe(self, pixel_values: torch.Tensor):
        """One image through the module, for the output's type and non-tensor fields."""
        was_training = self.module.training
        self.module.eval()
        out = self.forward(pixel_values, **self.options)
        self.module.train(was_training)
        return out

    def take_counts(self) -> dict[str, int]:
        """Images read from the cache and computed since the last call (for metrics.jsonl)."""
        counts = {"cache_hits": self.hits, "cache_misses": self.misses}
        self.hits = self.misses = 0
        return counts

    def close(self) -> None:
        """Put the module's own forward back."""
        self.module.forward = self.forward


def frozen_body(model: nn.Module) -> nn.Module | None:
    """The image encoder's part without trainable parameters that takes pixels: the whole
    tower, or an ``hf`` tower's model; None if it trains."""
    tower = model.image_encoder
    body = tower.body() if hasattr(tower, "body") else tower
    if any(p.requires_grad for p in body.parameters()):
        return None
    return body


def augmented(config: Config) -> bool:
    augment = config.data.augment
    return augment is not None and (augment.random_resized_crop is not None or
                                    augment.color_jitter is not None or augment.hflip)
