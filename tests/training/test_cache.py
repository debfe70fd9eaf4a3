"""Frozen-feature cache: hit when nothing changed, miss when weights or pixels change."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tiny import tiny_overrides
from tuwen.config import load_config
from tuwen.errors import ConfigError
from tuwen.models.image_encoders import SmallViT
from tuwen.training.cache import FeatureCache
from tuwen.training.frozen import make_caches, with_frozen_caches
from tuwen.training.loop import train


def frozen_vit(seed=0):
    torch.manual_seed(seed)
    vit = SmallViT(32, 8, 32, 1, 2)
    vit.freeze()
    return vit


def pixels(n=5, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_second_pass_is_read_from_disk_and_equals_the_encoder(tmp_path):
    vit, px = frozen_vit(), pixels()
    expected = vit(px)
    cache = FeatureCache(vit, tmp_path, "fp32")
    first = vit(px)  # module.forward is the cached one now
    assert (cache.misses, cache.hits) == (5, 0)
    second = vit(px[[4, 0, 2]])
    assert (cache.misses, cache.hits) == (5, 3)
    torch.testing.assert_close(first.tokens, expected.tokens)
    torch.testing.assert_close(second.pooled, expected.pooled[[4, 0, 2]])
    assert second.grid == expected.grid and second.has_cls == expected.has_cls

    cache.close()  # a new run (new process): the files on disk are hit
    again = FeatureCache(vit, tmp_path, "fp32")
    out = vit(px)
    assert (again.misses, again.hits) == (0, 5)
    torch.testing.assert_close(out.tokens, expected.tokens)


def test_changed_weights_precision_or_pixels_miss(tmp_path):
    px = pixels()
    vit = frozen_vit()
    FeatureCache(vit, tmp_path, "fp32")
    vit(px)
    changed = frozen_vit()
    with torch.no_grad():
        changed.norm.weight[0] += 1e-3  # one weight of one layer
    cache = FeatureCache(changed, tmp_path, "fp32")
    changed(px)
    assert (cache.misses, cache.hits) == (5, 0)
    bf16 = FeatureCache(frozen_vit(), tmp_path, "bf16")
    bf16.module(px)
    assert bf16.misses == 5
    same = FeatureCache(frozen_vit(), tmp_path, "fp32")
    shifted = px.clone()
    shifted[0, 0, 0, 0] += 1e-6  # other image bytes or preprocessing: other pixels
    same.module(shifted)
    assert (same.misses, same.hits) == (1, 4)


def test_a_half_written_index_line_is_ignored(tmp_path):
    vit, px = frozen_vit(), pixels()
    cache = FeatureCache(vit, tmp_path, "fp32")
    vit(px)
    with (cache.store.dir / f"index-{cache.store.writer}.txt").open("a") as f:
        f.write("deadbeef 9")  # killed mid-line
    cache.close()
    again = FeatureCache(vit, tmp_path, "fp32")
    vit(px)
    assert again.hits == 5 and "deadbeef" not in again.store.index


def test_two_runs_sharing_the_folder_at_once_keep_their_rows_apart(tmp_path):
    """Two runs of rank 0 append to one cache folder in turns, each before seeing the
    other's rows: every key still reads its own image's features."""
    vit_a, vit_b = frozen_vit(), frozen_vit()
    px = pixels(6)
    expected = vit_a(px)
    a = FeatureCache(vit_a, tmp_path, "fp32")
    b = FeatureCache(vit_b, tmp_path, "fp32")
    vit_a(px[:3])
    # a race: b's look before it computes misses a's rows (its next look, after its own
    # append, sees everything)
    looks = iter([lambda: None])
    real = b.store.refresh
    b.store.refresh = lambda: next(looks, real)()
    vit_b(px[3:])
    del b.store.refresh
    a.close(), b.close()
    reader = FeatureCache(frozen_vit(), tmp_path, "fp32")
    out = reader.module(px)
    assert (reader.misses, reader.hits) == (0, 6)
    torch.testing.assert_close(out.tokens, expected.tokens)


def test_auto_caches_a_frozen_tower_and_turns_augmentation_off(tiny_shapes, caplog):
    base = tiny_overrides(tiny_shapes)
    plain = with_frozen_caches(load_config(None, base))
    assert plain.train.feature_cache is False and plain.data.augment is not None
    frozen = with_frozen_caches(load_config(None, base + ["model.image_encoder.freeze=true"]))
    assert frozen.train.feature_cache is True and frozen.data.augment is None
    assert "data.augment is off" in caplog.text
    text = with_frozen_caches(load_config(None, base + ["model.text_encoder.freeze=true"]))
    assert text.train.feature_cache is True and text.data.augment is not None  # pixels vary
    off = load_config(None, base + ["model.image_encoder.freeze=true",
                                    "train.feature_cache=false"])
    assert with_frozen_caches(off) == off
    with pytest.raises(ConfigError, match="needs a frozen tower"):
        with_frozen_caches(load_config(None, base + ["train.feature_cache=true"]))


def test_the_cache_needs_fixed_pixels(tiny_shapes, tmp_path):
    from tuwen.models.image_text_model import build_model
    from tuwen.training.assets import prepare_assets

    config = load_config(None, tiny_overrides(tiny_shapes) + [
        "model.image_encoder.freeze=true", "train.feature_cache=false"])
    model = build_model(prepare_assets(config, tmp_path / "m").spec)
    assert make_caches(config, model, tmp_path, 0) is None
    forced = config.model_copy(update={"train": config.train.model_copy(
        update={"feature_cache": True})})
    with pytest.raises(ConfigError, match="data.augment: null"):
        make_caches(forced, model, tmp_path, 0)


def _losses(run):
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").open())]


def _train_twice(tiny_shapes, tmp_path, frozen, log_every=1):
    sets = tiny_overrides(tiny_shapes, batch_size=16, max_steps=5, log_every=log_every) + [
        f"model.{tower}_encoder.freeze=true" for tower in frozen] + ["data.augment=null"]
    train(load_config(None, sets + ["train.feature_cache=false"]), tmp_path / "plain",
          show_progress=False)
    train(load_config(None, sets), tmp_path / "cached", show_progress=False)  # auto: cached
    return [json.loads(line) for line in (tmp_path / "cached" / "metrics.jsonl").open()]


def test_training_with_the_image_cache_is_bitwise_training_without(tiny_shapes, tmp_path,
                                                                   capsys):
    """Cached image features give exactly the losses and weights of the frozen tower run
    every step (4 batches an epoch: step 5 reads the second epoch from the cache)."""
    lines = _train_twice(tiny_shapes, tmp_path, ["image"], log_every=3)
    assert _losses(tmp_path / "cached") == _losses(tmp_path / "plain")
    index = (tmp_path / "cached" / "feature_cache").glob("*/index-0-*.txt")
    # each image computed once: 64 training images and the collapse check's 8 held-out ones
    assert len(next(index).read_text().splitlines()) == 64 + 8
    # the pass before training encodes every image: training only reads them
    assert sum(r["cache_misses"] for r in lines) == 0
    assert sum(r["cache_hits"] for r in lines) == 5 * 16
    assert [r["step"] for r in lines] == [3, 5]
    assert "cache_hits" not in (tmp_path / "plain" / "metrics.jsonl").read_text()
    out = capsys.readouterr().out
    assert "64 of 64 training images encoded before training" in out
    # steps 1-3 are logged in epoch 0, steps 4-5 (the epoch's last step, the next's first)
    # when epoch 1 has begun: that window counts for epoch 0
    assert "feature cache, epoch 0: images: 80 read from the cache, 0 computed" in out
    a = load_file(tmp_path / "plain" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cached" / "model" / "model.safetensors")
    for name in a:
        assert torch.equal(b[name], a[name]), name


def test_a_frozen_text_tower_is_cached_per_distinct_text(tiny_shapes, tmp_path, capsys):
    """One entry per distinct text, read again in later epochs. A text is stored as computed
    at the longest padding; the tower's own outputs differ by float rounding between
    paddings, so the losses agree to rounding, not bitwise."""
    lines = _train_twice(tiny_shapes, tmp_path, ["text"])
    assert "cache_hits" not in lines[0]  # the image tower trains: not cached
    assert sum(r["text_cache_misses"] for r in lines[:4]) > 0
    assert lines[4]["text_cache_hits"] > lines[4]["text_cache_misses"]
    entries = len(next((tmp_path / "cached" / "feature_cache").glob("text-*/index-0-*.txt"))
                  .read_text().splitlines())
    assert entries == sum(r["text_cache_misses"] for r in lines)
    assert "feature cache, epoch 0: texts:" in capsys.readouterr().out
    cached, plain = _losses(tmp_path / "cached"), _losses(tmp_path / "plain")
    assert [s for s, _ in cached] == [s for s, _ in plain]
    torch.testing.assert_close([x for _, x in cached], [x for _, x in plain],
                               rtol=1e-5, atol=1e-5)


def test_a_frozen_dinov2_tower_is_served_by_the_cache(tmp_path):
    """DINOv2 interpolates its position embeddings without being asked (no
    interpolate_pos_encoding argument): its body's outputs are cached like any other."""
    from hf_tiny import SMALL, hf_spec
    from tuwen.models.image_text_model import build_model
    from tuwen.training.cache import frozen_body

    dino = {"model_type": "dinov2", "image_size": 518, "patch_size": 8, **SMALL}
    torch.manual_seed(0)
    model = build_model(hf_spec(image={"type": "hf", "hf_config": dino, "freeze": True})).eval()
    px = pixels()
    with torch.no_grad():
        expected = model.encode_image(px)
        cache = FeatureCache(frozen_body(model), tmp_path, "fp32")
        first, second = model.encode_image(px), model.encode_image(px)
    assert cache.take_counts() == {"cache_hits": 5, "cache_misses": 5}
    assert cache.take_counts() == {"cache_hits": 0, "cache_misses": 0}
    for out in (first, second):
        assert out.grid == expected.grid == (4, 4) and out.has_cls
        torch.testing.assert_close(out.tokens, expected.tokens, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.pooled, expected.pooled, rtol=1e-5, atol=1e-5)
