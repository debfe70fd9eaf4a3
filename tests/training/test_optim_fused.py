"""build_optimizer takes the fused AdamW kernel where it can, with the same update."""

import torch
from torch import nn

from tuwen.config import TrainConfig
from tuwen.training.optim import build_optimizer, can_fuse


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def test_fused_on_cpu_float_parameters_and_same_update_as_the_loop():
    cfg = TrainConfig()
    fused_model, loop_model = _model(), _model()
    fused = build_optimizer(fused_model, cfg)
    assert fused.defaults["fused"] is True
    # the same groups, updated by PyTorch's per-parameter loop
    loop = torch.optim.AdamW(build_optimizer(loop_model, cfg).param_groups, foreach=False)
    assert not loop.defaults["fused"]
    x = torch.randn(5, 4)
    for model, optimizer in ((fused_model, fused), (loop_model, loop)):
        for _ in range(3):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b)


def test_not_fused_with_integer_or_meta_parameters():
    assert can_fuse([{"params": [torch.zeros(2, requires_grad=True)]}])
    assert not can_fuse([{"params": [torch.zeros(2, device="meta")]}])
    assert not can_fuse([{"params": []}])
