"""A decoder trained from scratch beside a named text tower gets its own WordPiece, trained
on the training captions; the text tower keeps BERT's. Both are saved with the model and
reloaded by the pipeline, evaluation and attention maps."""


from hf_tiny import WORDS, save_bert
from tiny import tiny_overrides
from tuwen.apps.pipeline import Pipeline
from tuwen.config import load_config
from tuwen.tasks.saved_model import load
from tuwen.training.loop import train


def _run(tiny_shapes, tmp_path, *extra):
    bert = save_bert(tmp_path / "bert")
    sets = tiny_overrides(tiny_shapes, max_steps=2) + [
        "model.text_encoder.type=hf", f"model.text_encoder.name_or_path={bert}",
        "train.tasks.vqa=0", *extra]
    return train(load_config(None, sets), tmp_path / "run", show_progress=False).model_dir


def test_a_scratch_decoder_beside_bert_writes_in_its_own_wordpiece(tiny_shapes, tmp_path):
    model_dir = _run(tiny_shapes, tmp_path)
    loaded = load(model_dir)
    own, bert = loaded.tokenizer, loaded.text_tokenizer
    assert bert is not None and len(bert) == len(WORDS)  # the text tower's, for ITC/ITM
    assert len(own) != len(WORDS) and "purple" in own.get_vocab()  # a shapes caption word
    assert "purple" not in bert.get_vocab()
    assert loaded.model.spec.vocab_size == len(own)  # the decoder's softmax is its width
    assert loaded.model.spec.text_vocab_size == len(WORDS)
    assert loaded.model.decoder.lm_head.out_features == len(own)
    pipe = Pipeline.from_pretrained(model_dir, device="cpu")
    assert len(pipe.tokenizer) == len(own) and len(pipe.text_tokenizer) == len(WORDS)
    image = next((tiny_shapes / "images").glob("*.png"))
    caption = pipe.caption([image], decoding="greedy", max_length=6)[0]
    ids = pipe.tokenizer(caption)["input_ids"]
    assert all(i < len(own) for i in ids)


def test_share_text_encoder_keeps_the_old_single_tokenizer(tiny_shapes, tmp_path):
    model_dir = _run(tiny_shapes, tmp_path, "data.tokenizer.share_text_encoder=true")
    loaded = load(model_dir)
    assert loaded.text_tokenizer is None and len(loaded.tokenizer) == len(WORDS)
