from pathlib import Path

import numpy as np
import pytest
import torch

from tuwen.config import EvalConfig
from tuwen.data.records import ImageCaptions
from tuwen.data.tokenizer import train_tokenizer
from tuwen.evaluation.evaluate import assemble_metrics
from tuwen.models.text_encoders import TextFeatures
from tuwen.tasks.base import Evaluation, TaskResult
from tuwen.tasks.eval_set import EvalSet, LoadedImages
from tuwen.tasks.itc import evaluate_retrieval
from tuwen.tasks.metrics.retrieval_metrics import retrieval_recall
from tuwen.tasks.retrieval import (
    RetrievalFeatures,
    itm_rerank,
    match_scores,
    retrieval_features,
    tokenize_texts,
)


def features(model, n_img=5, n_txt=7):
    torch.manual_seed(0)
    image = model.encode_image(torch.randn(n_img, 3, 32, 32))
    ids = torch.randint(7, 50, (n_txt, 6))
    text = model.encode_text(ids, torch.ones_like(ids))
    return RetrievalFeatures(model.itc_head.embed_image(image.pooled), image.tokens,
                             model.itc_head.embed_text(text.pooled),
                             TextFeatures(text.tokens, text.pooled, text.attention_mask))


@torch.no_grad()
def test_itm_rerank_rescores_only_the_itc_top_k(tiny_model):
    feats = features(tiny_model)
    sim = feats.similarity()
    scores = itm_rerank(tiny_model, feats, sim, k=3, direction="i2t", batch_size=4)
    assert ((scores > -50).sum(axis=1) == 3).all()
    top3 = np.argsort(-sim, axis=1)[:, :3]
    for i, cols in enumerate(top3):
        assert set(np.flatnonzero(scores[i] > -50)) == set(cols)
        # each re-ranked score is the ITM probability of that pair plus its ITC similarity
        j = cols[0]
        text = TextFeatures(feats.text.tokens[[j]], feats.text.pooled[[j]],
                            feats.text.attention_mask[[j]])
        prob = match_scores(tiny_model, text, feats.image_tokens[[i]]).item()
        assert np.isclose(scores[i, j], prob + sim[i, j], atol=1e-5)
    t2i = itm_rerank(tiny_model, feats, sim, k=2, direction="t2i", batch_size=4)
    assert ((t2i > -50).sum(axis=0) == 2).all()


def eval_set(n_images=4) -> EvalSet:
    paths = [Path(f"/shapes/{i}.png") for i in range(n_images)]
    captions = [ImageCaptions(i, paths[i], "test", (f"a {c} circle", f"a {c} square"))
                for i, c in enumerate(["red", "blue", "green", "red"][:n_images])]
    pixels = torch.randn(n_images, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    images = LoadedImages(paths, list(range(n_images)), pixels,
                          {p: i for i, p in enumerate(paths)}, [])
    return EvalSet("test", captions, [], images, ["bad.png: not an image"])


@pytest.mark.parametrize("rerank_k", [0, 2])
def test_retrieval_evaluator_returns_its_metrics_protocol_and_lines(tiny_model, rerank_k):
    data = eval_set()
    texts = [c for r in data.captions for c in r.captions]
    tokenizer = train_tokenizer(texts, vocab_size=40)
    ev = Evaluation(tiny_model, tokenizer, None, EvalConfig(batch_size=3, itm_rerank_k=rerank_k),
                    max_length=16, show_progress=False)
    result = evaluate_retrieval(ev, data)
    ids, mask = tokenize_texts(tiny_model, tokenizer, texts, 16)
    itc = retrieval_recall(retrieval_features(tiny_model, data.images.pixels, ids, mask)
                           .similarity(), [i for i in range(4) for _ in range(2)])
    assert list(result.metrics) == (["retrieval_itc", "retrieval"] if rerank_k else ["retrieval"])
    assert result.metrics["retrieval_itc" if rerank_k else "retrieval"] == {
        k: v for k, v in itc.items() if not k.endswith("_ranks")}
    assert list(result.protocol) == ["retrieval"]
    assert result.protocol["retrieval"]["n_texts"] == 8
    assert ("re-ranked" in result.protocol["retrieval"]["score"]) == bool(rerank_k)
    i2t = [line for line in result.predictions if line["direction"] == "i2t"]
    t2i = [line for line in result.predictions if line["direction"] == "t2i"]
    assert len(i2t) == 4 and len(t2i) == 8
    assert [line["query"] for line in t2i] == texts


def test_the_caller_assembles_metrics_in_the_files_order():
    data = eval_set(2)
    results = [TaskResult({"caption": {"cider": 1.0}, "caption_greedy": {"cider": 0.5}},
                          {"caption": {"decoding": "beam"}, "caption_greedy": {}},
                          [{"task": "caption"}]),
               TaskResult({"vqa": {"accuracy": 50.0}}, {"vqa": {"formula": "x"}})]
    metrics = assemble_metrics(data, results, {"lowercase": True})
    assert list(metrics) == ["split", "n_images", "n_questions", "skipped", "caption",
                             "caption_greedy", "vqa", "protocol", "skipped_reasons"]
    assert (metrics["n_images"], metrics["n_questions"], metrics["skipped"]) == (2, 0, 1)
    assert list(metrics["protocol"])[-4:] == ["text_normalization", "caption", "caption_greedy",
                                              "vqa"]
    assert metrics["protocol"]["text_normalization"] == {"lowercase": True}
    assert metrics["skipped_reasons"] == ["bad.png: not an image"]
    assert results[0].metrics == {"caption": {"cider": 1.0}, "caption_greedy": {"cider": 0.5}}
