import math

import pytest
import torch

from tuwen.models.losses import (
    caption_loss,
    contrastive_loss,
    matching_loss,
    sample_hard_negatives,
    soft_answer_loss,
)


def test_contrastive_loss_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(2.0)
    # logits = 2 * [[1, .6], [0, .8]]
    logits = [[2.0, 1.2], [0.0, 1.6]]

    def lse(xs):
        return math.log(sum(math.exp(x) for x in xs))

    i2t = ((lse(logits[0]) - logits[0][0]) + (lse(logits[1]) - logits[1][1])) / 2
    cols = [[2.0, 0.0], [1.2, 1.6]]
    t2i = ((lse(cols[0]) - cols[0][0]) + (lse(cols[1]) - cols[1][1])) / 2
    got = contrastive_loss(img, txt, scale)
    assert math.isclose(got.item(), (i2t + t2i) / 2, rel_tol=1e-6)


def test_contrastive_duplicates_share_the_target():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    positives = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]])  # captions 0 and 1 identical
    logits = 5.0 * img @ txt.t()
    rows, cols = logits.log_softmax(1), logits.log_softmax(0)
    i2t = [-sum(rows[i, j] for j in range(3) if positives[i, j]) / positives[i].sum()
           for i in range(3)]
    t2i = [-sum(cols[i, j] for i in range(3) if positives[i, j]) / positives[:, j].sum()
           for j in range(3)]
    expected = (sum(i2t) / 3 + sum(t2i) / 3) / 2
    got = contrastive_loss(img, txt, torch.tensor(5.0), positives)
    assert math.isclose(got.item(), float(expected), rel_tol=1e-5)
    assert not math.isclose(got.item(), contrastive_loss(img, txt, torch.tensor(5.0)).item())


def test_caption_loss_ignores_padding():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 10.0
    labels = torch.tensor([[2, -100, -100]])
    expected = math.log(1 + 3 * math.exp(-10))
    assert math.isclose(caption_loss(logits, labels).item(), expected, abs_tol=1e-7)


def test_soft_answer_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0]])
    targets = torch.tensor([[1.0, 1 / 3]])
    # BCE(0, 1) + BCE(0, 1/3) = log 2 + log 2
    assert math.isclose(soft_answer_loss(logits, targets).item(), 2 * math.log(2), rel_tol=1e-6)


def test_matching_loss():
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    assert math.isclose(matching_loss(logits, torch.tensor([1, 0])).item(), math.log(2),
                        rel_tol=1e-6)


def test_hard_negatives_never_pick_positives():
    torch.manual_seed(0)
    sim = torch.randn(6, 6)
    positives = torch.eye(6, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = True
    for _ in range(50):
        picks = sample_hard_negatives(sim, positives)
        assert not positives[torch.arange(6), picks].any()


def test_hard_negatives_prefer_similar_and_flag_rows_without_negatives():
    torch.manual_seed(0)
    sim = torch.tensor([[0.0, 20.0, -20.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    positives = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    picks = sample_hard_negatives(sim, positives)
    assert picks[0] == 1 and picks[1] == -1


def test_text_weights_spread_the_image_to_text_target_by_hand():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    positives = torch.tensor([[1, 1, 0], [0, 0, 1]])
    weights = torch.tensor([0.25, 1.0, 0.5])
    logits = 3.0 * img @ txt.t()
    rows, cols = logits.log_softmax(1), logits.log_softmax(0)
    i2t = [-(0.25 * rows[0, 0] + 1.0 * rows[0, 1]) / 1.25, -rows[1, 2]]
    t2i = [-cols[0, 0], -cols[0, 1], -cols[1, 2]]  # the text->image side is unweighted
    expected = (sum(i2t) / 2 + sum(t2i) / 3) / 2
    got = contrastive_loss(img, txt, torch.tensor(3.0), positives, text_weights=weights)
    assert math.isclose(got.item(), float(expected), rel_tol=1e-5)
    same = contrastive_loss(img, txt, torch.tensor(3.0), positives, text_weights=torch.ones(3))
    assert math.isclose(same.item(), contrastive_loss(img, txt, torch.tensor(3.0),
                                                      positives).item(), rel_tol=1e-6)


def test_text_weights_teach_an_image_to_rank_its_specific_caption_first():
    """Two images share the caption "generic" (its text appears once per image) and each has
    a specific one. Uniform targets leave an image's generic and specific captions tied;
    weighting each caption by 1 / (images that have it) ranks the specific one first."""
    # texts: 0 generic (of image 0), 1 specific 0, 2 generic (of image 1), 3 specific 1
    positives = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]])  # identical texts are positives
    weights = torch.tensor([0.5, 1.0, 0.5, 1.0])
    margins = {}
    for name, w in (("uniform", None), ("weighted", weights)):
        torch.manual_seed(0)
        img = torch.randn(2, 8, requires_grad=True)
        base = torch.randn(3, 8, requires_grad=True)  # generic, specific 0, specific 1
        opt = torch.optim.Adam([img, base], lr=0.05)
        for _ in range(400):
            txt = base[[0, 1, 0, 2]]  # the two generic rows are the same text
            n = torch.nn.functional.normalize
            loss = contrastive_loss(n(img, dim=-1), n(txt, dim=-1), torch.tensor(10.0),
                                    positives, text_weights=w)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            sim = n(img, dim=-1) @ n(base, dim=-1).t()
        margins[name] = min(sim[0, 1] - sim[0, 0], sim[1, 2] - sim[1, 0]).item()
    # at the optimum the logits differ by log(target ratio) = log 2, at logit scale 10
    assert abs(margins["uniform"]) < 0.01
    assert margins["weighted"] == pytest.approx(math.log(2) / 10, abs=0.01)
