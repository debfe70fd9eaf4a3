"""The FSDP whole-state helpers on a model sharded by FSDP2 over two CPU processes (gloo),
against the same training in one unsharded process. Accelerate's FSDP plugin itself shards
on GPUs only; this exercises what the loop does with the sharded states."""

import pytest
import torch
from fsdp_worker import STEPS, build, fixed_batch, outputs, train
from test_distributed import BIN, HERE, run

from tuwen.training.checkpoint import load_checkpoint, load_weights

TOL = {"rtol": 1e-5, "atol": 1e-6}  # the ranks' arithmetic matches one process's


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29520",
         str(HERE / "fsdp_worker.py"), str(out)])
    checkpoint = out / f"step-{STEPS}"  # what rank 0 saved of full_states
    got = {name: torch.load(out / f"{name}.pt", weights_only=True)
           for name in ("round-trip", "whole-0", "whole-1")}
    return {**got, "gathered": {"weights": load_weights(checkpoint),
                                "optimizer": load_checkpoint(checkpoint, None)[1]}}


@pytest.fixture(scope="module")
def reference():
    objective, optimizer = build(shard=False)
    train(objective, optimizer, fixed_batch())
    return objective, optimizer


@pytest.mark.slow  # one launch of 2 processes
def test_gathered_weights_are_the_unsharded_training(sharded, reference):
    objective, _ = reference
    expected = objective.model.state_dict()  # without the objective's "model." prefix
    weights = sharded["gathered"]["weights"]
    assert sorted(weights) == sorted(expected)
    for name, value in expected.items():  # whole tensors (not shards), BatchNorm's buffers too
        torch.testing.assert_close(weights[name], value, **TOL, msg=name)


@pytest.mark.slow
def test_gathered_optimizer_state_is_the_unsharded_one_by_parameter_name(sharded, reference):
    objective, optimizer = reference
    names = {param: name for name, param in objective.named_parameters()}
    state = sharded["gathered"]["optimizer"]
    assert set(state["state"]) == set(names.values())  # "model.<param>": every parameter
    for param, expected in optimizer.state.items():
        got = state["state"][names[param]]
        assert set(got) == {"step", "exp_avg", "exp_avg_sq"}
        assert got["step"].item() == STEPS
        for key in ("exp_avg", "exp_avg_sq"):
            assert got[key].shape == param.shape
            torch.testing.assert_close(got[key], expected[key], **TOL,
                                       msg=f"{names[param]} {key}")
    groups = state["param_groups"]
    assert [g["params"] for g in groups] == \
        [[names[p] for p in g["params"]] for g in optimizer.param_groups]  # decay, no decay
    assert [(g["lr"], g["weight_decay"]) for g in groups] == \
        [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups]


@pytest.mark.slow
def test_loading_the_whole_states_and_gathering_again_is_bitwise_identical(sharded):
    gathered, again = sharded["gathered"], sharded["round-trip"]
    fresh, _ = build(shard=False, seed=1)  # what the loading objective started from
    assert not torch.equal(fresh.model.text_encoder.pos, gathered["weights"]["text_encoder.pos"])
    assert sorted(again["weights"]) == sorted(gathered["weights"])
    for name, value in gathered["weights"].items():
        assert torch.equal(again["weights"][name], value), name
    # torch's set_optimizer_state_dict hands AdamW's betas back as a list (harmless)
    assert [{**g, "betas": tuple(g["betas"])} for g in again["optimizer"]["param_groups"]] == \
        gathered["optimizer"]["param_groups"]
    assert set(again["optimizer"]["state"]) == set(gathered["optimizer"]["state"])
    for name, state in gathered["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(again["optimizer"]["state"][name][key], value), (name, key)


@pytest.mark.slow
def test_every_rank_gets_the_whole_model(sharded, reference):
    objective, _ = reference
    expected = outputs(objective.model, fixed_batch())
    for rank in (0, 1):
        whole = sharded[f"whole-{rank}"]
        assert whole["type"] == "ImageTextModel"
        for name, value in sharded["gathered"]["weights"].items():
            assert torch.equal(whole["weights"][name], value), (rank, name)
        assert sorted(whole["outputs"]) == sorted(expected)  # every task's loss, the forward's
        for name, value in expected.items():
            torch.testing.assert_close(whole["outputs"][name], value, **TOL, msg=name)
