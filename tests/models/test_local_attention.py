"""Local self-attention (``model.text_encoder.window``, ``model.fusion.window``): each token
sees only its neighbours, [CLS] sees all, and the fusion's last layer stays global."""

import pytest
import torch

from tuwen.config import load_config
from tuwen.errors import ConfigError
from tuwen.models.fusion_cross_attention import CrossAttentionFusion
from tuwen.models.layers import local_bias, window_bias
from tuwen.models.text_encoders import TextTransformer


def test_window_bias_allows_neighbours_and_a_global_cls():
    allowed = window_bias(5, 1, torch.float32, torch.device("cpu"))[0, 0] == 0
    assert allowed.tolist() == [[True, True, True, True, True],
                                [True, True, True, False, False],
                                [False, True, True, True, False],
                                [False, False, True, True, True],
                                [False, False, False, True, True]]


def test_a_padding_row_that_sees_nothing_stays_finite():
    pad = torch.zeros(1, 1, 1, 6)
    pad[..., 3:] = torch.finfo(torch.float32).min
    bias = local_bias(pad, 6, 1, torch.float32, torch.device("cpu"))
    assert torch.isfinite(bias).all()
    assert local_bias(pad, 6, None, torch.float32, torch.device("cpu")) is pad


def test_text_window_limits_what_each_token_sees():
    torch.manual_seed(0)
    encoder = TextTransformer(vocab_size=40, max_length=16, dim=16, layers=2, heads=2,
                              window=1).eval()
    ids = torch.randint(4, 40, (1, 12))
    mask = torch.ones(1, 12, dtype=torch.long)
    changed = ids.clone()
    changed[0, 9] = 3 if ids[0, 9] != 3 else 5
    a, b = encoder(ids, mask).tokens[0], encoder(changed, mask).tokens[0]
    moved = ((a - b).abs().amax(-1) > 1e-6).nonzero().flatten().tolist()
    # two layers of window 1 reach 2 positions either side of 9; [CLS] sees all in layer 1,
    # and position 1 sees [CLS] in layer 2
    assert moved == [0, 1, 7, 8, 9, 10, 11]
    global_encoder = TextTransformer(40, 16, 16, 2, 2).eval()
    global_encoder.load_state_dict(encoder.state_dict())
    a, b = global_encoder(ids, mask).tokens[0], global_encoder(changed, mask).tokens[0]
    assert ((a - b).abs().amax(-1) > 1e-6).all()


def test_fusion_window_keeps_the_last_layer_global():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(16, layers=2, heads=2, window=1).eval()
    g = torch.Generator().manual_seed(1)
    text, image = torch.randn(1, 10, 16, generator=g), torch.randn(1, 9, 16, generator=g)
    mask = torch.ones(1, 10, dtype=torch.long)
    changed = text.clone()
    changed[0, 8] = torch.randn(16, generator=g)
    a = fusion(text, mask, image, output_attentions=True).attentions
    b = fusion(changed, mask, image, output_attentions=True).attentions
    # position 3 looks at the image as its own phrase in layer 1 ...
    assert torch.allclose(a[0][0, :, 3], b[0][0, :, 3], rtol=0, atol=1e-7)
    # ... and with the whole question in the last layer
    assert (a[1][0, :, 3] - b[1][0, :, 3]).abs().max() > 1e-3


def test_window_config_is_validated():
    config = load_config(None, ["model.text_encoder.window=1", "model.fusion.window=1"])
    assert config.model.text_encoder.window == 1 and config.model.fusion.window == 1
    with pytest.raises(ConfigError, match=r"model\.text_encoder\.window"):
        load_config(None, ["model.text_encoder.window=0"])
    with pytest.raises(ConfigError, match=r"model\.fusion\.window=1 needs model\.fusion\.layers"):
        load_config(None, ["model.fusion.window=1", "model.fusion.layers=1"])
    with pytest.raises(ConfigError, match=r"model\.text_encoder\.window: unknown key for type "
                                          r"'gru'"):
        load_config(None, ["model.text_encoder={type: gru, window: 1}"])
