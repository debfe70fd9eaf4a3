"""Generation: the KV cache changes nothing but speed; the strategies agree where they must."""

import math

import pytest
import torch
from torch import nn

from tiny import tiny_spec
from tuwen.config import load_config
from tuwen.errors import ConfigError
from tuwen.models.builder import init_weights
from tuwen.models.decoder import CaptionDecoder
from tuwen.models.generation import (
    beam_generate,
    generate,
    greedy_generate,
    top_p_filter,
    top_p_generate,
)
from tuwen.models.image_text_model import build_model
from tuwen.tasks import captioning


@pytest.fixture(scope="module")
def model():
    """A tiny model with a decoder of large random weights and an untied output layer
    leaning towards EOS. An untrained decoder at init repeats one token; this one writes
    sequences that differ by image, some ending at EOS and some running to the limit."""
    m = build_model(tiny_spec()).eval()
    torch.manual_seed(9)
    decoder = CaptionDecoder(vocab_size=50, max_length=16, dim=32, layers=1, heads=2).eval()
    with torch.no_grad():
        decoder.apply(init_weights)
        for p in decoder.parameters():
            p.mul_(10)
        decoder.lm_head = nn.Linear(32, 50)
        nn.init.normal_(decoder.lm_head.weight, std=1.0)
        nn.init.zeros_(decoder.lm_head.bias)
        decoder.lm_head.bias[m.spec.eos_token_id] = 4.0
    m.decoder = decoder
    return m


@pytest.fixture(scope="module")
def image_tokens():
    return 3 * torch.randn(5, 16, 32, generator=torch.Generator().manual_seed(1))


def until_eos(row, eos=5):
    return row[: row.index(eos) + 1] if eos in row else row


def test_incremental_decoding_matches_the_full_forward(model, image_tokens):
    ids = torch.randint(7, 50, (5, 9))
    mask = torch.ones(5, 9, dtype=torch.long)
    mask[:2, :3] = 0  # left padding, as batched prompts have
    full = model.decode(ids, image_tokens, attention_mask=mask).logits
    cache = model.decoder.new_cache()
    steps = [model.decode(ids[:, :4], image_tokens, attention_mask=mask[:, :4], cache=cache)]
    for t in range(4, 9):
        steps.append(model.decode(ids[:, t:t + 1], image_tokens, attention_mask=mask[:, :t + 1],
                                  cache=cache))
    assert cache.length == 9
    incremental = torch.cat([s.logits for s in steps], dim=1)
    assert torch.allclose(incremental[mask.bool()], full[mask.bool()], rtol=1e-4, atol=1e-3)


def test_left_padding_does_not_change_the_prediction(model, image_tokens):
    ids = torch.randint(7, 50, (1, 4))
    alone = model.decode(ids, image_tokens[:1]).logits[:, -1]
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    assert torch.allclose(model.decode(padded, image_tokens[:1], attention_mask=mask)
                          .logits[:, -1], alone, rtol=1e-4, atol=1e-3)


def test_cached_greedy_equals_uncached_token_for_token(model, image_tokens):
    cached = greedy_generate(model, image_tokens, 14)
    assert torch.equal(cached, greedy_generate(model, image_tokens, 14, use_cache=False))
    ended = (cached == model.spec.eos_token_id).any(dim=1)
    assert ended.any() and not ended.all()  # both ways of stopping are exercised
    assert len({tuple(r) for r in cached.tolist()}) == 5  # the images make a difference


def test_cached_beam_equals_uncached(model, image_tokens):
    cached = beam_generate(model, image_tokens, 12, beam_size=3)
    assert torch.equal(cached, beam_generate(model, image_tokens, 12, beam_size=3,
                                             use_cache=False))


def test_beam_of_one_equals_greedy(model, image_tokens):
    greedy = greedy_generate(model, image_tokens, 12).tolist()
    beam = beam_generate(model, image_tokens, 12, beam_size=1, length_penalty=0.7).tolist()
    assert [until_eos(g) for g in greedy] == [until_eos(b) for b in beam]


def test_beam_finds_sequences_at_least_as_likely_as_greedy(model, image_tokens):
    def log_prob(row_tokens, image):
        seq = until_eos(row_tokens)
        ids = torch.tensor([[model.spec.bos_token_id, *seq[:-1]]])
        logp = model.decode(ids, image).logits.log_softmax(-1)[0]
        return logp[torch.arange(len(seq)), torch.tensor(seq)].sum().item()

    greedy = greedy_generate(model, image_tokens, 12).tolist()
    beam = beam_generate(model, image_tokens, 12, beam_size=4, length_penalty=0.0).tolist()
    compared = 0
    for i, (g, b) in enumerate(zip(greedy, beam)):
        if 5 in g and 5 in b:  # both finished: compare total log-probabilities
            image = image_tokens[i: i + 1]
            assert log_prob(b, image) >= log_prob(g, image) - 1e-4
            compared += 1
    assert compared


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_batched_equals_one_by_one(model, image_tokens, decoding):
    batched = generate(model, image_tokens, decoding=decoding, max_new_tokens=10).tolist()
    for i, row in enumerate(batched):
        alone = generate(model, image_tokens[i: i + 1], decoding=decoding,
                         max_new_tokens=10)[0].tolist()
        assert until_eos(row) == until_eos(alone)


def test_batched_left_padded_prompts_equal_one_by_one(model, image_tokens):
    prompts = [[2, 11, 12, 3], [2, 13, 3], [2, 14, 15, 16, 17, 3]]
    width = max(map(len, prompts))
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    for decoding in ("greedy", "beam"):
        batched = generate(model, image_tokens[:3], decoding=decoding, max_new_tokens=8,
                           prompt_ids=ids, prompt_mask=mask).tolist()
        for i, p in enumerate(prompts):
            alone = generate(model, image_tokens[i: i + 1], decoding=decoding, max_new_tokens=8,
                             prompt_ids=torch.tensor([p])).tolist()[0]
            assert until_eos(batched[i]) == until_eos(alone), (decoding, i)


def test_top_p_filter_keeps_the_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = {p: torch.isfinite(top_p_filter(logits, p))[0].tolist() for p in (0.4, 0.75, 0.85, 1.0)}
    assert kept == {0.4: [True, False, False, False], 0.75: [True, True, False, False],
                    0.85: [True, True, True, False], 1.0: [True, True, True, True]}
    shuffled = logits[:, [2, 0, 3, 1]]  # order in the vocabulary does not matter
    assert torch.isfinite(top_p_filter(shuffled, 0.75))[0].tolist() == [False, True, False, True]
    probs = top_p_filter(logits, 0.75).softmax(-1)[0]
    assert math.isclose(probs[0].item(), 0.5 / 0.8, rel_tol=1e-5)


def test_top_p_near_zero_is_greedy_and_sampling_is_seeded(model, image_tokens):
    greedy = greedy_generate(model, image_tokens, 10)
    assert torch.equal(top_p_generate(model, image_tokens, 10, top_p=1e-6,
                                      generator=torch.Generator().manual_seed(0)), greedy)

    def sample(seed):
        return top_p_generate(model, image_tokens, 10, top_p=1.0, temperature=2.0,
                              generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))
    with pytest.raises(ValueError, match="top_p"):
        top_p_generate(model, image_tokens, 10, top_p=0.0)


def test_captioning_predict_step_passes_the_options(model):
    px = torch.randn(2, 3, 32, 32)
    greedy = captioning.predict_step(model, px, decoding="greedy", max_new_tokens=6)
    nucleus = captioning.predict_step(model, px, decoding="top_p", max_new_tokens=6, top_p=1e-6)
    assert torch.equal(greedy, nucleus)


def test_eval_decoding_config():
    cfg = load_config(None, ["eval.decoding=top_p", "eval.top_p=0.8", "eval.temperature=0.7"])
    assert (cfg.eval.decoding, cfg.eval.top_p, cfg.eval.temperature) == ("top_p", 0.8, 0.7)
    with pytest.raises(ConfigError, match=r"eval\.top_p"):
        load_config(None, ["eval.top_p=1.5"])
    with pytest.raises(ConfigError, match=r"eval\.decoding"):
        load_config(None, ["eval.decoding=sample"])


@pytest.mark.parametrize("decoding", ["greedy", "beam", "top_p"])
def test_pad_and_bos_are_never_generated(model, image_tokens, decoding):
    """A barely trained decoder may rank [BOS] first everywhere (a 4-step shapes model
    wrote nothing but [BOS]); generation skips [PAD] and [BOS], which are never labels."""
    spec = model.spec
    bias = model.decoder.lm_head.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias[spec.bos_token_id] = 50.0
        bias[spec.pad_token_id] = 40.0
    try:
        out = generate(model, image_tokens, decoding=decoding, max_new_tokens=6, beam_size=2)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert out.shape[1] > 0
    first = out[:, 0].tolist()  # the first token is always generated, never padding
    assert spec.bos_token_id not in out.tolist()[0] and spec.pad_token_id not in first
    for row in out.tolist():
        body = until_eos(row, spec.eos_token_id)
        assert spec.bos_token_id not in body and spec.pad_token_id not in body
