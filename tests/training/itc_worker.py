"""Run by torchrun from test_distributed.py: each rank takes its half of a fixed batch and
computes the gathered ITC (and ITM) loss; writes the loss and gradients to OUT/rank-R.pt."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny import as_batch, tiny_spec  # noqa: E402
from tuwen.models.image_text_model import build_model  # noqa: E402
from tuwen.tasks.table import joint_step  # noqa: E402


def fixed_batch() -> dict:
    """8 images with 1-2 captions each; caption 9 (image 6, rank 1's half) repeats caption 0."""
    g = torch.Generator().manual_seed(3)
    owner = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7])
    ids = torch.randint(7, 50, (len(owner), 9), generator=g)
    mask = torch.ones_like(ids)
    ids[5:, 7:], mask[5:, 7:] = 0, 0  # rank 1's captions are shorter: padded differently
    ids[0, 7:], mask[0, 7:] = 0, 0
    ids[9] = ids[0]
    first = torch.tensor([True, False, True, True, True, False, True, True, True, False, True])
    return {"pixel_values": torch.randn(8, 3, 32, 32, generator=g), "caption_image": owner,
            "caption_first": first, "caption_input_ids": ids, "caption_attention_mask": mask}


def half(batch: dict, rank: int) -> dict:
    """Images 4r..4r+3 and their captions, indices made local, padding cut to the longest."""
    rows = (batch["caption_image"] // 4) == rank
    ids, mask = batch["caption_input_ids"][rows], batch["caption_attention_mask"][rows]
    width = int(mask.sum(1).max())
    return {"pixel_values": batch["pixel_values"][4 * rank: 4 * rank + 4],
            "caption_image": batch["caption_image"][rows] - 4 * rank,
            "caption_first": batch["caption_first"][rows],
            "caption_input_ids": ids[:, :width], "caption_attention_mask": mask[:, :width]}


def losses(batch: dict, gather: bool) -> tuple[dict, dict]:
    torch.manual_seed(0)
    model = build_model(tiny_spec()).eval()  # eval: BatchNorm must not see batch statistics
    _, out = joint_step(model, as_batch(batch), {"itc": 1.0, "itm": 1.0}, gather=gather)
    out["itc"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    loss, grads = losses(half(fixed_batch(), rank), gather=True)
    torch.save({"loss": loss, "grads": grads}, Path(sys.argv[1]) / f"rank-{rank}.pt")
    dist.destroy_process_group()
