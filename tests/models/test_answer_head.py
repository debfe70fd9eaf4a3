"""The VQA answer head: [CLS] only, learned readout queries, place reads of the fused tokens."""

import pytest
import torch

from tiny import tiny_spec
from tuwen.models.heads import AnswerHead
from tuwen.models.image_text_model import ImageTextModel, build_model
from tuwen.tasks import vqa
from tuwen.tasks.base import StepInputs
from tuwen.tasks.vqa import VqaTask


def test_readout_ignores_padding_and_needs_the_tokens():
    torch.manual_seed(0)
    head = AnswerHead(8, 5, queries=2).eval()
    pooled, tokens = torch.randn(2, 8), torch.randn(2, 3, 8)
    padded = torch.cat([tokens, torch.randn(2, 2, 8)], dim=1)  # two junk pad positions
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 2)
    torch.testing.assert_close(head(pooled, padded, mask), head(pooled, tokens, mask[:, :3]))
    with pytest.raises(ValueError, match="pass tokens and mask"):
        head(pooled)
    assert AnswerHead(8, 5)(pooled).shape == (2, 5)  # without queries: [CLS] only


@pytest.mark.parametrize("fusion", ["cross_attention", "concat", "weighted_sum"])
def test_a_model_with_readout_queries_learns_and_round_trips(fusion, tmp_path, tiny_batch):
    torch.manual_seed(0)
    fusion_cfg = {"type": fusion} if fusion == "weighted_sum" else \
        {"type": fusion, "layers": 1, "heads": 2}
    model = build_model(tiny_spec(fusion=fusion_cfg, vqa={"readout_queries": 2})).train()
    batch = tiny_batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = VqaTask().loss(StepInputs(model, batch), None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # soft targets in (0, 1): the loss can only fall to their entropy
    t = batch.part("vqa").targets.clamp(1e-6, 1 - 1e-6)
    floor = float(-(t * t.log() + (1 - t) * (1 - t).log()).sum(1).mean())
    assert losses[-1] - floor < 0.3 * (losses[0] - floor)
    assert model.vqa_head.query.grad is not None and model.vqa_head.query.grad.abs().sum() > 0
    model.eval().save_pretrained(tmp_path)
    loaded = ImageTextModel.from_pretrained(tmp_path).eval()
    args = (batch.questions.input_ids, batch.questions.attention_mask)
    image = model.encode_image(batch.pixel_values).tokens[batch.questions.image]
    torch.testing.assert_close(vqa.answer_logits(loaded, *args, image),
                               vqa.answer_logits(model, *args, image), rtol=0, atol=0)


def test_read_positions_take_tokens_by_place_and_zero_padding():
    torch.manual_seed(0)
    head = AnswerHead(8, 5, positions=4).eval()
    pooled, tokens = torch.randn(2, 3, 8)[:, 0], torch.randn(2, 3, 8)
    mask = torch.ones(2, 3, dtype=torch.long)
    out = head(pooled, tokens, mask)
    # a question shorter than `positions` is zero-filled: junk under padding changes nothing
    padded = torch.cat([tokens, torch.randn(2, 3, 8)], dim=1)
    torch.testing.assert_close(head(pooled, padded, torch.cat([mask, 0 * mask], 1)), out)
    # tokens past the first `positions` are not read; the ones before are, each by its place
    longer = torch.cat([tokens, torch.randn(2, 1, 8), torch.randn(2, 2, 8)], dim=1)
    other = longer.clone()
    other[:, 4:] = torch.randn(2, 2, 8)
    ones = torch.ones(2, 6, dtype=torch.long)
    torch.testing.assert_close(head(pooled, longer, ones), head(pooled, other, ones))
    swapped = tokens[:, [1, 0, 2]]
    assert (head(pooled, swapped, mask) - out).abs().max() > 1e-4
    with pytest.raises(ValueError, match="pass tokens and mask"):
        head(pooled)


def test_read_positions_is_a_validated_config_key(tiny_batch, tmp_path):
    from tuwen.config import load_config
    from tuwen.errors import ConfigError
    assert load_config(None, ["model.vqa.read_positions=12"]).model.vqa.read_positions == 12
    with pytest.raises(ConfigError, match=r"model\.vqa\.read_positions"):
        load_config(None, ["model.vqa.read_positions=-1"])
    torch.manual_seed(0)
    model = build_model(tiny_spec(vqa={"read_positions": 6})).eval()
    model.save_pretrained(tmp_path)
    loaded = ImageTextModel.from_pretrained(tmp_path).eval()
    args = (tiny_batch.questions.input_ids, tiny_batch.questions.attention_mask)
    image = model.encode_image(tiny_batch.pixel_values).tokens[tiny_batch.questions.image]
    torch.testing.assert_close(vqa.answer_logits(loaded, *args, image),
                               vqa.answer_logits(model, *args, image), rtol=0, atol=0)
