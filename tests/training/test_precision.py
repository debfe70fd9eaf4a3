"""Precision and memory: gradient accumulation, bf16 autocast on CPU, gradient checkpointing."""

import pytest
import torch

from tiny import tiny_overrides, tiny_spec
from tuwen.config import load_config
from tuwen.errors import ConfigError
from tuwen.models.image_text_model import build_model
from tuwen.models.layers import Block
from tuwen.tasks.table import joint_step, with_train_tasks
from tuwen.training.assets import prepare_assets
from tuwen.training.distributed import make_accelerator
from tuwen.training.loaders import build_loader
from tuwen.training.optim import task_weights
from tuwen.training.parts import prepare
from tuwen.training.precision import autocast, enable_gradient_checkpointing
from tuwen.training.step import accumulate_gradients

VQA_ONLY = ["train.tasks.caption=0", "train.tasks.itc=0", "train.tasks.itm=0"]


def setup(root, tmp_path, batch_size, *extra):
    config = load_config(None, tiny_overrides(root, batch_size=batch_size) + list(extra))
    assets = prepare_assets(config, tmp_path / f"model-{batch_size}")
    config = with_train_tasks(config, assets.train, lambda _: None)  # as a run resolves it
    torch.manual_seed(0)
    parts = prepare(config, assets, make_accelerator(config.train), tmp_path)
    return config, parts, iter(build_loader(config, assets))


def grads(parts):
    return {n: p.grad.clone() for n, p in parts.model.named_parameters() if p.grad is not None}


def test_accumulating_2x32_gives_the_gradient_of_1x64(tiny_shapes, tmp_path):
    """VQA's loss is a mean over equally many questions per image, so the mean of the two
    halves' losses is the whole batch's; eval mode keeps BatchNorm off batch statistics."""
    config, one, stream = setup(tiny_shapes, tmp_path, 64, *VQA_ONLY)
    one.objective.eval()
    weights = task_weights(0, config.train)
    accumulate_gradients(one, [next(stream)], weights, "fp32")
    _, two, stream = setup(tiny_shapes, tmp_path, 32, *VQA_ONLY)
    two.objective.eval()
    losses, samples, _ = accumulate_gradients(two, [next(stream), next(stream)], weights, "fp32")
    assert samples == 64
    a, b = grads(one), grads(two)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_runs_on_cpu_and_trains(tiny_shapes, tmp_path):
    config, parts, stream = setup(tiny_shapes, tmp_path, 16, "train.precision=bf16")
    batch = next(stream)
    with autocast("bf16", torch.device("cpu")):  # matmuls in bf16 (norms stay fp32)
        image = parts.model.encode_image(batch.pixel_values)
        logits = parts.model.decode(batch.part("caption").input_ids[:2], image.tokens[:2]).logits
    assert logits.dtype == torch.bfloat16
    weights = task_weights(0, config.train)
    losses = []
    for _ in range(12):  # the same batch: the loss must fall
        loss, _, _ = accumulate_gradients(parts, [batch], weights, "bf16")
        parts.optimizer.step()
        parts.optimizer.zero_grad()
        losses.append(loss["loss"])
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses


def test_fp16_on_cpu_is_a_clear_error():
    config = load_config(None, ["train.precision=fp16"])
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        make_accelerator(config.train)


def counted(forward, calls):
    def run(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)
    return run


def test_gradient_checkpointing_recomputes_blocks_with_the_same_gradients(tiny_batch):
    def run(checkpointing):
        torch.manual_seed(0)
        model = build_model(tiny_spec()).train()
        calls = []
        for module in model.modules():  # count runs of every Block's own forward
            if isinstance(module, Block):
                module.forward = counted(module.forward, calls)
        if checkpointing:
            assert enable_gradient_checkpointing(model) == 5  # every Block of the small towers
        torch.manual_seed(1)
        total, _ = joint_step(model, tiny_batch, {"caption": 1.0, "itc": 1.0, "vqa": 1.0})
        forward_calls = len(calls)
        total.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, \
            forward_calls, len(calls)

    plain, f_plain, all_plain = run(False)
    ckpt, f_ckpt, all_ckpt = run(True)
    assert all_plain == f_plain and all_ckpt > f_ckpt == f_plain  # recomputed in backward
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], msg=name)


@pytest.mark.slow  # inductor compiles C++ kernels
def test_compiled_towers_train_and_keep_their_parameter_names(tiny_shapes, tmp_path):
    from safetensors.torch import load_file

    from tuwen.training.loop import train

    config = load_config(None, tiny_overrides(tiny_shapes, max_steps=2, compile="true"))
    result = train(config, tmp_path / "run", show_progress=False)
    assert result.steps == 2
    names = load_file(tmp_path / "run" / "model" / "model.safetensors").keys()
    assert not any("_orig_mod" in n for n in names)


def test_bf16_on_a_cpu_without_bf16_units_warns(tmp_path):
    from tuwen.training.precision import cpu_flags, precision_warning
    cpu = torch.device("cpu")
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert cpu_flags(str(info)) == {"fpu", "sse", "avx2", "fma"}
    assert "emulated" in precision_warning("bf16", cpu, {"avx2"})
    assert precision_warning("bf16", cpu, {"avx2", "amx_bf16"}) is None
    assert precision_warning("bf16", cpu, {"avx512_bf16"}) is None
    assert precision_warning("fp32", cpu, {"avx2"}) is None
    assert precision_warning("bf16", torch.device("cuda"), {"avx2"}) is None
    assert cpu_flags(str(tmp_path / "missing")) == set()


def test_auto_picks_bf16_where_the_hardware_computes_it_and_fp32_elsewhere():
    from tuwen.training.precision import auto_precision
    assert auto_precision("cpu", {"avx2", "amx_bf16"})[0] == "bf16"
    assert auto_precision("cpu", {"avx512f", "avx512_bf16"}) == (
        "bf16", "the CPU computes bf16 natively (avx512_bf16)")
    assert auto_precision("cpu", {"avx2", "fma"})[0] == "fp32"
    assert auto_precision("cuda", cuda_bf16=True)[0] == "bf16"
    assert auto_precision("cuda", cuda_bf16=False)[0] == "fp32"
    assert auto_precision("mps")[0] == "fp32"


def test_a_run_with_auto_precision_prints_and_records_its_choice(tiny_shapes, tmp_path,
                                                                  capsys):
    from tuwen.training.loop import train
    from tuwen.training.precision import auto_precision
    config = load_config(None, tiny_overrides(tiny_shapes, max_steps=1, precision="auto",
                                              task_grad_norm_every="null"))
    train(config, tmp_path / "run", show_progress=False)
    choice, reason = auto_precision("cpu")
    assert f"train.precision: auto -> {choice} on cpu ({reason})" in capsys.readouterr().out
    saved = load_config(str(tmp_path / "run" / "config.yaml"))
    assert saved.train.precision == choice


def test_attention_takes_the_eager_path_under_cpu_bf16_autocast(monkeypatch):
    from tuwen.models import layers
    torch.manual_seed(0)
    attention, x = layers.Attention(32, 2), torch.randn(2, 5, 32)
    fused, _ = attention(x)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    with autocast("bf16", torch.device("cpu")):
        half, weights = attention(x)
    assert calls == [] and weights is not None  # the eager path
    torch.testing.assert_close(half.float(), fused, atol=0.05, rtol=0.05)
    attention(x)
    assert calls == [1]  # fp32: the fused kernel
