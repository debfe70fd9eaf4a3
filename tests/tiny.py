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


def task_collator(tok, vocab=None, max_length: int = 12, *, normalizer=None, train=None,
                  sets: tuple[str, ...] = (), spec: ModelSpec | None = None,
                  text_tokenizer=None, chat=None):
    """A training collator: label rows plus every task's part (the table's), with the task
    options of ``sets`` (``--set`` overrides); ``train`` the training records (a SplitData)
    or None as for validation batches."""
    from tuwen.data.dataset import Collator, TextTools
    from tuwen.data.text import TextNormalizer
    from tuwen.tasks.table import load_run_config, part_collates

    tools = TextTools(tok, text_tokenizer or tok, normalizer or TextNormalizer(), max_length,
                      chat, vocab)
    config = load_run_config(None, list(sets))
    return Collator(tools, part_collates(tools, config, spec or tiny_spec(), train))


def as_batch(fields: dict):
    """A typed ``Batch`` from the flat tensors a test writes out by hand (the names the batch
    dataclasses document: caption rows, decoder rows, question rows, VQA targets ...)."""
    from tuwen.data.batch import Batch, CaptionRows, QuestionRows
    from tuwen.tasks.captioning import DecoderRows
    from tuwen.tasks.itc import CaptionWeights
    from tuwen.tasks.itm import SwappedCaptions
    from tuwen.tasks.vqa import AnswerTargets

    f = dict(fields)
    px = f.pop("pixel_values")
    batch = Batch(px, len(px))
    if "caption_image" in f:
        batch.captions = CaptionRows(f.pop("caption_image"), f.pop("caption_first"),
                                     f.pop("caption_input_ids"), f.pop("caption_attention_mask"))
    if "decoder_input_ids" in f:
        batch.parts["caption"] = DecoderRows(f.pop("decoder_input_ids"), f.pop("labels"))
    if "caption_weight" in f:
        batch.parts["itc"] = CaptionWeights(f.pop("caption_weight"))
    if "swap_image" in f:
        batch.parts["itm"] = SwappedCaptions(f.pop("swap_image"), f.pop("swap_input_ids"),
                                             f.pop("swap_attention_mask"))
    if "question_image" in f:
        batch.questions = QuestionRows(f.pop("question_image"), f.pop("question_input_ids"),
                                       f.pop("question_attention_mask"))
    if {"vqa_targets", "answer_input_ids"} & set(f):
        batch.parts["vqa"] = AnswerTargets(f.pop("vqa_targets", None),
                                           f.pop("answer_input_ids", None),
                                           f.pop("answer_labels", None))
    assert not f, f"unknown batch fields {sorted(f)}"
    return batch
