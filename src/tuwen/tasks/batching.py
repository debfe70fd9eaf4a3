"""What every task's batched inference shares: chunks with a progress bar, the model's device,
and generated ids back to text."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from tuwen.data.tokenizer import decode_text
from tuwen.models.image_text_model import ImageTextModel


def model_device(model: ImageTextModel) -> torch.device:
    return next(model.parameters()).device


def chunk_starts(n: int, size: int, desc: str, show_progress: bool) -> Iterable[int]:
    """0, size, 2 * size, ... below ``n``, with a progress bar when ``show_progress``."""
    return tqdm(range(0, n, size), desc=desc, disable=not show_progress, leave=False)


def decode_until_eos(tokenizer, ids: torch.Tensor, eos_token_id: int) -> list[str]:
    """Generated ids (B, T) -> one text per row, each cut at its first EOS."""
    rows = ids.tolist()
    return [decode_text(tokenizer, row[: row.index(eos_token_id)] if eos_token_id in row else row)
            for row in rows]
