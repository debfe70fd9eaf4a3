"""Run by torchrun from test_fsdp_cpu.py: each rank shards a tiny model with FSDP2 (gloo on
CPUs), trains it on the same batch, then goes through tuwen's whole-state helpers as the
loop's save, resume and final save do. Writes OUT/step-2 (the checkpoint of rank 0's whole
states), OUT/round-trip.pt (the whole states gathered again after resuming a fresh sharded
objective from that checkpoint) and OUT/whole-R.pt (rank R's whole model: weights, outputs)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny import as_batch, tiny_spec  # noqa: E402
from tuwen.config import TrainConfig  # noqa: E402
from tuwen.models.image_text_model import build_model  # noqa: E402
from tuwen.models.layers import Block  # noqa: E402
from tuwen.tasks.table import default_options, joint_step  # noqa: E402
from tuwen.training.checkpoint import load_checkpoint, load_weights, save_checkpoint  # noqa: E402
from tuwen.training.distributed import (  # noqa: E402
    full_states,
    gather_rng_states,
    gather_whole_model,
    load_full_states,
)
from tuwen.training.objective import JointObjective  # noqa: E402
from tuwen.training.optim import build_optimizer  # noqa: E402

TASKS = {"caption": 1.0, "itc": 1.0, "itm": 1.0, "vqa": 1.0}
STEPS = 2


def fixed_batch():
    """Every task's inputs for 4 images (conftest's ``tiny_batch``, which a script can't use)."""
    g = torch.Generator().manual_seed(1)
    b, lc, lq = 4, 9, 6
    return as_batch({
        "pixel_values": torch.randn(b, 3, 32, 32, generator=g),
        "caption_image": torch.tensor([0, 0, 1, 2]),
        "caption_first": torch.tensor([True, False, True, True]),
        "caption_input_ids": torch.randint(7, 50, (4, lc), generator=g),
        "caption_attention_mask": torch.ones(4, lc, dtype=torch.long),
        "decoder_input_ids": torch.randint(7, 50, (4, lc), generator=g),
        "labels": torch.randint(7, 50, (4, lc), generator=g),
        "question_image": torch.tensor([0, 2, 3, 3]),
        "question_input_ids": torch.randint(7, 50, (4, lq), generator=g),
        "question_attention_mask": torch.ones(4, lq, dtype=torch.long),
        "vqa_targets": torch.rand(4, 7, generator=g),
    })


def build(shard: bool, seed: int = 0) -> tuple[JointObjective, torch.optim.AdamW]:
    """The objective (each Block, then the root, sharded over all ranks) and the loop's AdamW
    (decay and no-decay groups), built after sharding: fully_shard replaces the parameters."""
    torch.manual_seed(seed)
    objective = JointObjective(build_model(tiny_spec()), default_options())
    if shard:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for block in [m for m in objective.modules() if isinstance(m, Block)]:
            fully_shard(block, mesh=mesh)
        fully_shard(objective, mesh=mesh)
    return objective, build_optimizer(objective.model, TrainConfig())


def train(objective: JointObjective, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    """STEPS steps on ``batch``. Every rank sees the same batch, so FSDP's mean of the ranks'
    gradients is the one-process gradient, and BatchNorm's running statistics agree."""
    torch.manual_seed(2)  # ITM samples its hard negatives
    objective.train()
    for _ in range(STEPS):
        total, _ = objective(batch, TASKS)
        total.backward()
        optimizer.step()
        optimizer.zero_grad()


@torch.no_grad()
def outputs(model, batch: dict) -> dict[str, torch.Tensor]:
    """Every task's loss and the forward pass's outputs, in eval mode."""
    torch.manual_seed(3)
    model.eval()
    _, losses = joint_step(model, batch, TASKS)
    rows = batch.captions.image
    out = model(batch.pixel_values[rows], batch.captions.input_ids,
                batch.captions.attention_mask)
    return {**losses, "fused": out.fused, "pooled": out.pooled,
            "image_embeds": out.image_embeds, "text_embeds": out.text_embeds}


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    batch = fixed_batch()
    objective, optimizer = build(shard=True)
    train(objective, optimizer, batch)
    weights, optimizer_state = full_states(objective, optimizer)  # rank 0's; {} elsewhere
    rng_states = gather_rng_states()
    if rank == 0:
        save_checkpoint(out_dir, STEPS, weights, optimizer_state, {"train": {"step": STEPS}},
                        rng_states)
    dist.barrier()

    # A resume: every rank reads the checkpoint into a fresh (differently seeded) objective
    path = out_dir / f"step-{STEPS}"
    _, optimizer_state, _ = load_checkpoint(path, None)
    again, again_optimizer = build(shard=True, seed=1)
    load_full_states(again, again_optimizer, load_weights(path), optimizer_state)
    weights, optimizer_state = full_states(again, again_optimizer)
    if rank == 0:
        torch.save({"weights": weights, "optimizer": optimizer_state}, out_dir / "round-trip.pt")

    # The final save: every rank gets the whole model
    whole = gather_whole_model(again, again.model)
    torch.save({"type": type(whole).__name__, "weights": whole.state_dict(),
                "outputs": outputs(whole, batch)}, out_dir / f"whole-{rank}.pt")
    dist.destroy_process_group()
