import json

import pytest
import torch
from safetensors.torch import load_file

from tiny import tiny_overrides
from tuwen.config import load_config
from tuwen.errors import ConfigError, TuwenError
from tuwen.training.checkpoint import CheckpointWarning, latest_checkpoint, list_checkpoints
from tuwen.training.loop import train


def config(root, **train_overrides):
    return load_config(None, tiny_overrides(root, **train_overrides))


def test_run_directory_contract(tiny_shapes, tmp_path):
    result = train(config(tiny_shapes), tmp_path / "run", show_progress=False)
    run = tmp_path / "run"
    assert result.steps == 6 and result.stopped_by == "max_steps"
    assert (run / "config.yaml").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4, 6]
    for key in ("step", "epoch", "lr", "loss", "loss_caption", "loss_itc", "loss_itm",
                "loss_vqa", "samples_per_sec"):
        assert all(key in x for x in lines), key
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in lines)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-3", "step-6"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "answer_vocab.json"):
        assert (run / "model" / name).is_file(), name


def test_resume_equals_uninterrupted(tiny_shapes, tmp_path):
    """Interrupted after step 4 (mid-epoch: 8 batches per epoch), resumed to 10: same weights."""
    full = tmp_path / "full"
    train(config(tiny_shapes, max_steps=10, save_every=4), full, show_progress=False)

    class Preempted(Exception):
        pass

    def preempt(step, model):
        if step == 4:
            raise Preempted

    part = tmp_path / "part"
    with pytest.raises(Preempted):
        train(config(tiny_shapes, max_steps=10, save_every=4), part, show_progress=False,
              on_checkpoint=preempt)
    result = train(config(tiny_shapes, max_steps=10, save_every=4), part, resume=True,
                   show_progress=False)
    assert result.steps == 10
    a = load_file(full / "model" / "model.safetensors")
    b = load_file(part / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice


def test_resume_refuses_a_different_model(tiny_shapes, tmp_path):
    train(config(tiny_shapes, max_steps=2), tmp_path / "r", show_progress=False)
    changed = load_config(None, tiny_overrides(tiny_shapes) + ["model.hidden_size=64"])
    with pytest.raises(ConfigError, match=r"model\.hidden_size: 32 -> 64"):
        train(changed, tmp_path / "r", resume=True, show_progress=False)


def test_incomplete_checkpoint_is_not_resumed_from(tiny_shapes, tmp_path):
    run = tmp_path / "r"
    train(config(tiny_shapes, max_steps=6, save_every=3), run, show_progress=False)
    (run / "checkpoints" / "step-6" / "optimizer.pt").unlink()
    with pytest.warns(CheckpointWarning, match="step-6: incomplete"):
        assert latest_checkpoint(run / "checkpoints").name == "step-3"


def test_unreadable_images_are_skipped_counted_and_bounded(tiny_shapes, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_shapes, data)
    images = sorted((data / "images").glob("*.png"))[:3]
    for path in images:  # zero-byte files: present, so they fail at load time
        path.write_bytes(b"")
    ok = train(config(data, max_steps=8), tmp_path / "ok", show_progress=False)
    assert ok.skipped > 0
    strict = load_config(None, tiny_overrides(data, max_steps=40) + ["data.max_bad_fraction=0"])
    with pytest.raises(TuwenError, match="max_bad_fraction"):
        train(strict, tmp_path / "strict", show_progress=False)
