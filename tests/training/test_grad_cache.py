"""Accumulation with the whole batch's negatives (training.grad_cache): 4 x 16 gives the
gradient of 1 x 64 with caption, ITC, ITM and VQA, on one process and on two; the re-run
replays each micro-batch's dropout; the switch off keeps each micro-batch's negatives.

The equality tests run without dropout: a (64, ...) dropout mask is not four (16, ...)
masks, whatever the accumulation. The dropout test shows instead that each re-run computes
bitwise the tower outputs its gradient was cached for; with the equality at p = 0 that makes
the step the exact gradient of one batch of 64 under the masks drawn.
"""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from grad_cache_worker import WEIGHTS, fixed_batch, micro_batches, step_gradients, tiny_parts
from safetensors.torch import load_file

from tiny import tiny_overrides
from tuwen.config import load_config, save_config
from tuwen.tasks.saved_model import load
from tuwen.tasks.table import joint_step
from tuwen.training import grad_cache, step
from tuwen.training.loop import train
from tuwen.training.step import accumulate_gradients

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(HERE.parents[1] / "src"),
                                      os.environ.get("PYTHONPATH", "")])}


def assert_same_gradients(got: dict, want: dict, rtol: float = 1e-5) -> None:
    assert got.keys() == want.keys() and len(want) > 50
    for name, grad in want.items():
        error = float((got[name] - grad).norm() / grad.norm().clamp_min(1e-30))
        assert error <= rtol, f"{name}: relative error {error:.2e}"


@pytest.fixture(scope="module")
def one_by_64():
    """The reference: one process, one batch of 64 (no accumulation)."""
    return step_gradients(tiny_parts(), micro_batches(fixed_batch(), 1))


def test_4x16_gives_the_gradient_of_1x64_with_all_four_tasks(one_by_64):
    losses, grads = step_gradients(tiny_parts(), micro_batches(fixed_batch(), 4))
    want_losses, want = one_by_64
    assert set(losses) == {"loss", *WEIGHTS}
    for name in losses:
        assert losses[name] == pytest.approx(want_losses[name], rel=1e-6), name
    assert_same_gradients(grads, want)


def test_4x16_gives_the_gradient_of_1x64_without_itm():
    weights = {"caption": 1.0, "itc": 1.0, "vqa": 1.0}
    _, want = step_gradients(tiny_parts(), micro_batches(fixed_batch(), 1), weights)
    _, grads = step_gradients(tiny_parts(), micro_batches(fixed_batch(), 4), weights)
    assert_same_gradients(grads, want)


def test_two_processes_of_2x16_give_the_gradient_of_1x64(one_by_64, tmp_path):
    """Rank r takes images 32r..32r+31 in two micro-batches of 16 (gloo, DDP)."""
    out = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port",
                          "29527", str(HERE / "grad_cache_worker.py"), str(tmp_path)],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    want_losses, want = one_by_64
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank-{rank}.pt", weights_only=True)
        assert got["losses"] == pytest.approx(want_losses, rel=1e-6)
        assert_same_gradients(got["grads"], want)


def recorded_towers(monkeypatch) -> list:
    """Every ``encode_towers`` call's outputs, in call order (embed passes, then re-runs)."""
    calls, original = [], grad_cache.encode_towers

    def encode(model, batch, itm):
        out = original(model, batch, itm)
        calls.append([t.detach().clone() for t in
                      (out.image.tokens, out.text.tokens, out.swapped.tokens)])
        return out

    monkeypatch.setattr(grad_cache, "encode_towers", encode)
    return calls


def test_each_rerun_replays_the_dropout_of_its_embed_pass(monkeypatch):
    calls = recorded_towers(monkeypatch)
    _, grads = step_gradients(tiny_parts(dropout=0.2), micro_batches(fixed_batch(), 4))
    assert len(calls) == 8 and all(torch.isfinite(g).all() for g in grads.values())
    for embed, rerun in zip(calls[:4], calls[4:]):
        assert all(torch.equal(a, b) for a, b in zip(embed, rerun))
    # the dropout is on: without the replay, the re-run draws other masks
    calls.clear()
    monkeypatch.setattr(grad_cache, "replaying", lambda *_: contextlib.nullcontext())
    step_gradients(tiny_parts(dropout=0.2), micro_batches(fixed_batch(), 4))
    assert not torch.equal(calls[0][0], calls[4][0])


def test_switched_off_each_micro_batch_keeps_its_own_negatives():
    """``whole_batch_negatives=False`` is the accumulation of before: each micro-batch's
    joint loss on its own (ITC over its 16 images), the mean of their gradients."""
    batches = micro_batches(fixed_batch(), 4)
    losses, grads = step_gradients(tiny_parts(), batches, whole_batch_negatives=False)
    parts = tiny_parts()
    torch.manual_seed(1)
    itc = 0.0
    for batch in batches:
        total, each = joint_step(parts.model, batch, WEIGHTS)
        (total / 4).backward()
        itc += each["itc"].item() / 4
    want = {n: p.grad for n, p in parts.model.named_parameters() if p.grad is not None}
    assert grads.keys() == want.keys()
    assert all(torch.equal(grads[n], want[n]) for n in want)
    assert losses["itc"] == pytest.approx(itc, rel=1e-6)
    whole, _ = step_gradients(tiny_parts(), batches)
    assert whole["itc"] > losses["itc"] + 1  # 63 negatives per image instead of 15


def measured_norms(batches) -> dict:
    torch.manual_seed(1)
    parts = tiny_parts()
    torch.manual_seed(1)
    return accumulate_gradients(parts, batches, WEIGHTS, "fp32", measure_tasks=True)[2]


def test_itc_and_itm_gradient_norms_cover_the_whole_batch():
    """Their ``grad_norm_<task>`` is 1 x 64's (the per-sample tasks' stays the first
    micro-batch's); measuring leaves the gradient bitwise as it is."""
    want = measured_norms(micro_batches(fixed_batch(), 1))
    got = measured_norms(micro_batches(fixed_batch(), 4))
    assert set(got) == {f"grad_norm_{t}" for t in WEIGHTS}
    for task in ("itc", "itm"):
        assert got[f"grad_norm_{task}"] == pytest.approx(want[f"grad_norm_{task}"], rel=1e-5)
    _, measured = step_gradients(tiny_parts(), micro_batches(fixed_batch(), 4),
                                 measure_tasks=True)
    _, plain = step_gradients(tiny_parts(), micro_batches(fixed_batch(), 4))
    assert all(torch.equal(measured[n], plain[n]) for n in plain)


def test_bf16_autocast_accumulates_with_the_whole_batch():
    losses, _ = step_gradients(tiny_parts(), micro_batches(fixed_batch(), 4))
    parts = tiny_parts()
    torch.manual_seed(1)
    half, _, _ = accumulate_gradients(parts, micro_batches(fixed_batch(), 4), WEIGHTS, "bf16")
    assert half["itc"] == pytest.approx(losses["itc"], rel=0.05)
    assert all(torch.isfinite(p.grad).all() for p in parts.model.parameters()
               if p.grad is not None)


def test_the_switch_is_on_by_default_and_typed():
    assert load_config(None, []).train.whole_batch_negatives is True
    assert load_config(None, ["train.whole_batch_negatives=false"]).train \
        .whole_batch_negatives is False
    assert grad_cache.applies(True, 2, {"itc": 1.0})
    assert not grad_cache.applies(True, 1, {"itc": 1.0})
    assert not grad_cache.applies(True, 2, {"caption": 1.0})
    assert not grad_cache.applies(False, 2, {"itc": 1.0})


def run_config(root, *sets, **train_overrides):
    return load_config(None, tiny_overrides(root, grad_accumulation=2, **train_overrides)
                       + ["model.dropout=0.1", *sets])


def test_a_run_with_it_resumes_bitwise(tiny_shapes, tmp_path):
    """Dropout on, 2 micro-batches per step, interrupted after step 2 (mid-epoch)."""
    full, part = tmp_path / "full", tmp_path / "part"
    train(run_config(tiny_shapes, max_steps=5, save_every=2), full, show_progress=False)

    class Preempted(Exception):
        pass

    def preempt(step, model):
        if step == 2:
            raise Preempted

    with pytest.raises(Preempted):
        train(run_config(tiny_shapes, max_steps=5, save_every=2), part, show_progress=False,
              on_checkpoint=preempt)
    train(run_config(tiny_shapes, max_steps=5, save_every=2), part, resume=True,
          show_progress=False)
    a = load_file(full / "model" / "model.safetensors")
    b = load_file(part / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert all(k in lines[-1] for k in ("loss_caption", "loss_itc", "loss_itm", "loss_vqa"))


def test_a_frozen_cached_image_tower_trains_with_it(tiny_shapes, tmp_path, monkeypatch):
    """The frozen tower's outputs come from the feature cache in both passes."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return grad_cache.accumulate_whole_batch(*args, **kwargs)

    monkeypatch.setattr(step, "accumulate_whole_batch", counted)
    config = run_config(tiny_shapes, "model.image_encoder.freeze=true", max_steps=2,
                        task_grad_norm_every=1)
    train(config, tmp_path / "run", show_progress=False)
    assert len(calls) == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text()
             .splitlines()]
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in lines)
    assert lines[-1]["grad_norm_itc"] > 0 and lines[-1]["grad_norm_caption"] > 0


@pytest.mark.slow  # a launch of 2 processes and a run of one
def test_two_processes_train_like_one_accumulating_all_their_micro_batches(tiny_shapes,
                                                                          tmp_path):
    """Through torchrun and the loop: 2 ranks x 2 micro-batches of 4 == 1 process x 4, with
    ITC over all 16 images either way (ITM off: its draws follow the row order, which differs
    between the two: rank-major there, loader order here)."""
    sets = tiny_overrides(tiny_shapes, batch_size=4, max_steps=3, save_every=3,
                          log_every=1) + ["train.tasks.itm=0"]
    save_config(load_config(None, sets + ["train.grad_accumulation=2"]), tmp_path / "two.yaml")
    train(load_config(None, sets + ["train.grad_accumulation=4"]), tmp_path / "one",
          show_progress=False)
    out = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port",
                          "29528", "-m", "tuwen", "train", str(tmp_path / "two.yaml"), "--out",
                          str(tmp_path / "two")], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    noise = before_batch_norm(load(tmp_path / "one" / "model").model)
    assert noise and a.keys() == b.keys()
    for name in a:
        if "running_" in name or "num_batches" in name or name in noise:
            continue  # BN buffers: DDP keeps rank 0's
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=5e-5, msg=name)
    logged = [[json.loads(x)["loss_itc"] for x in (tmp_path / run / "metrics.jsonl")
               .read_text().splitlines()] for run in ("one", "two")]
    torch.testing.assert_close(logged[1], logged[0], rtol=1e-5, atol=1e-5)


def before_batch_norm(model: torch.nn.Module) -> set[str]:
    """The biases of convolutions a BatchNorm follows: their gradient is zero but for
    rounding noise, which Adam's normalised step turns into updates of the learning rate's
    size in both runs alike."""
    names = set()
    for prefix, module in model.named_modules():
        children = list(module.named_children())
        for (name, child), (_, after) in zip(children, children[1:]):
            if isinstance(child, torch.nn.Conv2d) and isinstance(after, torch.nn.BatchNorm2d):
                names.add(f"{prefix}.{name}.bias".lstrip("."))
    return names
