"""One language-model forward for all of a step's generative tasks.

The caption task and generative VQA (and any task that gives sequences) teach the same
decoder. Each gives its teacher-forced sequences as ``LMSequences`` (``Task.lm_sequences``):
right-padded ``input_ids`` and ``labels``, the image each row reads, its label smoothing.
The first of these tasks whose loss the joint step asks for runs ``joined_losses``, once per
step (``StepInputs.shared``): every active task's sequences are packed one row per image
(``models.decoder.pack_by_image``: an image's caption and its questions back to back, each
cut after its last label), the decoder runs once over these rows (``packed_loss``: the image
prefix, or the cross-attention memory, once per image; each sequence attends only to the
image and its own earlier tokens, at the positions it has alone), and each task gets the
mean loss over its own tokens. Each task's loss stays its own node of the graph, so task
weights, per-task gradient norms and ``loss_<task>`` are what separate forwards give, and
the losses equal separate forwards' up to float rounding (tests/tasks/test_lm_forward.py).

Packing is what makes one forward cheaper than several: padding every sequence to the
longest of any task measured slower than a forward per task, and was removed
(docs/experiments/2026-12-07-llm-step.md). Where no image has two sequences (the
demo: captions only, one per image), or the decoder cannot pack, each task's rows go
through the decoder as they would alone.

A task joins by overriding ``lm_sequences`` and returning ``lm_loss(step, self, options)``
from its ``loss`` (tasks/captioning.py is the example).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tuwen.models.decoder import pack_by_image
from tuwen.tasks.base import StepInputs, Task


@dataclass
class LMSequences:
    """One task's teacher-forced sequences for the language model in one step."""

    input_ids: torch.Tensor  # (R, L) prompt + target, right-padded, in the LM's tokens
    labels: torch.Tensor     # (R, L) the next tokens; -100 on the prompt and the padding
    image: torch.Tensor      # (R,) each row's image: an index into the batch's images
    label_smoothing: float = 0.0


def lm_loss(step: StepInputs, task: Task, options: Any) -> torch.Tensor | None:
    """``task``'s LM loss on ``step``: its share of the step's one joined forward, or,
    when the step does not list it among its tasks (a task asked alone), a forward of its
    own; None when the batch has no sequences for it."""
    losses = step.shared(joined_losses)
    if task.name in losses:
        return losses[task.name]
    sequences = task.lm_sequences(step, options)
    return None if sequences is None else decoder_losses(step, [sequences])[0]


def joined_losses(step: StepInputs) -> dict[str, torch.Tensor]:
    """Each of the step's tasks with sequences -> its loss (``decoder_losses``)."""
    named = {name: seqs for name, (task, options) in step.tasks.items()
             if (seqs := task.lm_sequences(step, options)) is not None}
    return dict(zip(named, decoder_losses(step, list(named.values()))))


def decoder_losses(step: StepInputs, sequences: Sequence[LMSequences]) -> list[torch.Tensor]:
    """One loss per entry of ``sequences``: from one packed forward of the decoder when it
    packs and some image has several sequences, else from a forward per entry."""
    if not sequences:
        return []
    decoder, tokens = step.model.decoder, step.image.tokens  # (B, N, D)
    images = torch.cat([s.image for s in sequences])
    if decoder.packs and len(images.unique()) < len(images):  # an image read twice: share it
        packed = pack_by_image([(s.input_ids, s.labels, s.image) for s in sequences],
                               step.model.spec.pad_token_id)
        if len(packed.image):
            return list(decoder.packed_loss(packed, tokens[packed.image],
                                            [s.label_smoothing for s in sequences]).unbind())
    # no image has two sequences (nothing to share), or the decoder cannot pack: each
    # task's rows go through the decoder as they would alone
    return [decoder.loss(s.input_ids, tokens[s.image], s.labels,
                         label_smoothing=s.label_smoothing) for s in sequences]
