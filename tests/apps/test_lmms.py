"""lmms-eval's model "tuwen" (tuwen.apps.lmms): its request handling against fake lmms-eval
requests, and a whole lmms-eval run on a local task whose score equals tuwen eval's."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tiny import tiny_overrides
from tuwen.apps.cli import main
from tuwen.apps.lmms import TuwenLMM
from tuwen.apps.pipeline import Answer

TASK_DIR = Path(__file__).parent / "lmms_task"
SRC = str(Path(__file__).resolve().parents[2] / "src")


@dataclass
class FakeInstance:
    """What lmms-eval hands a model: ``args`` = (context, generation kwargs, doc_to_visual,
    doc_id, task, split)."""

    args: tuple


class FakePipeline:
    """Records what the adapter asks; answers "q:<question>" and captions "caption <n>"."""

    batch_size = 1
    device = "cpu"

    def __init__(self) -> None:
        self.calls = []

    def load(self, image):
        return image

    def answer(self, images, questions):
        self.calls.append(("answer", list(images), list(questions)))
        return [Answer(f"q:{q}\nmore") for q in questions]

    def caption(self, images, decoding, beam_size, max_length):
        self.calls.append(("caption", list(images), max_length))
        return [f"caption {i}. and more" for i in range(len(images))]


def requests(docs: list[dict], contexts: list[str], gen_kwargs: dict) -> list[FakeInstance]:
    return [FakeInstance((context, dict(gen_kwargs), lambda doc: [doc["image"]], i, "t", "test"))
            for i, context in enumerate(contexts)]


def adapter(docs, **options) -> tuple[TuwenLMM, FakePipeline]:
    pipe = FakePipeline()
    lmm = TuwenLMM(pipeline=pipe, batch_size=4, **options)
    lmm.task_dict = {"t": {"test": docs}}
    return lmm, pipe


def test_questions_are_answered_and_caption_requests_captioned_in_request_order():
    docs = [{"image": f"img{i}"} for i in range(4)]
    lmm, pipe = adapter(docs)
    contexts = ["<image>\nwhat colour is the circle?\nAnswer the question using a single word "
                "or phrase.", "Provide a one-sentence caption for the provided image.",
                "how many squares?", ""]
    out = lmm.generate_until(requests(docs, contexts, {"until": ["\n"], "max_new_tokens": 8}))
    assert out == ["q:what colour is the circle?", "caption 0. and more", "q:how many squares?",
                   "caption 1. and more"]
    assert pipe.calls == [("answer", ["img0", "img2"], ["what colour is the circle?",
                                                        "how many squares?"]),
                          ("caption", ["img1", "img3"], 8)]
    assert lmm.batch_size == 4 and lmm.rank == 0 and lmm.world_size == 1


def test_keep_prompt_mode_and_a_string_stop():
    docs = [{"image": "a"}]
    lmm, pipe = adapter(docs, keep_prompt="true", mode="answer")
    out = lmm.generate_until(requests(docs, ["describe it\nin one word"], {"until": "more"}))
    assert out == ["q:describe it\nin one word"]
    lmm, pipe = adapter(docs, mode="caption")
    assert lmm.generate_until(requests(docs, ["what?"], {"until": ["."]})) == ["caption 0"]
    assert pipe.calls[0][2] == 30   # no max_new_tokens: the caption default


def test_unsupported_requests_are_clear_errors():
    docs = [{"image": None}]
    lmm, _ = adapter(docs)
    with pytest.raises(ValueError, match="no image"):
        lmm.generate_until(requests(docs, ["what?"], {}))
    with pytest.raises(NotImplementedError, match="loglikelihood"):
        lmm.loglikelihood([])
    with pytest.raises(ValueError, match="mode='chat'"):
        TuwenLMM(pipeline=FakePipeline(), mode="chat")
    with pytest.raises(ValueError, match="pretrained=RUN/model"):
        TuwenLMM()


def lmms_python() -> str | None:
    """An interpreter that imports lmms_eval: this one, or $TUWEN_LMMS_PYTHON (`make lmms`
    installs lmms-eval into a venv of its own)."""
    for python in (sys.executable, os.environ.get("TUWEN_LMMS_PYTHON")):
        if python and subprocess.run([python, "-c", "import lmms_eval"],
                                     capture_output=True).returncode == 0:
            return python
    return None


def local_questions(shapes: Path, split: str) -> list[dict]:
    """The split's VQAv2 questions as the local task reads them (image: a path)."""
    questions = json.loads((shapes / f"vqa_questions_{split}.json").read_text())["questions"]
    annotations = json.loads((shapes / f"vqa_annotations_{split}.json").read_text())
    answers = {a["question_id"]: a["answers"] for a in annotations["annotations"]}
    return [{"question_id": q["question_id"], "question": q["question"],
             "image": str(shapes / "images" / f"{q['image_id']:06d}.png"),
             "answers": answers[q["question_id"]]} for q in questions]


def test_lmms_eval_scores_a_generating_model_as_tuwen_eval_does(tiny_shapes, tmp_path):
    python = lmms_python()
    if python is None:
        pytest.skip("lmms_eval is not importable (make lmms; TUWEN_LMMS_PYTHON)")
    run = tmp_path / "run"
    sets = tiny_overrides(tiny_shapes, max_steps=30, save_every=30) + \
        ["model.vqa.mode=generate"]
    assert main(["train", "configs/shapes.yaml", "--out", str(run),
                 *[arg for s in sets for arg in ("--set", s)]]) == 0
    assert main(["eval", str(run), "--tasks", "vqa"]) == 0
    ours = json.loads((run / "eval" / "test" / "metrics.json").read_text())["vqa"]["accuracy"]
    task = tmp_path / "task"
    shutil.copytree(TASK_DIR, task)
    (task / "questions.json").write_text(json.dumps(local_questions(tiny_shapes, "test")))
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([python, "-m", "lmms_eval", "--model", "tuwen", "--model_args",
                          f"pretrained={run / 'model'},device=cpu", "--tasks",
                          "tuwen_shapes_vqa", "--include_path", str(task), "--batch_size", "16",
                          "--output_path", str(tmp_path / "out")],
                         cwd=task, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("*_results.json")).read_text())
    theirs = results["results"]["tuwen_shapes_vqa"]["vqa_accuracy,none"]
    assert round(theirs, 2) == ours
