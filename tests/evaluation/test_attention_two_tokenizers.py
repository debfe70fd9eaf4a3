"""Attention maps of a model whose text encoder has its own tokenizer (HF BERT + a GPT-2 or
Llama LM): the fusion reads texts and questions in BERT's WordPiece and labels its maps with
it; the decoder's maps are labelled with the LM's tokens; the same through a saved folder,
``tuwen attention`` and ``Pipeline.explain``."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_tiny import save_bert, save_image_model, save_lm
from tuwen.apps.cli import main
from tuwen.apps.pipeline import Pipeline
from tuwen.evaluation.attention import attention_maps, select
from tuwen.models.image_text_model import ImageTextModel
from tuwen.tasks import vqa
from tuwen.tasks.saved_model import SavedModel, load

TEXT = "a red circle"
QUESTION = "what colour is the circle?"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """One saved two-tokenizer model per LM kind (generative VQA) and an image file."""
    root = tmp_path_factory.mktemp("two_tok")
    vit, bert = save_image_model("vit", root / "vit"), save_bert(root / "bert")
    out = {}
    for kind in ("gpt2", "llama"):
        torch.manual_seed(0)
        model = ImageTextModel.from_encoders(
            str(vit), str(bert), hidden_size=32, embed_dim=16, max_text_length=24,
            fusion={"type": "cross_attention", "layers": 1, "heads": 2}, num_answers=3,
            decoder={"type": "hf_causal_lm", "name_or_path": str(save_lm(kind, root / kind))},
            vqa={"mode": "generate"})
        model.eval().save_pretrained(root / f"model_{kind}")
        out[kind] = root / f"model_{kind}"
    Image.fromarray(np.full((40, 48, 3), 120, dtype=np.uint8)).save(root / "img.png")
    out["image"] = root / "img.png"
    return out


def pixels(loaded: SavedModel, image) -> torch.Tensor:
    return loaded.transform(Image.open(image).convert("RGB"))[None]


def expected_fusion_maps(loaded: SavedModel, px: torch.Tensor, text: str) -> np.ndarray:
    """The fusion run on BERT's ids by hand: [CLS] + words, [SEP] dropped."""
    model, bert = loaded.model, loaded.text_tokenizer
    enc = bert([text], return_tensors="pt")
    with torch.no_grad():
        image = model.encode_image(px)
        fused = model.fuse(model.encode_text(enc["input_ids"], enc["attention_mask"]),
                           image.tokens, output_attentions=True)
    return select(fused.attentions)[:-1].reshape(-1, *image.grid).numpy()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_fusion_reads_the_text_encoders_tokens_and_the_decoder_the_lms(saved, kind):
    loaded = load(saved[kind])
    bert, lm = loaded.text_tokenizer, loaded.tokenizer
    assert bert is not None and bert.get_vocab() != lm.get_vocab()
    px = pixels(loaded, saved["image"])

    fusion = attention_maps(loaded, px, text=TEXT, source="fusion")
    assert fusion.tokens == ["[CLS]", "a", "red", "circle"]
    assert np.allclose(fusion.maps, expected_fusion_maps(loaded, px, TEXT), atol=1e-6)

    decoder = attention_maps(loaded, px, text=TEXT, source="decoder")
    lm_ids = lm(TEXT, add_special_tokens=False)["input_ids"]
    assert decoder.tokens == lm.convert_ids_to_tokens(lm_ids)
    assert decoder.tokens != fusion.tokens[1:] and decoder.maps.shape[0] == len(lm_ids)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_question_is_read_in_bert_and_answered_by_the_lm(saved, kind):
    loaded = load(saved[kind])
    px = pixels(loaded, saved["image"])
    answered = attention_maps(loaded, px, question=QUESTION, source="fusion")
    assert answered.tokens == ["[CLS]", "what", "colour", "is", "the", "circle", "?"]
    assert np.allclose(answered.maps, expected_fusion_maps(loaded, px, QUESTION), atol=1e-6)
    expected = vqa.answer_questions(loaded.model, loaded.tokenizer, None, px, [0], [QUESTION],
                                    max_length=loaded.model.spec.max_text_length)[0]
    assert answered.answer == expected


def test_pipeline_explain_and_the_cli_use_both_tokenizers(saved, tmp_path, capsys):
    pipe = Pipeline.from_pretrained(saved["llama"], device="cpu")
    fusion = pipe.explain(saved["image"], TEXT, source="fusion")
    assert fusion.tokens == ["[CLS]", "a", "red", "circle"]
    decoder = pipe.explain(saved["image"], TEXT, source="decoder")
    lm_ids = pipe.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert decoder.tokens == pipe.tokenizer.convert_ids_to_tokens(lm_ids)
    asked = pipe.explain(saved["image"], source="fusion", question=QUESTION)
    assert asked.answer == pipe.answer([saved["image"]], [QUESTION])[0].text

    out = tmp_path / "att.png"
    for source in ("fusion", "decoder"):
        assert main(["attention", str(saved["llama"]), str(saved["image"]), "--text", TEXT,
                     "--source", source, "--out", str(out)]) == 0
        assert out.is_file()
    assert main(["attention", str(saved["llama"]), str(saved["image"]), "--question", QUESTION,
                 "--source", "fusion", "--out", str(out)]) == 0
    assert "[CLS]" not in capsys.readouterr().err
