"""One LM forward for the caption and generative-VQA sequences of a step (tasks.lm_forward):
each task's loss and its gradient equal those of its own forward (fp32), for a Hugging Face
causal LM (a tiny Llama with a chat template) and for the small decoder."""

from pathlib import Path

import pytest
import torch

from hf_tiny import chat_lm_model, save_bert, save_chat_lm, save_image_model
from tiny import as_batch, task_collator, tiny_spec
from tuwen.data.records import VQAItem
from tuwen.models.decoder import pack_by_image
from tuwen.models.image_text_model import build_model
from tuwen.tasks.base import StepInputs, Task
from tuwen.tasks.captioning import CaptionOptions, CaptionTask
from tuwen.tasks.lm_forward import LMSequences, lm_loss
from tuwen.tasks.table import TASKS, default_options, joint_step
from tuwen.tasks.vqa import VqaTask
from tuwen.training.grad_norms import task_gradient_norms

MAX_LENGTH = 24
CAPTIONS = ["a red circle left of a blue square", "two green triangles", "a yellow square"]
QUESTIONS = [(0, "what colour is the circle?", "red"), (0, "is there a square?", "yes"),
             (1, "how many shapes are there?", "two"), (2, "what colour is the square?",
                                                        "yellow")]
TOL = {"rtol": 1e-6, "atol": 1e-6}


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm_forward_hub")
    return {"vit": save_image_model("vit", root / "vit"), "bert": save_bert(root / "bert"),
            "lm": save_chat_lm(root / "lm")}


def items() -> list[dict]:
    """Three images, one caption each, two, one and one questions."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i, caption in enumerate(CAPTIONS):
        qs = [VQAItem(n, i, Path(f"{i}.png"), q, (a,) * 10, a, "what", "other")
              for n, (image, q, a) in enumerate(QUESTIONS) if image == i]
        out.append({"pixel_values": torch.randn(3, 32, 32, generator=g), "captions": [caption],
                    "questions": qs})
    return out


def separate(model, batch, options) -> dict[str, torch.Tensor]:
    """Each generative task asked alone: a decoder forward of its own."""
    step = StepInputs(model, batch)
    return {name: TASKS[name].loss(step, options[name]) for name in ("caption", "vqa")}


def lm_forwards(model) -> list:
    """A list that grows by one on each forward of the decoder (its token embedding)."""
    calls: list = []
    embed = getattr(model.decoder, "embed", None) or model.decoder.lm.get_input_embeddings()
    embed.register_forward_hook(lambda *_: calls.append(1))
    return calls


def assert_equal_losses_and_gradients(model, batch, smoothing: float) -> None:
    options = {**default_options(), "caption": CaptionOptions(label_smoothing=smoothing)}
    weights = {"caption": 1.0, "vqa": 0.5}
    calls = lm_forwards(model)
    _, joined = joint_step(model, batch, weights, options)
    assert len(calls) == 1  # one decoder forward for both tasks
    alone = separate(model, batch, options)
    assert len(calls) == 3
    params = [p for p in model.parameters() if p.requires_grad]
    for name in ("caption", "vqa"):
        torch.testing.assert_close(joined[name], alone[name], **TOL)
        together = torch.autograd.grad(joined[name], params, retain_graph=True, allow_unused=True)
        apart = torch.autograd.grad(alone[name], params, retain_graph=True, allow_unused=True)
        for a, b in zip(together, apart, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, **TOL)
    # per-task gradient norms read each task's row group as its own loss
    norms = task_gradient_norms(joined, weights, params)
    expected = task_gradient_norms(alone, weights, params)
    assert norms.keys() == expected.keys() == {"grad_norm_caption", "grad_norm_vqa"}
    for key, value in norms.items():
        assert value == pytest.approx(expected[key], rel=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # a boolean mask, an additive one
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_an_hf_lm_gives_each_task_its_own_forwards_loss_from_one_forward(hub, smoothing,
                                                                         attention):
    model = chat_lm_model(hub, MAX_LENGTH).eval()
    model.decoder.lm.set_attn_implementation(attention)
    assert model.decoder.packs  # one row per image, the prefix once
    batch = task_collator(model.tokenizer, None, MAX_LENGTH, chat=model.spec.chat,
                          text_tokenizer=model.text_tokenizer, spec=model.spec)(items())
    captions, answers = batch.part("caption"), batch.part("vqa")
    # both groups have padding of their own, and the join pads one of them further
    assert captions.input_ids.shape[1] != answers.answer_input_ids.shape[1]
    assert (captions.labels[:, -1] == -100).any() and (answers.answer_labels[:, -1] == -100).any()
    assert_equal_losses_and_gradients(model, batch, smoothing)


def test_sequences_are_packed_one_row_per_image_up_to_their_last_label():
    captions = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]])
    caption_labels = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100]])
    answers = torch.tensor([[1, 4, 3, 0, 0], [1, 4, 4, 3, 0]])
    answer_labels = torch.tensor([[-100, -100, 2, -100, -100], [-100, -100, -100, 2, -100]])
    packed = pack_by_image([(captions, caption_labels, torch.tensor([0, 2])),
                            (answers, answer_labels, torch.tensor([2, 2]))], pad_token_id=0)
    assert packed.image.tolist() == [0, 2]
    assert packed.input_ids.tolist() == [[1, 5, 6, 7, 0, 0, 0, 0, 0, 0],
                                         [1, 8, 9, 1, 4, 3, 1, 4, 4, 3]]
    assert packed.group.tolist() == [[0] * 4 + [-1] * 6, [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]]
    assert packed.segment.tolist() == [[0] * 4 + [-1] * 6, [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]]
    assert packed.positions[1].tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3]
    assert packed.group_labels(1)[1].tolist() == [-100] * 5 + [2] + [-100] * 3 + [2]
    sees = packed.attends()[1, 0]  # (T, T)
    assert sees[4].tolist() == [False] * 3 + [True, True] + [False] * 5  # its own, causal
    assert not sees[:3, 3:].any() and not sees[3:6, 6:].any()
    behind = packed.attends(prefix=2)[1, 0]  # (2 + T, 2 + T)
    assert behind[:2].tolist() == [[True] + [False] * 11, [True, True] + [False] * 10]
    assert behind[2:, :2].all() and torch.equal(behind[2:, 2:], sees)


def test_the_small_decoder_gives_each_task_its_own_forwards_loss_from_one_forward():
    torch.manual_seed(0)
    model = build_model(tiny_spec(vqa={"mode": "generate"})).eval()
    g = torch.Generator().manual_seed(3)
    captions, answers = torch.randint(7, 50, (3, 9), generator=g), torch.randint(7, 50, (4, 6),
                                                                                  generator=g)
    caption_labels, answer_labels = captions.roll(-1, 1), answers.roll(-1, 1)
    caption_labels[:, -1], caption_labels[1, 5:], captions[1, 6:] = -100, -100, 0
    answer_labels[:, :3], answer_labels[:, -1], answers[2, 5:] = -100, -100, 0
    batch = as_batch({
        "pixel_values": torch.randn(3, 3, 32, 32, generator=g),
        "caption_image": torch.tensor([0, 1, 2]), "caption_first": torch.ones(3, dtype=bool),
        "caption_input_ids": captions, "caption_attention_mask": torch.ones_like(captions),
        "decoder_input_ids": captions, "labels": caption_labels,
        "question_image": torch.tensor([0, 0, 1, 2]), "question_input_ids": answers,
        "question_attention_mask": torch.ones_like(answers),
        "answer_input_ids": answers, "answer_labels": answer_labels})
    assert_equal_losses_and_gradients(model, batch, 0.1)


def test_one_generative_task_runs_the_forward_it_ran_alone(tiny_batch):
    """With the caption task the only one (VQA classifies), its loss is bitwise the call it
    made before there was a joined forward."""
    torch.manual_seed(0)
    model = build_model(tiny_spec()).eval()
    _, losses = joint_step(model, tiny_batch, {"caption": 1.0, "vqa": 1.0})
    rows, part = tiny_batch.captions, tiny_batch.part("caption")
    first = rows.first
    image = model.encode_image(tiny_batch.pixel_values).tokens
    expected = model.decoder.loss(part.input_ids[first], image[rows.image[first]],
                                  part.labels[first])
    assert torch.equal(losses["caption"], expected)


class EchoTask(Task):
    """A third generative task: it teaches the decoder to repeat each caption."""

    name = "echo"

    def loss(self, step, options):
        return lm_loss(step, self, options)

    def lm_sequences(self, step, options):
        part = step.batch.part("caption")
        return LMSequences(part.input_ids, part.labels, step.batch.captions.image)


def test_a_third_task_joins_by_giving_sequences(tiny_batch, monkeypatch):
    monkeypatch.setitem(TASKS, "echo", EchoTask())
    torch.manual_seed(0)
    model = build_model(tiny_spec(vqa={"mode": "generate"})).eval()
    calls = lm_forwards(model)
    options = {**default_options(), "echo": None}
    _, losses = joint_step(model, tiny_batch, {"caption": 1.0, "echo": 2.0}, options)
    assert set(losses) == {"caption", "echo"} and len(calls) == 1
    alone = EchoTask().loss(StepInputs(model, tiny_batch), None)
    torch.testing.assert_close(losses["echo"], alone, **TOL)
    assert CaptionTask().lm_sequences(StepInputs(model, tiny_batch),
                                      CaptionOptions()).input_ids.shape[0] == 3  # first only


def test_a_classifying_vqa_gives_no_sequences(tiny_batch):
    model = build_model(tiny_spec()).eval()
    assert VqaTask().lm_sequences(StepInputs(model, tiny_batch), None) is None
