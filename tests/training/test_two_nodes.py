"""Two nodes on loopback: ``torchrun --nnodes 2`` and ``accelerate launch --num_machines 2``
(one process per node, gloo) train the demo config to the same weights, bit for bit, as one
node with two processes; and a checkpoint resumes only on the number of processes that wrote
it (anything else is one clear error)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny import tiny_overrides
from tuwen.config import load_config, save_config
from tuwen.errors import TuwenError
from tuwen.training.loop import train
from tuwen.training.resume import check_same_processes

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
REFUSED = "was written by {saved} process{s} and this run has {now}: resume with {saved}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*launch) -> list[str]:
    return [str(BIN / "torchrun"), *launch]


def tuwen_train(config, run, *extra) -> list[str]:
    return ["-m", "tuwen", "train", str(config), "--out", str(run), *extra]


def finish(procs, timeout=600) -> list[str]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append(out)
    return outs


def start(cmd):
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.fixture(scope="module")
def demo_config(tiny_shapes, tmp_path_factory):
    """configs/shapes.yaml (all four tasks) at tiny sizes: 3 steps of 2 x 4 images."""
    sets = tiny_overrides(tiny_shapes, batch_size=4, max_steps=3, save_every=3, log_every=1)
    path = tmp_path_factory.mktemp("two-nodes") / "demo.yaml"
    save_config(load_config("configs/shapes.yaml", sets), path)
    return path


@pytest.fixture(scope="module")
def one_node(demo_config, tmp_path_factory):
    """The reference: one node, two processes (``torchrun --nproc_per_node 2``)."""
    run = tmp_path_factory.mktemp("one-node") / "run"
    proc = start(torchrun("--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                          "--master_port", str(free_port()), *tuwen_train(demo_config, run)))
    [out] = finish([proc])
    assert proc.returncode == 0, out[-3000:]
    return run


def node_command(launcher: str, rank: int, port: str) -> list[str]:
    """One node of two on loopback, one process on it; node 1 meets node 0 at 127.0.0.1."""
    if launcher == "torchrun":
        return torchrun("--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                        "--master_addr", "127.0.0.1", "--master_port", port)
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_machines", "2",
            "--machine_rank", str(rank), "--num_processes", "2",  # all nodes' processes
            "--main_process_ip", "127.0.0.1", "--main_process_port", port]


@pytest.mark.slow  # two launches of two processes
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_nodes_train_bitwise_like_one_node_with_two_processes(demo_config, one_node,
                                                                   tmp_path, launcher):
    port = str(free_port())
    nodes = [start(node_command(launcher, rank, port) +
                   tuwen_train(demo_config, tmp_path / "two-nodes")) for rank in (0, 1)]
    outs = finish(nodes)
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-3000:] + outs[1][-3000:]

    a = load_file(one_node / "model" / "model.safetensors")
    b = load_file(tmp_path / "two-nodes" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:  # every weight and buffer, bit for bit
        assert torch.equal(a[name], b[name]), name
    logs = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for run in (one_node, tmp_path / "two-nodes")]
    assert [r["step"] for r in logs[1]] == [1, 2, 3]
    assert [r["loss"] for r in logs[1]] == [r["loss"] for r in logs[0]]


@pytest.mark.slow  # a one-process start
def test_a_two_process_checkpoint_is_refused_on_one(demo_config, one_node, tmp_path):
    shutil.copytree(one_node, tmp_path / "run")
    one = subprocess.run([sys.executable, *tuwen_train(demo_config, tmp_path / "run",
                                                       "--resume", "--set",
                                                       "train.max_steps=5")],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert one.returncode == 2, one.stdout[-2000:] + one.stderr[-2000:]
    assert REFUSED.format(saved=2, s="es", now=1) in one.stderr
    assert "Traceback" not in one.stderr
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-3"]


@pytest.mark.slow  # a launch of two processes
def test_a_one_process_checkpoint_is_refused_on_two(demo_config, tmp_path):
    train(load_config(demo_config), tmp_path / "run", show_progress=False)
    two = start(torchrun("--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                         "--master_port", str(free_port()),
                         *tuwen_train(demo_config, tmp_path / "run", "--resume", "--set",
                                      "train.max_steps=5")))
    [out] = finish([two])
    assert two.returncode != 0
    assert REFUSED.format(saved=1, s="", now=2) in out
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the run was left as it was


def test_the_process_count_check_names_both_counts(tmp_path):
    check_same_processes(tmp_path / "step-4", 2, 2)
    with pytest.raises(TuwenError, match=r"step-4 was written by 2 processes and this run "
                                         r"has 4: resume with 2"):
        check_same_processes(tmp_path / "step-4", 2, 4)
