"""Tiny models and batches shared by the tests (hidden 32, 32-px images)."""


from tuwen.config import ModelConfig
from tuwen.models.spec import ModelSpec


def tiny_spec(**model_overrides) -> ModelSpec:
    fields = {"hidden_size": 32, "embed_dim": 16,
              "image_encoder": {"type": "small_vit", "patch_size": 8, "layers": 1, "heads": 2},
              "text_encoder": {"layers": 1, "heads": 2}, "fusion": {"layers": 2, "heads": 2},
              "decoder": {"layers": 1, "heads": 2}}
    model = ModelConfig(**{**fields, **model_overrides})
    return ModelSpec(model=model, vocab_size=50, num_answers=7, image_size=32, max_text_length=16)


def tiny_overrides(data_root, **train) -> list[str]:
    """``--set`` overrides for a seconds-long run on ``tiny_shapes``."""
    sets = [f"data.root={data_root}", "data.image_size=32", "data.tokenizer.vocab_size=200",
            "model.hidden_size=32", "model.embed_dim=16", "model.image_encoder.layers=1",
            "model.image_encoder.heads=2", "model.text_encoder.layers=1",
            "model.text_encoder.heads=2", "model.fusion.layers=1", "model.fusion.heads=2",
            "model.fusion.window=null",
            "model.decoder.layers=1", "model.decoder.heads=2", "train.batch_size=8",
            "train.max_steps=6", "train.log_every=2", "train.save_every=3",
            "train.warmup_steps=2", "eval.batch_size=16", "eval.max_new_tokens=12"]
    return sets + [f"train.{k}={v}" for k, v in train.items()]
