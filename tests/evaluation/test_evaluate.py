import numpy as np
import torch

from tuwen.models.text_encoders import TextFeatures
from tuwen.tasks.retrieval import RetrievalFeatures, itm_rerank, match_scores


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
