"""A tuwen model for lmms-eval (https://github.com/EvolvingLMMs-Lab/lmms-eval)::

    python -m lmms_eval --model tuwen --model_args pretrained=RUN/model --tasks TASK

lmms-eval finds it through its entry-point group ``lmms_eval.models`` (``manifest`` below,
declared in pyproject.toml): installing tuwen beside lmms-eval (``pip install
'tuwen[lmms]'``) is all it takes. It answers ``generate_until`` requests with the
``Pipeline``: a question is answered as ``tuwen ask`` answers it (the model's
``model.vqa.mode: generate`` answers, or the answer classifier's best class), a caption
request is captioned as ``tuwen caption`` does. lmms-eval's VQA tasks append an instruction
on a line of its own ("Answer the question using a single word or phrase."); a tuwen
model was trained on bare questions, so only the first line is asked unless
``keep_prompt=true``. ``loglikelihood`` (multiple choice by likelihood) is not supported.
docs/evaluation.md lists the task families that fit.

Model arguments (``--model_args key=value,...``): ``pretrained`` (the model folder),
``batch_size``, ``device``, ``dtype``, ``mode`` (``auto``: a request whose prompt is empty
or asks for a caption is captioned, any other is a question; ``answer``; ``caption``),
``keep_prompt``, ``decoding`` and ``beam_size`` (captions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

try:  # lmms-eval is an optional extra; without it the request handling still works
    from lmms_eval.api.model import lmms as _Base
except ImportError:
    class _Base:  # the few attributes lmms-eval's base class gives a model
        def __init__(self) -> None:
            self._rank, self._world_size, self.task_dict = 0, 1, {}

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size

MODES = ("auto", "answer", "caption")
CAPTION_WORDS = ("caption", "describe")  # lmms-eval's captioning prompts ask with these


def manifest():
    """The entry point lmms-eval reads (group ``lmms_eval.models``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="tuwen", simple_class_path="tuwen.apps.lmms.TuwenLMM")


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true",
                                                                                 "yes")


@dataclass
class Job:
    """One generate_until request, resolved: what to do with which image."""

    kind: str          # "answer" or "caption"
    image: object      # PIL image
    text: str          # the question ("" for a caption)
    until: list[str]
    max_new_tokens: int | None


class TuwenLMM(_Base):
    is_simple = True

    def __init__(self, pretrained: str | None = None, batch_size: int | str = 16,
                 device: str | None = None, dtype: str | None = None, mode: str = "auto",
                 keep_prompt: bool | str = False, decoding: str = "beam",
                 beam_size: int | str = 3, pipeline=None, **_unused) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"tuwen: mode={mode!r}, expected one of {', '.join(MODES)}")
        if pipeline is None:
            if pretrained is None:
                raise ValueError("tuwen: give the model folder: --model_args pretrained=RUN/model")
            from tuwen.apps.pipeline import Pipeline

            pipeline = Pipeline.from_pretrained(pretrained, device=device, dtype=dtype)
        self.pipe = pipeline
        self.pipe.batch_size = int(batch_size)
        self.batch_size_per_gpu = int(batch_size)
        self.mode, self.keep_prompt = mode, _flag(keep_prompt)
        self.decoding, self.beam_size = decoding, int(beam_size)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self.pipe.device

    # ------------------------------------------------------------ requests

    def job(self, request) -> Job:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        visuals = [v for v in doc_to_visual(self.task_dict[task][split][doc_id]) if v is not None]
        if not visuals:
            raise ValueError(f"tuwen: request {doc_id} of {task} has no image; tuwen answers "
                             "about one image")
        prompt = context.replace("<image>", "").strip()
        kind = self.mode if self.mode != "auto" else (
            "caption" if not prompt or any(w in prompt.lower() for w in CAPTION_WORDS)
            else "answer")
        text = prompt if self.keep_prompt else prompt.split("\n")[0].strip()
        until = gen_kwargs.get("until") or []
        return Job(kind, self.pipe.load(visuals[0]), text,
                   [until] if isinstance(until, str) else list(until),
                   gen_kwargs.get("max_new_tokens"))

    def generate_until(self, requests: Sequence) -> list[str]:
        """One text per request, in request order."""
        jobs = [self.job(request) for request in requests]
        out = [""] * len(jobs)
        for kind in ("answer", "caption"):
            rows = [i for i, job in enumerate(jobs) if job.kind == kind]
            if rows:
                texts = self._run(kind, [jobs[i] for i in rows])
                for i, text in zip(rows, texts):
                    out[i] = _cut(text, jobs[i].until)
        return out

    def _run(self, kind: str, jobs: list[Job]) -> list[str]:
        images = [job.image for job in jobs]
        if kind == "answer":
            return [a.text for a in self.pipe.answer(images, [job.text for job in jobs])]
        longest = max((job.max_new_tokens or 30) for job in jobs)
        return self.pipe.caption(images, decoding=self.decoding, beam_size=self.beam_size,
                                 max_length=longest)

    def loglikelihood(self, requests):
        raise NotImplementedError("tuwen generates its answers; lmms-eval tasks scored by "
                                  "loglikelihood (multiple choice by likelihood) are not "
                                  "supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("tuwen answers one question per image; multi-round tasks "
                                  "are not supported")


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to the first stop string."""
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text.strip()
