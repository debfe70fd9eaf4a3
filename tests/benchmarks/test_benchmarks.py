"""Smoke tests of the benchmark code (benchmarks/): each piece runs at tiny sizes and returns
what the entry point reports. Nothing here times anything against a threshold."""

from __future__ import annotations

import json
import math

import pytest
import torch
from benchmarks.hardware import gemm_rate, step_flops
from benchmarks.peer import Dims, build_peer, peer_batch, time_peer
from benchmarks.tuwen_side import CONFIGS, dims_overrides, overrides, step_time, tuwen_step

from benchmarks import __main__ as entry
from tuwen.config import load_config

TINY = Dims(image_size=32, hidden=32, layers=1, heads=2, mlp=64, vocab=64, text_length=6,
            batch=2)


def test_step_time_between_two_log_lines():
    records = [{"step": 2, "elapsed_s": 3.0}, {"step": 4, "elapsed_s": 4.0},
               {"step": 6, "elapsed_s": 7.0}]
    assert step_time(records, 2, 6) == pytest.approx(1.0)
    assert step_time(records, 4, 6) == pytest.approx(1.5)


def test_table_prints_ratios_and_mfu():
    rows = [{"name": "train x fp32", "peer": 0.4, "tuwen": 0.2, "ratio": 2.0, "unit": "s/step",
             "tuwen_mfu": 0.5, "peer_mfu": 0.25}]
    text = entry.table({"training": {"rows": rows}})
    assert "| train x fp32 | 0.4 s/step | 0.2 s/step | 2.00x | 50% | 25% |" in text


def test_gemm_rate_and_flop_count():
    assert gemm_rate("fp32", size=64, repeats=1) > 0
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    # forward 2*3*8*4; backward the same again (the weight's gradient; x needs none)
    assert step_flops(lambda: layer(x).sum().backward()) == 2 * 2 * 3 * 8 * 4


def test_peer_trains_and_counts():
    result = time_peer(TINY, steps=2, warmup=1, precision="fp32")
    assert result["step_s"] > 0 and math.isfinite(result["loss"])
    torch.manual_seed(0)
    model = build_peer(TINY)
    assert step_flops(lambda: model(**peer_batch(TINY)).loss.backward()) > 0


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_bench_configs_take_the_peer_dimensions(path):
    config = load_config(CONFIGS[path], dims_overrides(path, TINY))
    model = config.model
    assert (model.hidden_size, config.train.batch_size, config.data.image_size) == (32, 2, 32)
    if path == "native":
        assert (model.image_encoder.layers, model.decoder.heads) == (1, 2)
    else:
        assert model.decoder.hf_config["n_layer"] == 1
        assert model.image_encoder.hf_config["intermediate_size"] == 64


def test_bench_configs_default_to_the_issue_dimensions():
    """Without overrides the configs are the issue's sizes, so that `tuwen train
    configs/bench_*.yaml` reproduces the tuwen side."""
    issue = Dims()
    for path in CONFIGS:
        plain = load_config(CONFIGS[path]).model_dump()
        assert load_config(CONFIGS[path], dims_overrides(path, issue)).model_dump() == plain


def test_tuwen_step_runs_the_real_loader_and_model(tmp_path):
    from benchmarks.tuwen_side import shapes_data
    data = shapes_data(tmp_path / "shapes", TINY.image_size, n_train=4)
    run, tokens = tuwen_step("native", TINY, data, "fp32", tmp_path)
    assert tokens <= load_config(CONFIGS["native"]).data.max_text_length
    assert step_flops(run) > 0
    sets = overrides("native", TINY, data, "bf16", 4, 2)
    assert "train.precision=bf16" in sets and f"data.root={data}" in sets


def test_entry_point_lists_entries(capsys):
    assert entry.main(["--list"]) == {}
    listed = capsys.readouterr().out
    for name in ("training", "generation", "precision", "feature_cache", "loader_throughput"):
        assert f"{name}:" in listed
    json.dumps(entry.parse(["--quick", "--only", "training"]).__dict__)


def test_determinism_cost_compares_both_modes(capsys):
    from benchmarks import determinism_cost

    determinism_cost.main(["--batch-size", "4", "--rounds", "1", "--steps", "1", "--threads", "1"])
    lines = [line for line in capsys.readouterr().out.splitlines()
             if not line.startswith("training tasks:")]  # the run's own log line
    assert [line.split(":")[0] for line in lines] == ["deterministic=True", "deterministic=False"]
    assert "repeated steps: 0 of" in lines[0]  # the deterministic mode repeats bit for bit
