"""Frozen text-tower cache: a frozen text encoder's outputs, one entry per distinct text.

The text tower sees captions and questions, drawn anew every epoch, so the key of an entry is
the text's token ids (up to its last real token), not its place in a batch. A text missing
from the cache is computed padded to ``width`` (``data.max_text_length``, which no text
exceeds), and stored at that width; a batch padded to ``L`` reads the first ``L`` positions.
A token attends only to real tokens (the padding mask), so its state does not depend on how
far its batch is padded, up to float rounding (the frozen tower run every step differs
between paddings by as much: an image cache is bitwise, a text cache equal to rounding).
Non-float outputs (a tower's attention mask) are the input mask.

The files, the fingerprint and the append-only index are those of ``cache.FeatureCache``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tuwen.training.cache import _plain, _Store, _tensor_fields, fingerprint


def text_key(ids: torch.Tensor, mask: torch.Tensor) -> str:
    """sha256 of a row's token ids up to its last real token."""
    n = int(mask.nonzero().max()) + 1 if bool(mask.any()) else 0
    return hashlib.sha256(ids[:n].detach().cpu().to(torch.int64).numpy().tobytes()).hexdigest()


def _text_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, dict] | None:
    """(input_ids, attention_mask, the other arguments) of a call, or None if unusual."""
    kwargs = dict(kwargs)
    names = ["input_ids", "attention_mask"]
    values = list(args[:2]) + [kwargs.pop(n) for n in names[len(args[:2]):] if n in kwargs]
    if len(args) > 2 or len(values) != 2 or not all(torch.is_tensor(v) for v in values):
        return None
    return values[0], values[1], kwargs


class TextFeatureCache:
    """Wraps a frozen text module's forward: texts seen before are read from the store."""

    def __init__(self, module: nn.Module, directory: Path, precision: str, width: int,
                 pad_token_id: int, writer: str = "0") -> None:
        self.module, self.forward = module, module.forward
        self.width, self.pad = width, pad_token_id
        self.key = "text-" + fingerprint(module, f"{precision}|{width}")[:32]
        self.store = _Store(Path(directory) / self.key, writer)
        self.template = None
        self.hits = self.misses = 0
        module.forward = self.cached_forward

    def cached_forward(self, *args, **kwargs):
        inputs = _text_inputs(args, kwargs)
        if inputs is None or any(inputs[2].values()) or inputs[0].shape[1] > self.width:
            return self.forward(*args, **kwargs)  # e.g. output_attentions=True
        ids, mask, _ = inputs
        keys = [text_key(i, m) for i, m in zip(ids, mask, strict=True)]
        missing = [i for i, k in enumerate(keys) if k not in self.store.index]
        if missing:
            self.store.refresh()
            missing = [i for i, k in enumerate(keys) if k not in self.store.index]
        if missing:
            self.compute(ids[missing], mask[missing], [keys[i] for i in missing])
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return self.load(keys, ids, mask)

    @torch.no_grad()
    def run(self, ids: torch.Tensor, mask: torch.Tensor):
        """The module on texts padded to ``width`` (eval mode: it is frozen)."""
        extra = self.width - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, extra), value=self.pad)
        mask = torch.nn.functional.pad(mask, (0, extra), value=0)
        was_training = self.module.training
        self.module.eval()
        out = self.forward(input_ids=ids, attention_mask=mask)
        self.module.train(was_training)
        return out

    def compute(self, ids: torch.Tensor, mask: torch.Tensor, keys: list[str]) -> None:
        out = self.run(ids, mask)
        self.template = out
        tensors = {k: v for k, v in _tensor_fields(out).items() if v.is_floating_point()}
        if self.store.meta is None:
            fields = {k: list(v.shape[1:]) for k, v in tensors.items()}
            template = {f.name: _plain(getattr(out, f.name)) for f in dataclasses.fields(out)
                        if f.name not in tensors and not torch.is_tensor(getattr(out, f.name))}
            template["_dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
            self.store.set_meta(fields, template)
        self.store.append(keys, {k: v.float().cpu().numpy() for k, v in tensors.items()})

    def load(self, keys: list[str], ids: torch.Tensor, mask: torch.Tensor):
        if self.template is None:  # every text was cached by an earlier run
            self.template = self.run(ids[:1], mask[:1])
        entries = [self.store.index[k] for k in keys]
        dtype = getattr(torch, self.store.meta["template"]["_dtype"])
        length = ids.shape[1]
        values = {}
        for name, shape in self.store.meta["fields"].items():
            array = self.store.read(name, entries)
            if len(shape) >= 2 and shape[0] == self.width:  # a per-token field: this batch's length
                array = np.ascontiguousarray(array[:, :length])
            values[name] = torch.from_numpy(array).to(ids.device, dtype)
        for f in dataclasses.fields(self.template):  # the mask a tower passes through
            value = getattr(self.template, f.name)
            if torch.is_tensor(value) and not value.is_floating_point():
                values[f.name] = mask
        return dataclasses.replace(self.template, **values)

    def take_counts(self) -> dict[str, int]:
        counts = {"text_cache_hits": self.hits, "text_cache_misses": self.misses}
        self.hits = self.misses = 0
        return counts

    def close(self) -> None:
        self.module.forward = self.forward
