"""The decoders' training loss with the LM head only where a label is set: equal, in fp32,
to the cross-entropy of every position's logits (the values and the gradients), chunked
over rows for wide vocabularies, and per task when several tasks' sequences share one
forward."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from tuwen.models.decoder import (
    IGNORE,
    CaptionDecoder,
    pack_by_image,
)
from tuwen.models.hf_decoder import HFCausalLMDecoder
from tuwen.models.losses import caption_loss, head_cross_entropy
from tuwen.models.token_reduction import PixelShuffle

VOCAB, HIDDEN, IMAGE_TOKENS = 97, 32, 16
LM_CONFIGS = {
    "llama": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "max_position_embeddings": 64},
    "gpt2": {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64},
}


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_head_cross_entropy_equals_the_full_logits_loss_in_chunks_and_gradients():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, 8, generator=g, requires_grad=True)
    head = torch.nn.Linear(8, VOCAB)
    targets = torch.randint(0, VOCAB, (23,), generator=g)
    for smoothing in (0.0, 0.1):
        expected = caption_loss(head(hidden)[None], targets[None], smoothing)
        grads = torch.autograd.grad(expected, [hidden, head.weight, head.bias])
        for chunk in (10 ** 6, 5 * VOCAB, VOCAB):  # one chunk; 5 rows; 1 row at a time
            got = head_cross_entropy(hidden, head.weight, targets, head.bias, smoothing, chunk)
            assert close(got, expected)
            for a, b in zip(torch.autograd.grad(got, [hidden, head.weight, head.bias]), grads):
                assert close(a, b)
    nothing = head_cross_entropy(hidden[:0], head.weight, targets[:0], head.bias)
    assert nothing.item() == 0.0 and nothing.requires_grad


def labels_for(ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """Next-token labels with the first ``prompt`` positions and the padding left out."""
    labels = torch.roll(ids, -1, dims=1)
    labels[:, :prompt] = IGNORE
    labels[:, -1] = IGNORE
    labels[1, 5:] = IGNORE  # the second row is shorter
    return labels


def hf_decoder(kind: str, conditioning: str, lora: bool = False,
               reduce: bool = False) -> HFCausalLMDecoder:
    torch.manual_seed(0)
    raw = dict(LM_CONFIGS[kind])
    config = AutoConfig.for_model(raw.pop("model_type"), vocab_size=VOCAB, bos_token_id=1,
                                  eos_token_id=2, **raw)
    config.add_cross_attention = conditioning == "cross_attention"
    lm = AutoModelForCausalLM.from_config(config)
    if lora:
        lm = get_peft_model(lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    return HFCausalLMDecoder(lm, HIDDEN, conditioning, "mlp", 40,
                             PixelShuffle(2) if reduce else None)


@pytest.mark.parametrize("kind,conditioning,lora,reduce", [
    ("llama", "prefix", False, False), ("llama", "prefix", True, True),
    ("gpt2", "prefix", False, False), ("gpt2", "cross_attention", False, False)])
def test_the_hf_decoders_loss_equals_the_full_logits_loss(kind, conditioning, lora, reduce):
    decoder = hf_decoder(kind, conditioning, lora, reduce).eval()  # GPT-2 has dropout
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 9), generator=g)
    image = torch.randn(3, IMAGE_TOKENS, HIDDEN, generator=g)
    labels = labels_for(ids, prompt=2)
    params = [p for p in decoder.parameters() if p.requires_grad]
    expected = caption_loss(decoder(ids, image).logits, labels)
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    got = decoder.loss(ids, image, labels)
    assert close(got, expected)
    for a, b in zip(torch.autograd.grad(got, params, allow_unused=True), expected_grads):
        assert (a is None and b is None) or close(a, b)
    smoothed = caption_loss(decoder(ids, image).logits, labels, 0.1)
    assert close(decoder.loss(ids, image, labels, label_smoothing=0.1), smoothed)


def test_an_lm_outside_the_plain_head_table_takes_every_positions_logits():
    decoder = hf_decoder("llama", "prefix")
    decoder.lm.config.model_type = "not_plain"  # as if its logits were soft-capped
    g = torch.Generator().manual_seed(1)
    ids, image = torch.randint(3, VOCAB, (3, 9), generator=g), torch.randn(3, 16, HIDDEN)
    labels = labels_for(ids, prompt=2)
    assert close(decoder.loss(ids, image, labels), caption_loss(decoder(ids, image).logits,
                                                                labels))


def test_the_small_decoders_loss_equals_the_full_logits_loss():
    torch.manual_seed(0)
    decoder = CaptionDecoder(VOCAB, 16, HIDDEN, layers=2, heads=2)
    g = torch.Generator().manual_seed(1)
    ids, image = torch.randint(3, VOCAB, (3, 9), generator=g), torch.randn(3, 5, HIDDEN)
    labels = labels_for(ids, prompt=1)
    assert close(decoder.loss(ids, image, labels),
                 caption_loss(decoder(ids, image).logits, labels))


@pytest.mark.parametrize("make", [
    lambda: hf_decoder("llama", "prefix"), lambda: hf_decoder("llama", "prefix", True, True),
    lambda: hf_decoder("gpt2", "prefix"), lambda: hf_decoder("gpt2", "cross_attention"),
    lambda: CaptionDecoder(VOCAB, 16, HIDDEN, layers=2, heads=2)])
def test_sequences_packed_one_row_per_image_give_each_tasks_own_loss(make):
    torch.manual_seed(0)
    decoder = make().eval()
    assert decoder.packs
    g = torch.Generator().manual_seed(2)
    captions = torch.randint(3, VOCAB, (3, 9), generator=g)
    answers = torch.randint(3, VOCAB, (4, 6), generator=g)
    caption_labels, answer_labels = labels_for(captions, 1), labels_for(answers, 3)
    image = torch.randn(4, IMAGE_TOKENS, HIDDEN, generator=g)
    caption_rows, answer_rows = torch.tensor([0, 1, 2]), torch.tensor([3, 1, 1, 0])
    packed = pack_by_image([(captions, caption_labels, caption_rows),
                            (answers, answer_labels, answer_rows)], pad_token_id=0)
    assert packed.image.tolist() == [0, 1, 2, 3]
    params = [p for p in decoder.parameters() if p.requires_grad]
    both = decoder.packed_loss(packed, image[packed.image], [0.1, 0.0])
    separate = [decoder.loss(captions, image[caption_rows], caption_labels, label_smoothing=0.1),
                decoder.loss(answers, image[answer_rows], answer_labels)]
    for joined, alone in zip(both, separate):
        assert close(joined, alone)
        for a, b in zip(torch.autograd.grad(joined, params, retain_graph=True, allow_unused=True),
                        torch.autograd.grad(alone, params, retain_graph=True, allow_unused=True)):
            assert (a is None and b is None) or close(a, b)


def test_under_cpu_bf16_autocast_the_lm_runs_eager_attention_and_matches_fp32():
    decoder = hf_decoder("llama", "prefix").eval()
    decoder.lm.set_attn_implementation("sdpa")  # PyTorch's fused kernel: slow in bf16 on CPUs
    seen = []
    layer = decoder.lm.model.layers[0].self_attn
    layer.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))
    g = torch.Generator().manual_seed(1)
    ids, image = torch.randint(3, VOCAB, (3, 9), generator=g), torch.randn(3, 16, HIDDEN)
    labels = labels_for(ids, prompt=2)
    full = decoder.loss(ids, image, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = decoder.loss(ids, image, labels)
    assert seen == ["sdpa", "eager"] and decoder.lm.config._attn_implementation == "sdpa"
    assert torch.allclose(half, full, atol=0.05)


def test_packed_sequences_under_cpu_bf16_autocast_run_eager_attention_and_match_fp32():
    decoder = hf_decoder("llama", "prefix").eval()
    decoder.lm.set_attn_implementation("sdpa")
    g = torch.Generator().manual_seed(1)
    ids, image = torch.randint(3, VOCAB, (3, 9), generator=g), torch.randn(2, 16, HIDDEN)
    packed = pack_by_image([(ids, labels_for(ids, prompt=2), torch.tensor([0, 1, 1]))], 0)
    full = decoder.packed_loss(packed, image[packed.image], [0.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = decoder.packed_loss(packed, image[packed.image], [0.0])
    assert decoder.lm.config._attn_implementation == "sdpa"
    assert torch.allclose(half, full, atol=0.05)
