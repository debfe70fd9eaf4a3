"""LSTM and GRU text encoders."""

import pytest
import torch

from hf_tiny import hf_spec, text_batch
from tiny import tiny_spec
from tuwen.models.image_text_model import build_model
from tuwen.models.rnn_text import RNNTextEncoder
from tuwen.tasks.table import joint_step


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_final_states_match_each_text_run_alone(kind, bidirectional):
    torch.manual_seed(0)
    encoder = RNNTextEncoder(kind, 50, 16, layers=2, bidirectional=bidirectional).eval()
    ids, mask = text_batch()
    feats = encoder(ids, mask)
    assert feats.tokens.shape == (2, 6, 16) and feats.pooled.shape == (2, 16)
    for i, length in enumerate(mask.sum(1).tolist()):
        # reference: the same RNN over the unpadded text, no packing
        out, state = encoder.rnn(encoder.embed(ids[i:i + 1, :length]))
        h = state[0] if kind == "lstm" else state
        final = h.view(2, 2 if bidirectional else 1, 1, 16)[-1].transpose(0, 1).reshape(1, -1)
        assert torch.allclose(feats.pooled[i], encoder.pooled_proj(final)[0], atol=1e-5)
        assert torch.allclose(feats.tokens[i, :length], encoder.proj(out)[0], atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_padding_does_not_change_the_features(kind):
    torch.manual_seed(0)
    encoder = RNNTextEncoder(kind, 50, 16).eval()
    ids = torch.tensor([[7, 8, 9]])
    short = encoder(ids, torch.ones(1, 3, dtype=torch.long))
    padded = encoder(torch.tensor([[7, 8, 9, 0, 0]]), torch.tensor([[1, 1, 1, 0, 0]]))
    assert torch.allclose(short.pooled, padded.pooled, atol=1e-6)
    assert torch.allclose(short.tokens, padded.tokens[:, :3], atol=1e-6)


def test_embedding_is_tokenizer_sized_and_trainable():
    model = build_model(hf_spec(text={"type": "gru", "layers": 1}, vocab_size=123))
    embed = model.text_encoder.embed
    assert embed.num_embeddings == 123 and embed.weight.requires_grad
    assert model.text_encoder.rnn.bidirectional  # the default


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_model_with_rnn_text_tower_learns(kind, tiny_batch):
    torch.manual_seed(0)
    model = build_model(tiny_spec(text_encoder={"type": kind, "layers": 1}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        total, _ = joint_step(model, tiny_batch, {"vqa": 1.0})  # reads the question's text
        optimizer.zero_grad()
        total.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in model.text_encoder.rnn.parameters())
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.85 * losses[0]
