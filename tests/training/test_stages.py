"""train.stages: each stage trains only its parts, with its own task weights and learning
rate; the schedule restarts per stage; a run killed mid-stage resumes bitwise equal."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tiny import tiny_overrides
from tuwen.apps.dry_run import dry_run
from tuwen.config import load_config
from tuwen.errors import ConfigError
from tuwen.tasks.table import load_run_config
from tuwen.training.loop import train
from tuwen.training.optim import lr_factor

ALIGN = "{name: align, max_steps: 3, trainable: [fusion], lr: 0.001, warmup_steps: 2, " \
        "tasks: {itm: 0}}"
TUNE = "{name: tune, max_steps: 3, lr: 0.002, warmup_steps: 2}"


def staged(root, *extra):
    return load_config(None, tiny_overrides(root, save_every=2, log_every=1,
                                            task_grad_norm_every="null")
                       + [f"train.stages=[{ALIGN}, {TUNE}]", *extra])


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_a_stage_trains_its_parts_only_then_the_next_trains_everything(tiny_shapes, tmp_path,
                                                                       capsys):
    seen = {}
    result = train(staged(tiny_shapes, "train.save_every=1"), tmp_path / "run",
                   show_progress=False,
                   on_checkpoint=lambda step, model: seen.update({step: snapshot(model)}))
    assert result.steps == 6 and result.stopped_by == "max_steps"
    out = capsys.readouterr().out
    assert "stage align (1/2) from step 0: trains fusion" in out
    assert "stage tune (2/2) from step 3: trains decoder, fusion, heads, image_encoder, " \
           "text_encoder" in out
    first, aligned, tuned = seen[1], seen[3], seen[6]
    for name in first:  # steps 2-3: only the fusion moves
        if not name.startswith("fusion."):
            assert torch.equal(first[name], aligned[name]), name
    assert any(not torch.equal(first[n], aligned[n]) for n in first if n.startswith("fusion."))
    for part in ("image_encoder.", "text_encoder.", "decoder.", "itc_head."):
        assert any(not torch.equal(aligned[n], tuned[n]) for n in first if n.startswith(part))
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "loss_itm" not in logged[0] and "loss_itm" in logged[3]  # stage 1: itm weight 0


def test_the_learning_rate_schedule_restarts_in_each_stage(tiny_shapes, tmp_path):
    config = staged(tiny_shapes)
    train(config, tmp_path / "run", show_progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    lrs = [json.loads(x)["lr"] for x in lines]
    stage = config.train.model_copy(update={"warmup_steps": 2, "max_steps": 3})
    expected = [lr * lr_factor(i, i / 3, stage) for lr in (0.001, 0.002) for i in range(3)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert lrs[3] > lrs[2]  # warming up again


@pytest.mark.parametrize("stop_at", [2, 4])  # in the first stage; in the second
def test_a_run_killed_mid_stage_resumes_bitwise_equal(tiny_shapes, tmp_path, stop_at):
    class Preempted(Exception):
        pass

    def preempt(step, model):
        if step == stop_at:
            raise Preempted

    train(staged(tiny_shapes), tmp_path / "full", show_progress=False)
    with pytest.raises(Preempted):
        train(staged(tiny_shapes), tmp_path / "run", show_progress=False, on_checkpoint=preempt)
    state = json.loads((tmp_path / "run" / "checkpoints" / f"step-{stop_at}" /
                        "state.json").read_text())["train"]
    assert state["stage"] == (0 if stop_at < 3 else 1)
    result = train(staged(tiny_shapes), tmp_path / "run", resume=True, show_progress=False)
    assert result.steps == 6
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage_config_errors_name_the_key(tiny_shapes):
    with pytest.raises(ConfigError, match="max_steps or max_minutes"):
        load_config(None, ["train.stages=[{lr: 0.1}]"])
    with pytest.raises(ConfigError, match="trainable"):
        load_config(None, ["train.stages=[{max_steps: 2, trainable: [wings]}]"])
    with pytest.raises(ConfigError, match=r"train\.stages\[0\]\.tasks\.colour: unknown task"):
        load_run_config(None, ["train.stages=[{max_steps: 2, tasks: {colour: 1}}]"])
    lora_only = load_config(None, tiny_overrides(tiny_shapes) +
                            ["train.stages=[{max_steps: 2, trainable: [lora]}]"])
    with pytest.raises(ConfigError, match="stage 1 trains nothing"):
        train(lora_only, tiny_shapes.parent / "lora_only", show_progress=False)


def test_the_dry_run_prints_the_plan(tiny_shapes):
    lines = dry_run(staged(tiny_shapes)).lines()
    assert "  plan: 2 stages (the learning-rate schedule restarts in each)" in lines
    assert any(line.startswith("    1. align: 3 steps; trains fusion; lr 0.001 (warmup 2); "
                               "tasks caption=1, itc=1, vqa=1") for line in lines)
    assert any(line.startswith("    2. tune: 3 steps; trains every trained part; lr 0.002")
               for line in lines)
