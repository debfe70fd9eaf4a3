"""``tuwen sweep`` in a process of its own whose trials sleep instead of training: the
shared-study test runs several of these against one PostgreSQL study and kills one.

Each trial appends ``PID LR`` to ``$SWEEP_STARTED`` when it starts, sleeps
``$SWEEP_TRIAL_S`` seconds and scores ``1e4 * train.lr``.
"""

import os
import sys
import time

from tuwen.apps import sweep as sweep_module
from tuwen.apps.cli import main
from tuwen.apps.trial import Outcome
from tuwen.config import save_config

METRIC = "retrieval.t2i_r1"


def sleeping_trial(config, run_dir, split, report=None):
    run_dir.mkdir(parents=True)
    with open(os.environ["SWEEP_STARTED"], "a") as log:
        log.write(f"{os.getpid()} {config.train.lr}\n")
    time.sleep(float(os.environ["SWEEP_TRIAL_S"]))
    save_config(config, run_dir / "config.yaml")
    return Outcome(run_dir, {METRIC: 1e4 * config.train.lr}, 0.1, 2, 10.0, 1000)


if __name__ == "__main__":
    sweep_module.train_and_evaluate = sleeping_trial
    sys.exit(main(sys.argv[1:]))
