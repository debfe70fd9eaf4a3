"""LSTM and GRU text encoders over a trainable, tokenizer-sized embedding.

Padding is on the right (as tuwen's collator and HF tokenizers pad), so packed sequences
skip it: outputs at padding positions are zero before the projection, and the final states
are those of each text's last real token.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tuwen.models.text_encoders import TextFeatures
from tuwen.models.towers import Tower

RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNNTextEncoder(Tower):
    """Tokens: the per-position outputs (both directions side by side), projected to ``dim``;
    pooled: the last layer's final states (forward and backward), projected."""

    def __init__(self, kind: str, vocab_size: int, dim: int, layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.0, pad_token_id: int = 0) -> None:
        super().__init__()
        self.layers, self.directions = layers, 2 if bidirectional else 1
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.rnn = RNNS[kind](dim, dim, num_layers=layers, batch_first=True,
                              bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.proj = nn.Linear(self.directions * dim, dim)
        self.pooled_proj = nn.Linear(self.directions * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        b, length = input_ids.shape
        lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()
        x = self.drop(self.embed(input_ids))  # (B, L, D)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)  # (B, L, dirs*D)
        h = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c); (layers*dirs, B, D)
        last = h.view(self.layers, self.directions, b, -1)[-1]  # (dirs, B, D)
        final = last.transpose(0, 1).reshape(b, -1)  # (B, dirs*D)
        return TextFeatures(tokens=self.proj(self.drop(out)), pooled=self.pooled_proj(final),
                            attention_mask=attention_mask)
