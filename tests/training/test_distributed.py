"""Two CPU processes (gloo) through the real launchers against one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from itc_worker import fixed_batch, losses
from safetensors.torch import load_file

from tiny import tiny_overrides
from tuwen.config import load_config, save_config
from tuwen.training.loop import train

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def run(cmd, timeout=300):
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_global_itc_loss_equals_one_process_on_the_concatenated_batch(tmp_path):
    run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29517",
         str(HERE / "itc_worker.py"), str(tmp_path)])
    ranks = [torch.load(tmp_path / f"rank-{r}.pt", weights_only=True) for r in (0, 1)]
    single, single_grads = losses(fixed_batch(), gather=False)
    for r in ranks:  # every rank computes the loss of the global batch
        torch.testing.assert_close(r["loss"]["itc"], single["itc"])
        assert torch.isfinite(r["loss"]["itm"])
    # DDP averages the ranks' gradients: that must be the one-process gradient
    for name, grad in single_grads.items():
        mean = (ranks[0]["grads"][name] + ranks[1]["grads"][name]) / 2
        torch.testing.assert_close(mean, grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow  # two launches of 2 processes each
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_train_like_one_with_the_same_global_batch(tiny_shapes, tmp_path,
                                                                 launcher):
    """Caption + VQA (per-sample losses): 2 ranks x 4 images == 1 process accumulating 2 x 4.
    BatchNorm sees the same 4-image batches either way. Per-task gradient norms, measured
    on steps 2 and 4, read the DDP graph without disturbing its gradient synchronisation."""
    sets = tiny_overrides(tiny_shapes, batch_size=4, max_steps=4, save_every=2, log_every=1) + \
        ["train.tasks.itc=0", "train.tasks.itm=0", "train.task_grad_norm_every=2"]
    config = load_config(None, sets)
    save_config(config, tmp_path / "tiny.yaml")
    one = load_config(None, sets + ["train.grad_accumulation=2"])
    train(one, tmp_path / "one", show_progress=False)

    launch = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29518"] \
        if launcher == "torchrun" else \
        [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
         "--main_process_port", "29519"]  # without GPUs: 2 CPU processes on gloo
    run([*launch, "-m", "tuwen", "train", str(tmp_path / "tiny.yaml"), "--out",
         str(tmp_path / "two")])
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for name in a:
        if "running_" in name or "num_batches" in name:  # BN buffers: DDP keeps rank 0's
            continue
        # atol: the conv bias before the first BatchNorm gets a ~0 (noise) gradient
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=5e-5, msg=name)
    losses = [[json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl").read_text()
               .splitlines()] for run in ("one", "two")]
    assert len(losses[1]) == 4  # logged once, by the main process, as the mean over ranks
    norms = [json.loads(x).get("grad_norm_vqa") for x in
             (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert norms[0] is None and norms[2] is None and norms[1] > 0 and norms[3] > 0
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == \
        ["step-2", "step-4"]
