"""A fixed batch of 64 images with all four tasks' labels, split into micro-batches, and one
accumulation step over them; run by torchrun from test_grad_cache.py (each rank takes its
half, in two micro-batches) and imported by the test for the one-process reference."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny import as_batch, tiny_spec  # noqa: E402
from tuwen.config import TrainConfig  # noqa: E402
from tuwen.models.image_text_model import build_model  # noqa: E402
from tuwen.training.distributed import make_accelerator  # noqa: E402
from tuwen.training.objective import JointObjective  # noqa: E402
from tuwen.training.parts import Parts  # noqa: E402
from tuwen.training.step import accumulate_gradients  # noqa: E402

WEIGHTS = {"caption": 1.0, "itc": 1.0, "itm": 0.5, "vqa": 0.7}
N, CAPTION_LENGTH, QUESTION_LENGTH = 64, 9, 6


def fixed_batch(n: int = N) -> dict:
    """Two captions per image (one of image 40's repeats image 5's: a positive across micro-
    batches), one question per image, ITM's swapped caption for every 4th image. Equal
    lengths and counts everywhere: each micro-batch's mean loss weighs its rows as the
    whole batch's mean does."""
    g = torch.Generator().manual_seed(3)
    owner = torch.arange(n).repeat_interleave(2)
    ids = torch.randint(7, 50, (2 * n, CAPTION_LENGTH), generator=g)
    ids[81] = ids[10]
    swapped = torch.arange(0, n, 4)
    return {"pixel_values": torch.randn(n, 3, 32, 32, generator=g), "caption_image": owner,
            "caption_first": torch.arange(2 * n) % 2 == 0, "caption_input_ids": ids,
            "caption_attention_mask": torch.ones_like(ids),
            "caption_weight": 0.5 + torch.rand(2 * n, generator=g),
            "decoder_input_ids": torch.randint(7, 50, (2 * n, CAPTION_LENGTH), generator=g),
            "labels": torch.randint(7, 50, (2 * n, CAPTION_LENGTH), generator=g),
            "swap_image": swapped,
            "swap_input_ids": torch.randint(7, 50, (len(swapped), CAPTION_LENGTH), generator=g),
            "swap_attention_mask": torch.ones(len(swapped), CAPTION_LENGTH, dtype=torch.long),
            "question_image": torch.arange(n),
            "question_input_ids": torch.randint(7, 50, (n, QUESTION_LENGTH), generator=g),
            "question_attention_mask": torch.ones(n, QUESTION_LENGTH, dtype=torch.long),
            "vqa_targets": torch.rand(n, 7, generator=g)}


IMAGE_KEYS = {"caption_image": None, "question_image": None, "swap_image": None}
ROW_KEYS = {"caption_image": ("caption_first", "caption_input_ids", "caption_attention_mask",
                              "caption_weight", "decoder_input_ids", "labels"),
            "question_image": ("question_input_ids", "question_attention_mask", "vqa_targets"),
            "swap_image": ("swap_input_ids", "swap_attention_mask")}


def images(batch: dict, start: int, stop: int) -> dict:
    """Images start..stop-1 and their rows, image indices made local."""
    out = {"pixel_values": batch["pixel_values"][start:stop]}
    for key, fields in ROW_KEYS.items():
        rows = (batch[key] >= start) & (batch[key] < stop)
        out[key] = batch[key][rows] - start
        out.update({f: batch[f][rows] for f in fields})
    return out


def micro_batches(batch: dict, count: int, first: int = 0, size: int | None = None) -> list:
    """``count`` micro-batches of ``size`` images from image ``first`` on, as typed batches."""
    size = size or len(batch["pixel_values"]) // count
    return [as_batch(images(batch, first + k * size, first + (k + 1) * size))
            for k in range(count)]


def tiny_parts(dropout: float = 0.0) -> Parts:
    """A tiny model in train mode (dropout as given), wrapped as a run wraps it. BatchNorm
    (the image stem's) in eval mode: no accumulation makes four batches' statistics one's."""
    torch.manual_seed(0)
    model = build_model(tiny_spec(dropout=dropout)).train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    accelerator = make_accelerator(TrainConfig(), cpu=True)
    objective = JointObjective(model, gather=accelerator.num_processes > 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    return Parts(accelerator, objective, model, optimizer, None, None)


def step_gradients(parts: Parts, batches: list, weights: dict | None = None,
                   **kwargs) -> tuple[dict, dict]:
    torch.manual_seed(1)  # ITM's negatives are drawn from the RNG
    losses, _, _ = accumulate_gradients(parts, batches, weights or WEIGHTS, "fp32", **kwargs)
    grads = {n: p.grad.clone() for n, p in parts.model.named_parameters() if p.grad is not None}
    return losses, grads


if __name__ == "__main__":
    parts = tiny_parts()
    rank = parts.accelerator.process_index
    half = N // 2
    losses, grads = step_gradients(parts, micro_batches(fixed_batch(), 2, rank * half, half // 2))
    torch.save({"losses": losses, "grads": grads}, Path(sys.argv[1]) / f"rank-{rank}.pt")
