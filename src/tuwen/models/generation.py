"""Caption generation from the decoder: batched greedy and beam search.

The decoder is re-run on the whole prefix at every step; captions are short (< 40
tokens) and the decoder small, so this keeps the code obvious.
"""

from __future__ import annotations

import torch

from tuwen.models.image_text_model import ImageTextModel


@torch.no_grad()
def greedy_generate(model: ImageTextModel, image_tokens: torch.Tensor,
                    max_new_tokens: int) -> torch.Tensor:
    """(B, N, D) image tokens -> (B, T) generated ids, without BOS, padded after EOS."""
    spec = model.spec
    batch = image_tokens.shape[0]
    max_new_tokens = min(max_new_tokens, spec.max_text_length - 1)
    ids = torch.full((batch, 1), spec.bos_token_id, dtype=torch.long, device=image_tokens.device)
    done = torch.zeros(batch, dtype=torch.bool, device=image_tokens.device)
    for _ in range(max_new_tokens):
        logits = model.decode(ids, image_tokens).logits[:, -1]
        nxt = logits.argmax(dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, spec.pad_token_id), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == spec.eos_token_id
        if done.all():
            break
    return ids[:, 1:]


@torch.no_grad()
def beam_generate(model: ImageTextModel, image_tokens: torch.Tensor, max_new_tokens: int,
                  beam_size: int = 3, length_penalty: float = 1.0) -> torch.Tensor:
    """Beam search; a finished hypothesis scores sum(log p) / length ** length_penalty."""
    spec = model.spec
    batch, device = image_tokens.shape[0], image_tokens.device
    max_new_tokens = min(max_new_tokens, spec.max_text_length - 1)
    memory = image_tokens.repeat_interleave(beam_size, dim=0)  # (B*K, N, D)
    ids = torch.full((batch * beam_size, 1), spec.bos_token_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch, beam_size, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one alive
    best = [(float("-inf"), None)] * batch
    for step in range(1, max_new_tokens + 1):
        logp = model.decode(ids, memory).logits[:, -1].float().log_softmax(-1)  # (B*K, V)
        vocab = logp.shape[-1]
        total = (scores.view(-1, 1) + logp).view(batch, beam_size * vocab)
        top, flat = total.topk(2 * beam_size, dim=1)  # spare candidates replace finished ones
        beam_idx, token = flat // vocab, flat % vocab
        new_ids, new_scores = [], torch.full((batch, beam_size), float("-inf"), device=device)
        for b in range(batch):
            kept = 0
            for cand in range(2 * beam_size):
                score, k, tok = top[b, cand].item(), beam_idx[b, cand].item(), token[b, cand].item()
                if score == float("-inf"):
                    break
                seq = torch.cat([ids[b * beam_size + k], ids.new_tensor([tok])])
                if tok == spec.eos_token_id:
                    normalised = score / step ** length_penalty
                    if normalised > best[b][0]:
                        best[b] = (normalised, seq[1:])
                    continue
                new_ids.append(seq)
                new_scores[b, kept] = score
                kept += 1
                if kept == beam_size:
                    break
            while kept < beam_size:  # pad with dead beams so tensor shapes stay fixed
                new_ids.append(torch.cat([ids[b * beam_size], ids.new_tensor([spec.pad_token_id])]))
                kept += 1
        ids, scores = torch.stack(new_ids), new_scores
        # Stop once every image has a finished hypothesis at least as good as its best live
        # beam normalised at the current length (the heuristic of HF's early_stopping=False).
        alive_best = scores.max(dim=1).values / step ** length_penalty
        if all(best[b][0] >= alive_best[b].item() for b in range(batch)):
            break
    out = []
    for b in range(batch):
        seq = best[b][1]
        if seq is None:  # nothing finished: take the best live beam
            seq = ids[b * beam_size + scores[b].argmax().item()][1:]
        out.append(seq)
    width = max(len(s) for s in out)
    padded = torch.full((batch, width), spec.pad_token_id, dtype=torch.long, device=device)
    for b, seq in enumerate(out):
        padded[b, : len(seq)] = seq
    return padded
