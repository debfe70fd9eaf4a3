"""Fewer image tokens for the LM: pixel shuffle and average pooling before the projector."""

import torch

from hf_tiny import LMS, hf_spec
from tuwen.models.image_text_model import build_model
from tuwen.models.token_reduction import AvgPool, PixelShuffle, expand_weights


def grid(b: int = 2, side: int = 4, d: int = 3) -> torch.Tensor:
    return torch.randn(b, side * side, d, dtype=torch.float64, requires_grad=True)


def test_pixel_shuffle_regroups_each_block_into_one_wide_token():
    x = grid()
    out = PixelShuffle(2)(x)
    assert out.shape == (2, 4, 12)
    cells = x.reshape(2, 4, 4, 3)  # (B, row, col, D)
    # output token (0, 1) is the block rows 0-1, cols 2-3, row-major inside the block
    block = torch.cat([cells[:, 0, 2], cells[:, 0, 3], cells[:, 1, 2], cells[:, 1, 3]], -1)
    assert torch.equal(out[:, 1], block)


def test_avg_pool_averages_each_cell():
    x = grid()
    out = AvgPool(4)(x)
    assert out.shape == (2, 4, 3)
    cells = x.reshape(2, 4, 4, 3)
    assert torch.allclose(out[:, 3], cells[:, 2:, 2:].mean(dim=(1, 2)))


def test_reductions_pass_gradients():
    assert torch.autograd.gradcheck(PixelShuffle(2), (grid(),))
    assert torch.autograd.gradcheck(AvgPool(4), (grid(),))


def test_uneven_grids_are_clear_errors():
    for module, message in ((PixelShuffle(3), "factor 3 does not divide"),
                            (AvgPool(9), "does not divide the 4x4")):
        try:
            module(grid())
        except ValueError as err:
            assert message in str(err)
        else:
            raise AssertionError(module)


def test_expanded_attention_keeps_its_mass_on_the_full_grid():
    w = torch.softmax(torch.randn(2, 2, 5, 4), -1)  # (B, H, L, 2x2 reduced tokens)
    full = expand_weights(w, 2)
    assert full.shape == (2, 2, 5, 16) and torch.allclose(full.sum(-1), w.sum(-1))


def test_an_lm_with_a_reduced_prefix_trains_and_maps_attention_to_the_grid():
    gpt2 = {**LMS["gpt2"][0], "vocab_size": 50}
    for reduce, width in (({"type": "pixel_shuffle", "factor": 2}, 128),
                          ({"type": "avg_pool", "tokens": 4}, 32)):
        torch.manual_seed(0)
        model = build_model(hf_spec(decoder={"type": "hf_causal_lm", "hf_config": gpt2,
                                             "reduce": reduce}))
        assert model.decoder.projector[0].in_features == width
        image = model.encode_image(torch.randn(2, 3, 32, 32)).tokens  # (2, 16, 32)
        ids = torch.randint(5, 50, (2, 6))
        out = model.decode(ids, image, output_attentions=True)
        assert out.logits.shape == (2, 6, 50)
        assert out.cross_attentions[-1].shape == (2, 2, 6, 16)  # the 4x4 encoder grid
        out.logits.sum().backward()
        assert model.decoder.projector[0].weight.grad.abs().sum() > 0
