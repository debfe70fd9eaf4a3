"""One study shared by several ``tuwen sweep`` processes through a real PostgreSQL server
(Debian's ``postgresql``, installed by ``make postgres``), which the test starts on a free
loopback port and stops: no grid point runs twice, and a worker killed with SIGKILL in the
middle of a trial leaves that trial to be run again by the other."""

import collections
import contextlib
import csv
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tiny import tiny_overrides
from tuwen.apps import sweep as sweep_module
from tuwen.apps.sweep import Storage, SweepSpec, open_study, sweep
from tuwen.apps.sweep_report import write_outputs
from tuwen.errors import TuwenError

HERE = Path(__file__).resolve().parent
METRIC = "retrieval.t2i_r1"
LRS = [1e-4, 2e-4, 3e-4]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server():
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields its URL."""
    pg_ctl = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not pg_ctl:
        pytest.skip("PostgreSQL is not installed (`make postgres` installs Debian's package)")
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install -e '.[dev]')")
    bin_dir = Path(pg_ctl[-1]).parent
    # the server refuses to run as root: as root, run it as the package's postgres user
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="tuwen-pg-"))  # /tmp: reachable by that user
    if as_user:
        shutil.chown(home, "postgres")
    data, port = home / "data", free_port()

    def pg(*args):
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-N")
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w", "-o",
           f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


def start_worker(url, out, sets, started, trial_s):
    args = [sys.executable, str(HERE / "sweep_fake_worker.py"), "sweep", "configs/shapes.yaml",
            "--out", str(out), "--grid", "train.lr=" + ",".join(map(str, LRS)),
            "--metric", METRIC, "--no-prune", "--storage", url, "--heartbeat", "1"]
    env = {**os.environ, "SWEEP_STARTED": str(started), "SWEEP_TRIAL_S": str(trial_s)}
    return subprocess.Popen(args + [a for s in sets for a in ("--set", s)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_two_workers_share_a_postgres_study_and_one_killed_mid_trial_is_run_again(
        tiny_shapes, tmp_path):
    started = tmp_path / "started.txt"
    started.touch()
    sets = tiny_overrides(tiny_shapes)
    with postgres_server() as url:
        # worker a's trials would take a minute: it is killed in its first one, once worker
        # b has joined the study and started a trial of its own
        a = start_worker(url, tmp_path / "a", sets, started, trial_s=60)
        b = None
        try:
            wait_for(lambda: f"{a.pid} " in started.read_text() or a.poll() is not None, 120,
                     "worker a's first trial")
            assert a.poll() is None, a.stdout.read()[-3000:]
            b = start_worker(url, tmp_path / "b", sets, started, trial_s=1.5)
            wait_for(lambda: f"{b.pid} " in started.read_text() or b.poll() is not None, 120,
                     "worker b's first trial")
            os.kill(a.pid, signal.SIGKILL)  # in the middle of its trial
            out, _ = b.communicate(timeout=120)
        finally:
            for p in (a, b):
                if p is not None:
                    p.kill()
                    p.wait()
        assert b.returncode == 0, out[-3000:]

        runs = [line.split() for line in started.read_text().splitlines()]
        killed_lr = next(float(lr) for pid, lr in runs if pid == str(a.pid))
        rows = list(csv.DictReader((tmp_path / "b" / "results.csv").open()))
        done = collections.Counter(float(r["train.lr"]) for r in rows if r["state"] == "complete")
        assert done == {lr: 1 for lr in LRS}  # every grid point, once
        # what a worker started: each point once, the killed trial's point once more
        assert collections.Counter(float(lr) for _, lr in runs) == \
            {lr: 1 + (lr == killed_lr) for lr in LRS}
        cut = [r for r in rows if r["state"] == "interrupted"]
        assert [(float(r["train.lr"]), r["worker"].split(":")[-1]) for r in cut] == \
            [(killed_lr, str(a.pid))]  # results.csv holds the other worker's trial too
        best = yaml.safe_load((tmp_path / "b" / "best.yaml").read_text())
        assert best["train"]["lr"] == max(LRS)


class FakeRuns:
    def __init__(self):
        self.trained = []

    def __call__(self, config, run_dir, split, report=None):
        from tuwen.apps.trial import Outcome

        self.trained.append(config.train.lr)
        run_dir.mkdir(parents=True)
        return Outcome(run_dir, {METRIC: 1e4 * config.train.lr}, 0.1, 2, 10.0, 1000)


def test_a_queued_copy_of_a_taken_point_is_void_and_left_out(tiny_shapes, tmp_path,
                                                              monkeypatch):
    """Two workers that queue the same grid point at once leave two copies; the later copy
    ends without training and is not a result."""
    runs = FakeRuns()
    monkeypatch.setattr(sweep_module, "train_and_evaluate", runs)
    spec = SweepSpec(config="configs/shapes.yaml", overrides=tiny_overrides(tiny_shapes),
                     metric=METRIC, grid=["train.lr=1e-4,2e-4"], prune=False)
    out = tmp_path / "sweep"
    out.mkdir()
    for _ in range(2):  # as two workers queueing at the same moment would
        open_study(out, spec).enqueue_trial({"train.lr": 1e-4}, skip_if_exists=False)
    study = sweep(spec, out)
    assert sorted(runs.trained) == [1e-4, 2e-4]
    assert [t.user_attrs.get("void") for t in study.trials] == [None, "a copy of trial 0", None]
    write_outputs(study, out, METRIC, "maximize")
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted((r["trial"], r["state"]) for r in rows) == [("0", "complete"),
                                                               ("2", "complete")]


def test_a_bad_storage_url_is_one_line(tiny_shapes, tmp_path):
    spec = SweepSpec(config="configs/shapes.yaml", overrides=tiny_overrides(tiny_shapes),
                     metric=METRIC, grid=["train.lr=1e-4"])
    with pytest.raises(TuwenError, match=r"--storage nosuch://u:\*\*\*@h/db: cannot open"):
        sweep(spec, tmp_path / "sweep", storage=Storage("nosuch://u:secret@h/db"))
