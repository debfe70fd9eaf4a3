"""``tuwen index`` updates killed at any moment: afterwards the index folder holds the old index
or the new one (never new entries with old vectors), it loads, ``tuwen search`` answers, and
a re-run completes the update and leaves no debris.

The fast test stops an in-process update at each step of the commit (a write half done and
never renamed, as a SIGKILL leaves it); the slow one is the chaos test: ``tuwen index`` in a
subprocess SIGKILLed 5 times (while embedding, while writing the vectors, while writing the
FAISS file, at a random moment), then run to the end."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tiny import tiny_overrides
from tuwen.apps import index as index_module
from tuwen.apps.cli import main
from tuwen.apps.index import META_FILE, IndexOptions, build_index, read_entries, read_vectors
from tuwen.apps.search import ImageIndex

OLD, ADDED, REMOVED = 16, 16, 3
RUNNER = Path(__file__).with_name("index_runner.py")


@pytest.fixture(scope="module")
def model(tiny_shapes, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("index-kill") / "run"
    sets = tiny_overrides(tiny_shapes, max_steps=4, save_every=4)
    assert main(["train", "configs/shapes.yaml", "--out", str(run),
                 *[arg for s in sets for arg in ("--set", s)]]) == 0
    return run / "model"


@pytest.fixture(scope="module")
def pipeline(model):
    from tuwen.apps.pipeline import Pipeline

    return Pipeline.from_pretrained(model, device="cpu")


def snapshot(directory: Path) -> tuple[list[str], np.ndarray]:
    return [e.path for e in read_entries(directory)], read_vectors(directory)


class Update:
    """An index of ``OLD`` images, and the folder changed under it (images added and
    removed); ``old`` and ``new`` are the index before and after the update."""

    def __init__(self, pipeline, model: Path, tiny_shapes: Path, root: Path) -> None:
        images = sorted((tiny_shapes / "images").glob("*.png"))
        self.folder, self.out, self.model = root / "images", root / "idx", model
        self.folder.mkdir()
        for path in images[:OLD]:
            shutil.copy(path, self.folder / path.name)
        self.build(pipeline, self.out)
        self.old = snapshot(self.out)
        self.saved = root / "old-idx"
        shutil.copytree(self.out, self.saved)
        for path in images[OLD: OLD + ADDED]:
            shutil.copy(path, self.folder / path.name)
        for path in sorted(self.folder.glob("*.png"))[:REMOVED]:
            path.unlink()
        self.build(pipeline, root / "reference")
        self.new = snapshot(root / "reference")

    def build(self, pipeline, out: Path):
        return build_index(pipeline, self.model, self.folder, out, IndexOptions(),
                           batch_size=4, show_progress=False)

    def state(self) -> str:
        """"old" or "new"; fails on anything else."""
        paths, vectors = snapshot(self.out)
        for name, (want_paths, want_vectors) in (("old", self.old), ("new", self.new)):
            if paths == want_paths:
                np.testing.assert_allclose(vectors, want_vectors, atol=1e-5)
                return name
        raise AssertionError(f"the index is neither the old nor the new one: {paths}")

    def restore_old(self) -> None:
        shutil.rmtree(self.out)
        shutil.copytree(self.saved, self.out)

    def clean(self) -> bool:
        """Only index.json and the three files it names."""
        meta = json.loads((self.out / META_FILE).read_text())
        return sorted(p.name for p in self.out.iterdir()) == sorted(
            [META_FILE, *meta["files"].values()])


def search_answers(out: Path, capsys) -> list[dict]:
    """``tuwen search`` (the CLI's code) for a text; its hits."""
    capsys.readouterr()
    assert main(["search", str(out), "a red circle", "-k", "5", "--json", "--device", "cpu"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 5
    return hits


def loads_and_answers(update: Update, capsys) -> str:
    state = update.state()
    paths = (update.old if state == "old" else update.new)[0]
    assert len(ImageIndex(update.out)) == len(paths)
    hits = search_answers(update.out, capsys)
    assert all(Path(h["path"]).relative_to(update.folder).as_posix() in paths for h in hits)
    return state


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler on the way cleans up."""


def killed(*_) -> None:
    raise Killed


def half_written(step: str):
    """``index._atomic_write`` that dies while writing ``step``'s file (index.json for
    "meta"): half the bytes under the temporary name, never renamed."""
    from tuwen import fsio

    real = index_module._atomic_write

    def write(path: Path, writer) -> None:
        kind = "meta" if path.name == META_FILE else path.name.split("-")[0].split(".")[0]
        if kind != {"vectors": "vectors", "faiss": "index"}.get(step, step):
            return real(path, writer)
        tmp = fsio.temporary_name(path)
        writer(tmp)
        data = tmp.read_bytes()
        tmp.write_bytes(data[: len(data) // 2])
        raise Killed
    return write


@pytest.mark.parametrize("step, after", [("entries", "old"), ("vectors", "old"),
                                         ("faiss", "old"), ("meta", "old"), ("cleanup", "new")])
def test_an_update_stopped_at_each_step_leaves_the_old_or_the_new_index(
        pipeline, model, tiny_shapes, tmp_path, monkeypatch, capsys, step, after):
    update = Update(pipeline, model, tiny_shapes, tmp_path)
    with monkeypatch.context() as patch:
        if step == "cleanup":  # committed; the old generation not yet removed
            patch.setattr(index_module, "remove_stale", killed)
        else:
            patch.setattr(index_module, "_atomic_write", half_written(step))
        with pytest.raises(Killed):
            update.build(pipeline, update.out)
    assert loads_and_answers(update, capsys) == after
    assert not update.clean()  # debris: a half-written file, or the old generation
    report = update.build(pipeline, update.out)
    assert update.state() == "new" and update.clean()
    assert report.added == (0 if after == "new" else ADDED)


def test_an_index_written_before_generations_still_loads_and_updates(pipeline, model,
                                                                     tiny_shapes, tmp_path,
                                                                     capsys):
    update = Update(pipeline, model, tiny_shapes, tmp_path)
    update.restore_old()
    meta = json.loads((update.out / META_FILE).read_text())
    for kind, legacy in index_module.LEGACY_FILES.items():  # the fixed names of before
        (update.out / meta["files"][kind]).rename(update.out / legacy)
    del meta["files"], meta["generation"]
    (update.out / META_FILE).write_text(json.dumps(meta))
    assert loads_and_answers(update, capsys) == "old"
    update.build(pipeline, update.out)
    assert update.state() == "new" and update.clean()


def start_index(update: Update, phases: Path, pause: float) -> subprocess.Popen:
    env = {**os.environ, "TUWEN_INDEX_PHASES": str(phases), "TUWEN_INDEX_PAUSE": str(pause),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(Path(index_module.__file__).parents[2]),
                                          os.environ.get("PYTHONPATH", "")])}
    log = (phases.parent / "index.log").open("a")
    return subprocess.Popen([sys.executable, str(RUNNER), str(update.model), str(update.folder),
                             "--out", str(update.out), "--device", "cpu", "--batch-size", "4"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def kill_in(proc: subprocess.Popen, phases: Path, phase: str | None, delay: float) -> str:
    """SIGKILL ``delay`` s into ``phase`` (None: ``delay`` s after the start); the phase the
    process was in (or "done" if it ended first)."""
    deadline = time.monotonic() + 300
    while phase is not None and phase not in (phases.read_text().split() if phases.exists()
                                              else []):
        assert proc.poll() is None, "tuwen index ended before the phase " + phase
        assert time.monotonic() < deadline, "tuwen index did not reach " + phase
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is not None:
        return "done"
    reached = phases.read_text().split()[-1] if phases.exists() else "loading"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return reached


@pytest.mark.slow  # six tuwen index processes
def test_five_sigkills_then_a_rerun_completes_the_update(pipeline, model, tiny_shapes,
                                                         tmp_path, capsys):
    update = Update(pipeline, model, tiny_shapes, tmp_path)
    rng, pause, killed = random.Random(30), 0.4, []
    moments = [("embedding", rng.uniform(0, 3 * pause)), ("vectors", rng.uniform(0, pause)),
               ("faiss", rng.uniform(0, pause)), ("embedding", rng.uniform(0, pause)),
               (None, rng.uniform(2, 20))]  # anywhere from loading the model to the end
    for i, (phase, delay) in enumerate(moments):
        phases = tmp_path / f"phases-{i}"
        reached = kill_in(start_index(update, phases, pause), phases, phase, delay)
        state = loads_and_answers(update, capsys)
        killed.append({"phase": phase or "random", "delay_s": round(delay, 2),
                       "in": reached, "left": state})
        if state == "new":  # the update got through: start the next kill from the old index
            update.restore_old()
    with capsys.disabled():  # the record of the kills, for docs/experiments
        print(json.dumps(killed))
    assert [k["left"] for k in killed[:4]] == ["old"] * 4  # all killed before the commit
    assert [k["in"] for k in killed[:3]] == ["embedding", "vectors", "faiss"]
    phases = tmp_path / "phases-final"
    proc = start_index(update, phases, pause=0.0)
    assert proc.wait(timeout=600) == 0, (tmp_path / "index.log").read_text()[-3000:]
    assert update.state() == "new" and update.clean()
    search_answers(update.out, capsys)
