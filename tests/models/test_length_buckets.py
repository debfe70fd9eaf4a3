"""model.length_buckets: texts run in groups of similar length give the same results."""

from dataclasses import replace

import pytest
import torch

from tiny import tiny_spec
from tuwen.data.batch import Batch
from tuwen.models.image_text_model import build_model
from tuwen.models.length_buckets import length_groups
from tuwen.tasks.table import joint_step

WEIGHTS = {"caption": 1.0, "itc": 1.0, "itm": 1.0, "vqa": 1.0}


def ragged_mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def test_groups_sort_by_length_and_cut_each_group_to_its_longest_text():
    mask = ragged_mask([9, 2, 5, 3, 8, 2, 4, 9], 9)
    groups = length_groups(mask, 4)
    assert [r.tolist() for r in groups.rows] == [[1, 5], [3, 6], [2, 4], [0, 7]]
    assert groups.widths == [2, 4, 8, 9]
    order = torch.cat(groups.rows)
    assert torch.equal(order[groups.inverse], torch.arange(8))


@pytest.mark.parametrize("mask, buckets", [
    (ragged_mask([3, 2, 5, 4], 5), 1),                       # one bucket asked for
    (ragged_mask([3, 2, 5], 5), 2),                          # too few rows to split
    (torch.ones(6, 5, dtype=torch.long), 2),                 # no padding to skip
    (ragged_mask([3, 2, 5, 4], 5).flip(1), 2),               # left padding: not cut
])
def test_no_groups_where_bucketing_cannot_help(mask, buckets):
    assert length_groups(mask, buckets) is None


def ragged_batch(tiny_batch: Batch) -> Batch:
    """``tiny_batch`` with captions and questions of different lengths (right padded)."""
    captions, questions = tiny_batch.captions, tiny_batch.questions
    mask = ragged_mask([9, 3, 6, 4], 9)
    captions = replace(captions, attention_mask=mask, input_ids=captions.input_ids * mask)
    mask = ragged_mask([2, 6, 3, 5], 6)
    questions = replace(questions, attention_mask=mask, input_ids=questions.input_ids * mask)
    return replace(tiny_batch, captions=captions, questions=questions)


def with_buckets(model, buckets: int):
    model.spec.model = model.spec.model.model_copy(update={"length_buckets": buckets})
    return model


@pytest.mark.parametrize("text_encoder", [{"type": "transformer", "layers": 1, "heads": 2},
                                          {"type": "lstm", "layers": 1}])
def test_bucketed_text_encoding_equals_one_group_at_real_positions(text_encoder):
    torch.manual_seed(0)
    model = build_model(tiny_spec(text_encoder=text_encoder)).eval()
    mask = ragged_mask([9, 2, 5, 3, 8, 2, 4, 7], 9)
    ids = torch.randint(7, 50, mask.shape) * mask
    whole = with_buckets(model, 1).encode_text(ids, mask)
    grouped = with_buckets(model, 4).encode_text(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(grouped.tokens[real], whole.tokens[real])
    torch.testing.assert_close(grouped.pooled, whole.pooled)
    assert torch.equal(grouped.attention_mask, mask)


@pytest.mark.parametrize("fusion", [{"type": "cross_attention", "layers": 2, "heads": 2},
                                    {"type": "concat", "layers": 1, "heads": 2},
                                    {"type": "weighted_sum"}])
def test_bucketed_fusion_equals_one_group(fusion):
    torch.manual_seed(0)
    model = build_model(tiny_spec(fusion=fusion)).eval()
    mask = ragged_mask([9, 2, 5, 3, 8, 2, 4, 7], 9)
    ids = torch.randint(7, 50, mask.shape) * mask
    image = model.encode_image(torch.randn(8, 3, 32, 32)).tokens
    text = with_buckets(model, 1).encode_text(ids, mask)
    whole = model.fuse(text, image)
    grouped = with_buckets(model, 3).fuse(text, image)
    real = mask.bool()
    torch.testing.assert_close(grouped.fused[real], whole.fused[real])
    torch.testing.assert_close(grouped.pooled, whole.pooled)
    assert (grouped.gates is None) == (whole.gates is None)
    if whole.gates is not None:
        torch.testing.assert_close(grouped.gates[real], whole.gates[real])
    # attention maps come from one whole-batch pass, still with buckets set
    assert model.fuse(text, image, output_attentions=True).attentions is not None


def test_bucketed_training_step_gives_the_same_losses_and_gradients(tiny_batch):
    batch = ragged_batch(tiny_batch)
    for mask in (batch.captions.attention_mask, batch.questions.attention_mask):
        assert length_groups(mask, 2) is not None  # both really split
    results = []
    for buckets in (1, 2):
        torch.manual_seed(0)
        model = with_buckets(build_model(tiny_spec()).train(), buckets)
        torch.manual_seed(1)  # ITM's hard-negative draw
        total, losses = joint_step(model, batch, WEIGHTS)
        total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(({k: v.item() for k, v in losses.items()}, grads))
    (losses_1, grads_1), (losses_2, grads_2) = results
    assert losses_1 == pytest.approx(losses_2, rel=1e-5)
    assert grads_1.keys() == grads_2.keys()
    for name in grads_1:
        torch.testing.assert_close(grads_2[name], grads_1[name], rtol=1e-4, atol=1e-6,
                                   msg=name)
