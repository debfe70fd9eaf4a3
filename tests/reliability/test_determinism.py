"""A seed and a thread count fix the result: runs at 2 CPU threads (the suite pins 1, which
cannot show a thread-order difference), in subprocesses."""

import signal
import subprocess
import sys

import pytest
import torch
from runs import differing, finish, newest_step, start, wait_for, write_config

from tuwen.training.determinism import configure_determinism

INDEX_BACKWARD = """
import torch
from tuwen.training.determinism import configure_determinism
torch.set_num_threads(2)
configure_determinism({enabled})
torch.manual_seed(0)
x = torch.randn(32, 1152, requires_grad=True)
index = torch.randint(0, 32, (105,))  # repeated rows, as ITM's hard negatives repeat images
grad = torch.randn(105, 1152)
results = []
for _ in range(40):
    x.grad = None
    x[index].backward(grad)
    results.append(x.grad.clone())
print(sum(not torch.equal(results[0], r) for r in results[1:]))
"""


def test_index_backward_is_bitwise_repeatable_on_two_threads():
    # The op that made 2-thread training irreproducible: x[index] accumulates the gradient of
    # repeated rows from both threads in whatever order they run.
    out = subprocess.run([sys.executable, "-c", INDEX_BACKWARD.format(enabled=True)],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "0", out.stdout + out.stderr


def test_configure_determinism_switches_torch_both_ways():
    try:
        configure_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        configure_determinism(False)
        assert not torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.deterministic
    finally:
        configure_determinism(False)


@pytest.fixture(scope="module")
def reference(tiny_shapes, tmp_path_factory):
    """Two uninterrupted runs at 2 threads, started together (they compete for the cores,
    which shuffles thread timing the most)."""
    tmp = tmp_path_factory.mktemp("determinism")
    config = write_config(tiny_shapes, tmp / "tiny.yaml")
    procs = [start(config, tmp / name) for name in ("a", "b")]
    for proc in procs:
        finish(proc)
    return tmp


def test_two_runs_on_two_threads_end_bitwise_equal(reference):
    assert differing(reference / "a", reference / "b") == []


def test_sigkill_after_a_checkpoint_then_resume_on_two_threads_is_exact(reference):
    config, run = reference / "tiny.yaml", reference / "killed"
    proc = start(config, run)
    wait_for(proc, lambda: newest_step(run) >= 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert newest_step(run) < 8  # killed mid-run
    finish(start(config, run, "--resume"))
    assert differing(reference / "a", run) == []
