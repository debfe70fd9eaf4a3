"""Text generation from the decoder: greedy, beam search, top-p sampling; batched, KV-cached.

Every strategy drives the decoder through a ``Stepper``. With ``use_cache=True`` (the
default) each step feeds the decoder only the tokens it has not seen, and the decoder keeps
the keys/values of earlier positions (``decoder.new_cache()``); without it, the whole
sequence is re-run every step (the reference the cache is tested against).

Generation starts from a prompt: ``[BOS]`` for captions (or an instruct LM's chat prompt
asking for one, ``caption_prompt``), or a batch of left-padded token rows (``prompt_ids`` +
``prompt_mask``), e.g. a question for generative VQA. Results are the generated ids only,
(B, T), padded with ``pad_token_id`` after EOS.
"""

from __future__ import annotations

import torch

from tuwen.models.image_text_model import ImageTextModel
from tuwen.models.spec import ModelSpec

DECODINGS = ("greedy", "beam", "top_p")


class Stepper:
    """The decoder one step at a time: ``logits()`` predicts the token after ``ids``;
    ``append`` and ``select`` keep ids, mask, image rows and cache in step."""

    def __init__(self, model: ImageTextModel, image_tokens: torch.Tensor, ids: torch.Tensor,
                 mask: torch.Tensor | None, use_cache: bool) -> None:
        self.model, self.image_tokens, self.ids, self.mask = model, image_tokens, ids, mask
        self.cache = model.decoder.new_cache() if use_cache else None
        self.fed = 0  # positions already in the cache
        # never written: [PAD] and [BOS] are no label (a barely trained decoder's favourite
        # token may be one; GPT-2 style vocabularies where BOS is EOS keep it)
        spec = model.spec
        self.banned = sorted({spec.pad_token_id, spec.bos_token_id} - {spec.eos_token_id})

    def logits(self) -> torch.Tensor:
        new = self.ids if self.cache is None else self.ids[:, self.fed:]
        out = self.model.decode(new, self.image_tokens, attention_mask=self.mask,
                                cache=self.cache)
        self.fed = self.ids.shape[1]
        logits = out.logits[:, -1].float()  # (B, V)
        logits[:, self.banned] = float("-inf")
        return logits

    def append(self, tokens: torch.Tensor) -> None:
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)

    def select(self, rows: torch.Tensor) -> None:
        self.ids, self.image_tokens = self.ids[rows], self.image_tokens[rows]
        if self.mask is not None:
            self.mask = self.mask[rows]
        if self.cache is not None:
            self.cache.reorder(rows)


def caption_prompt(spec: ModelSpec) -> list[int]:
    """Where a caption starts: [BOS], or the chat template's caption request (``spec.chat``),
    as training's decoder inputs start (data.dataset.Collator)."""
    return [spec.bos_token_id] if spec.chat is None else list(spec.chat.caption_prompt)


def _prompt(model: ImageTextModel, image_tokens: torch.Tensor, prompt_ids: torch.Tensor | None,
            prompt_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if prompt_ids is None:
        start = torch.tensor([caption_prompt(model.spec)], device=image_tokens.device)
        return start.repeat(image_tokens.shape[0], 1), None
    return prompt_ids, prompt_mask


def _room(model: ImageTextModel, max_new_tokens: int, prompt_length: int) -> int:
    return max(0, min(max_new_tokens, model.decoder.max_length - prompt_length))


def _step_loop(stepper: Stepper, model: ImageTextModel, max_new_tokens: int, pick) -> torch.Tensor:
    """Greedy and sampling: one token per row per step until every row has said EOS."""
    spec, start = model.spec, stepper.ids.shape[1]
    done = torch.zeros(stepper.ids.shape[0], dtype=torch.bool, device=stepper.ids.device)
    for _ in range(_room(model, max_new_tokens, start)):
        nxt = pick(stepper.logits())
        nxt = torch.where(done, torch.full_like(nxt, spec.pad_token_id), nxt)
        stepper.append(nxt)
        done |= nxt == spec.eos_token_id
        if done.all():
            break
    return stepper.ids[:, start:]


@torch.no_grad()
def greedy_generate(model: ImageTextModel, image_tokens: torch.Tensor, max_new_tokens: int, *,
                    prompt_ids: torch.Tensor | None = None,
                    prompt_mask: torch.Tensor | None = None,
                    use_cache: bool = True) -> torch.Tensor:
    """(B, N, D) image tokens -> (B, T) generated ids."""
    ids, mask = _prompt(model, image_tokens, prompt_ids, prompt_mask)
    stepper = Stepper(model, image_tokens, ids, mask, use_cache)
    return _step_loop(stepper, model, max_new_tokens, lambda logits: logits.argmax(dim=-1))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """(B, V) logits -> the same with -inf outside the nucleus: the fewest most likely
    tokens whose probability reaches ``top_p`` (the most likely token is always kept)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    outside = probs.cumsum(dim=-1) - probs >= top_p  # mass before this token already enough
    outside[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


@torch.no_grad()
def top_p_generate(model: ImageTextModel, image_tokens: torch.Tensor, max_new_tokens: int,
                   top_p: float = 0.9, temperature: float = 1.0, *,
                   generator: torch.Generator | None = None,
                   prompt_ids: torch.Tensor | None = None,
                   prompt_mask: torch.Tensor | None = None,
                   use_cache: bool = True) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020) at ``temperature``; ``generator`` seeds it."""
    if not 0 < top_p <= 1 or temperature <= 0:
        raise ValueError(f"need 0 < top_p <= 1 and temperature > 0, got {top_p}, {temperature}")

    def pick(logits: torch.Tensor) -> torch.Tensor:
        probs = top_p_filter(logits / temperature, top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    ids, mask = _prompt(model, image_tokens, prompt_ids, prompt_mask)
    return _step_loop(Stepper(model, image_tokens, ids, mask, use_cache), model, max_new_tokens,
                      pick)


def _repeat(x: torch.Tensor | None, k: int) -> torch.Tensor | None:
    return None if x is None else x.repeat_interleave(k, dim=0)


@torch.no_grad()
def beam_generate(model: ImageTextModel, image_tokens: torch.Tensor, max_new_tokens: int,
                  beam_size: int = 3, length_penalty: float = 1.0, *,
                  prompt_ids: torch.Tensor | None = None,
                  prompt_mask: torch.Tensor | None = None,
                  use_cache: bool = True) -> torch.Tensor:
    """Beam search; a finished hypothesis scores sum(log p) / length ** length_penalty."""
    ids, mask = _prompt(model, image_tokens, prompt_ids, prompt_mask)
    batch, k, start = ids.shape[0], beam_size, ids.shape[1]
    stepper = Stepper(model, _repeat(image_tokens, k), _repeat(ids, k), _repeat(mask, k),
                      use_cache)  # row b * k + j is beam j of input b
    scores = torch.zeros(batch, k, device=ids.device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one alive
    best: list[tuple[float, torch.Tensor | None]] = [(float("-inf"), None)] * batch
    done = [False] * batch
    for step in range(1, _room(model, max_new_tokens, start) + 1):
        logp = stepper.logits().log_softmax(dim=-1)  # (B*K, V)
        vocab = logp.shape[-1]
        total = (scores.view(-1, 1) + logp).view(batch, k * vocab)
        top, flat = total.topk(2 * k, dim=1)  # spare candidates replace finished ones
        rows, tokens, scores = _next_beams(model, stepper, best, done, top, flat // vocab,
                                           flat % vocab, step ** length_penalty, start, k)
        stepper.select(rows)
        stepper.append(tokens)
        # An input is done once its best finished hypothesis is at least as good as its best
        # live beam normalised at the current length (HF's early_stopping=False heuristic);
        # it then stays done, so its result does not depend on the rest of the batch.
        alive_best = (scores.max(dim=1).values / step ** length_penalty).tolist()
        done = [d or best[b][0] >= alive_best[b] for b, d in enumerate(done)]
        if all(done):
            break
    out = []
    for b in range(batch):
        seq = best[b][1]
        if seq is None:  # nothing finished: take the best live beam
            seq = stepper.ids[b * k + scores[b].argmax().item(), start:]
        out.append(seq)
    return _pad_rows(out, model.spec.pad_token_id, ids.device)


def _next_beams(model: ImageTextModel, stepper: Stepper, best: list, done: list[bool],
                top: torch.Tensor, beam: torch.Tensor, token: torch.Tensor, norm: float,
                start: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From each input's 2k best (beam, token) candidates: finished ones (EOS) update
    ``best``; the first k others become the new beams. Inputs already ``done`` get dead
    beams only. Returns, per new beam row, the row it continues, its token and its score."""
    spec = model.spec
    batch = top.shape[0]
    rows, tokens = [], []
    scores = torch.full((batch, k), float("-inf"), device=top.device)
    top_l, beam_l, token_l = top.tolist(), beam.tolist(), token.tolist()
    for b in range(batch):
        kept = 0
        for score, j, tok in zip(top_l[b], beam_l[b], token_l[b]):
            if done[b] or score == float("-inf") or kept == k:
                break
            row = b * k + j
            if tok == spec.eos_token_id:
                if score / norm > best[b][0]:
                    eos = stepper.ids.new_tensor([tok])
                    best[b] = (score / norm, torch.cat([stepper.ids[row, start:], eos]))
                continue
            rows.append(row)
            tokens.append(tok)
            scores[b, kept] = score
            kept += 1
        for _ in range(kept, k):  # dead beams keep tensor shapes fixed
            rows.append(b * k)
            tokens.append(spec.pad_token_id)
    device = stepper.ids.device
    return torch.tensor(rows, device=device), torch.tensor(tokens, device=device), scores


def _pad_rows(rows: list[torch.Tensor], pad: int, device: torch.device) -> torch.Tensor:
    width = max(len(r) for r in rows)
    padded = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded


@torch.no_grad()
def generate(model: ImageTextModel, image_tokens: torch.Tensor, *, decoding: str = "greedy",
             max_new_tokens: int = 30, beam_size: int = 3, length_penalty: float = 1.0,
             top_p: float = 0.9, temperature: float = 1.0,
             generator: torch.Generator | None = None, prompt_ids: torch.Tensor | None = None,
             prompt_mask: torch.Tensor | None = None, use_cache: bool = True) -> torch.Tensor:
    """One entry point for the strategies in ``DECODINGS``."""
    prompt = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "use_cache": use_cache}
    if decoding == "beam" and beam_size > 1:
        return beam_generate(model, image_tokens, max_new_tokens, beam_size, length_penalty,
                             **prompt)
    if decoding == "top_p":
        return top_p_generate(model, image_tokens, max_new_tokens, top_p, temperature,
                              generator=generator, **prompt)
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    return greedy_generate(model, image_tokens, max_new_tokens, **prompt)
