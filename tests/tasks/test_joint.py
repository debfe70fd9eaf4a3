import torch

from tiny import as_batch, tiny_spec
from tuwen.data.batch import Batch
from tuwen.models.image_text_model import build_model
from tuwen.tasks import retrieval
from tuwen.tasks.table import joint_step

WEIGHTS = {"caption": 1.0, "itc": 1.0, "itm": 1.0, "vqa": 1.0}


def batch_for(g: torch.Generator, b: int = 8) -> Batch:
    ids = torch.randint(7, 50, (b, 6), generator=g)
    return as_batch({"pixel_values": torch.randn(b, 3, 32, 32, generator=g),
            "caption_image": torch.arange(b), "caption_first": torch.ones(b, dtype=torch.bool),
            "caption_input_ids": ids,
            "caption_attention_mask": torch.ones(b, 6, dtype=torch.long),
            "decoder_input_ids": ids, "labels": torch.roll(ids, -1, dims=1),
            "question_image": torch.arange(b), "question_input_ids": ids[:, :4],
            "question_attention_mask": torch.ones(b, 4, dtype=torch.long),
            "vqa_targets": torch.nn.functional.one_hot(ids[:, 0] % 7, 7).float()})


def test_joint_step_returns_every_task_and_trains_every_part(tiny_batch):
    torch.manual_seed(0)
    model = build_model(tiny_spec()).train()
    total, losses = joint_step(model, tiny_batch, WEIGHTS)
    assert set(losses) == {"caption", "itc", "itm", "vqa"}
    assert torch.isclose(total, sum(losses.values()))
    total.backward()
    for part in ("image_encoder", "text_encoder", "fusion", "decoder", "itc_head", "itm_head",
                 "vqa_head"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part


def test_task_weights_scale_and_select(tiny_batch):
    torch.manual_seed(0)
    model = build_model(tiny_spec()).train()
    torch.manual_seed(1)
    total, losses = joint_step(model, tiny_batch, {"caption": 2.0, "vqa": 0.5})
    assert set(losses) == {"caption", "vqa"}
    assert torch.isclose(total, 2.0 * losses["caption"] + 0.5 * losses["vqa"])


def test_rows_without_labels_are_left_out(tiny_batch):
    torch.manual_seed(0)
    model = build_model(tiny_spec()).train()
    tiny_batch.questions = None
    del tiny_batch.parts["vqa"]
    _, losses = joint_step(model, tiny_batch, WEIGHTS)
    assert "vqa" not in losses and "caption" in losses


def test_caption_positives_cover_own_and_identical_captions():
    ids = torch.tensor([[2, 8, 3], [2, 9, 3], [2, 8, 3], [2, 7, 3]])
    owner = torch.tensor([0, 0, 1, 2])  # image 0: rows 0, 1; image 1: row 2 (= row 0's text)
    pos = retrieval.caption_positives(torch.tensor([0, 1, 2]), owner, ids)
    assert pos.tolist() == [[True, True, True, False], [True, False, True, False],
                            [False, False, False, True]]


def test_duplicate_text_mask():
    ids = torch.tensor([[2, 8, 9, 3], [2, 8, 9, 3], [2, 8, 3, 0]])
    assert retrieval.duplicate_text_mask(ids).tolist() == [
        [True, True, False], [True, True, False], [False, False, True]]


def test_the_model_learns_a_fixed_batch():
    """Every objective must fall when the same batch is fitted for a few dozen steps."""
    torch.manual_seed(0)
    model = build_model(tiny_spec()).train()
    batch = batch_for(torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    _, first = joint_step(model, batch, WEIGHTS)
    for _ in range(60):
        total, losses = joint_step(model, batch, WEIGHTS)
        opt.zero_grad()
        total.backward()
        opt.step()
    for name in ("caption", "itc", "vqa"):
        assert losses[name] < 0.3 * first[name], (name, first[name].item(), losses[name].item())
    assert losses["itm"] < first["itm"]
