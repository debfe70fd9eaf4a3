"""Evaluate a model on one split: generate, embed, answer, then score with the standard metrics.

Writes ``metrics.json`` (keys as in DESIGN.md §4, plus the protocol used) and
``predictions.jsonl`` (one line per caption, retrieval query image and question).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tuwen.config import EvalConfig, load_config
from tuwen.data.answers import AnswerVocab
from tuwen.data.images import ImageTransform, load_image
from tuwen.data.prepare import SplitData, read_split
from tuwen.data.text import TextNormalizer
from tuwen.data.tokenizer import decode_text, load_text_tokenizer, load_tokenizer
from tuwen.data.vqa_text import left_padded_prompts
from tuwen.errors import DataError
from tuwen.evaluation.caption_metrics import caption_scores
from tuwen.evaluation.grounding import Scenes, load_scenes, relation_grounding, scene_rows
from tuwen.evaluation.protocol import (
    GROUNDING_PROTOCOL,
    RETRIEVAL_PROTOCOL,
    VQA_PROTOCOL,
    base_protocol,
    count_histogram,
    decoding_settings,
    ids_sha256,
    references_per_image,
)
from tuwen.evaluation.report import write_report
from tuwen.evaluation.retrieval_metrics import retrieval_recall
from tuwen.evaluation.vqa_accuracy import vqa_accuracy
from tuwen.models.image_text_model import ImageTextModel
from tuwen.models.text_encoders import TextFeatures
from tuwen.tasks import captioning, retrieval, vqa


@dataclass
class LoadedImages:
    paths: list[Path]
    ids: list[int | str]
    pixels: torch.Tensor            # (N, 3, H, W)
    row: dict[Path, int]            # image path -> row in pixels
    skipped: list[str]


def load_images(paths: Sequence[Path], ids: Sequence, transform: ImageTransform,
                show_progress: bool = True) -> LoadedImages:
    kept_paths, kept_ids, tensors, skipped = [], [], [], []
    for path, image_id in tqdm(list(zip(paths, ids)), desc="load images",
                               disable=not show_progress, leave=False):
        try:
            tensors.append(transform(load_image(path, transform.min_side)))
        except DataError as err:
            skipped.append(str(err))
            continue
        kept_paths.append(path)
        kept_ids.append(image_id)
    pixels = torch.stack(tensors) if tensors else torch.empty(0)
    return LoadedImages(kept_paths, kept_ids, pixels, {p: i for i, p in enumerate(kept_paths)},
                        skipped)


def _batches(n: int, size: int, desc: str, show: bool):
    return tqdm(range(0, n, size), desc=desc, disable=not show, leave=False)


def _device(model: ImageTextModel) -> torch.device:
    return next(model.parameters()).device


def generate_captions(model: ImageTextModel, tokenizer, images: LoadedImages, cfg: EvalConfig,
                      decoding: str, show: bool = True) -> list[str]:
    out: list[str] = []
    sampler = torch.Generator(_device(model)).manual_seed(cfg.seed)  # decoding=top_p only
    for start in _batches(len(images.paths), cfg.batch_size, f"caption ({decoding})", show):
        px = images.pixels[start: start + cfg.batch_size].to(_device(model))
        ids = captioning.predict_step(model, px, decoding=decoding,
                                      max_new_tokens=cfg.max_new_tokens,
                                      beam_size=cfg.beam_size, length_penalty=cfg.length_penalty,
                                      top_p=cfg.top_p, temperature=cfg.temperature,
                                      generator=sampler)
        out.extend(decode_text(tokenizer, _until_eos(row, model.spec.eos_token_id))
                   for row in ids.tolist())
    return out


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


@dataclass
class RetrievalFeatures:
    image_embeds: torch.Tensor   # (N_img, E) unit-norm ITC space
    image_tokens: torch.Tensor   # (N_img, N_patch, D) for ITM re-ranking
    text_embeds: torch.Tensor    # (N_txt, E)
    text: TextFeatures           # (N_txt, L, D), one padding for all texts

    def similarity(self) -> np.ndarray:
        return (self.image_embeds @ self.text_embeds.t()).numpy()


def retrieval_features(model: ImageTextModel, tokenizer, images: LoadedImages, texts: list[str],
                       cfg: EvalConfig, max_length: int, show: bool = True) -> RetrievalFeatures:
    device = _device(model)
    image_embeds, image_tokens, text_embeds, text_tokens, text_pooled = [], [], [], [], []
    for start in _batches(len(images.paths), cfg.batch_size, "embed images", show):
        feats = retrieval.embed_images(model, images.pixels[start: start + cfg.batch_size]
                                       .to(device))
        image_embeds.append(model.itc_head.embed_image(feats.pooled).float().cpu())
        image_tokens.append(feats.tokens.cpu())
    normalize = TextNormalizer.from_config(model.spec.text)  # as the model was trained
    enc = tokenizer([normalize.retrieval(t) for t in texts], padding="longest",
                    truncation=True, max_length=max_length, return_tensors="pt")
    for start in _batches(len(texts), cfg.batch_size, "embed texts", show):
        chunk = slice(start, start + cfg.batch_size)
        emb, feats = retrieval.embed_texts(model, enc["input_ids"][chunk].to(device),
                                           enc["attention_mask"][chunk].to(device))
        text_embeds.append(emb.float().cpu())
        text_tokens.append(feats.tokens.cpu())
        text_pooled.append(feats.pooled.cpu())
    text = TextFeatures(torch.cat(text_tokens), torch.cat(text_pooled), enc["attention_mask"])
    return RetrievalFeatures(torch.cat(image_embeds), torch.cat(image_tokens),
                             torch.cat(text_embeds), text)


def itm_rerank(model: ImageTextModel, feats: RetrievalFeatures, sim: np.ndarray, k: int,
               direction: str, batch_size: int, show: bool = True) -> np.ndarray:
    """BLIP's protocol: the ITC top-k of each query are re-scored by ITM probability + ITC
    similarity; everything outside the top-k ranks below them."""
    device = _device(model)
    scores = np.full_like(sim, -100.0)
    if direction == "i2t":
        cand = np.argsort(-sim, axis=1, kind="stable")[:, :k]           # (N_img, k) texts
        img_idx, txt_idx = np.repeat(np.arange(sim.shape[0]), cand.shape[1]), cand.ravel()
    else:
        cand = np.argsort(-sim, axis=0, kind="stable")[:k, :]           # (k, N_txt) images
        img_idx, txt_idx = cand.T.ravel(), np.repeat(np.arange(sim.shape[1]), cand.shape[0])
    probs = []
    for start in _batches(len(img_idx), batch_size, f"itm rerank {direction}", show):
        i = torch.from_numpy(img_idx[start: start + batch_size])
        t = torch.from_numpy(txt_idx[start: start + batch_size])
        text = TextFeatures(feats.text.tokens[t].to(device), feats.text.pooled[t].to(device),
                            feats.text.attention_mask[t].to(device))
        probs.append(retrieval.match_scores(model, text, feats.image_tokens[i].to(device))
                     .float().cpu())
    scores[img_idx, txt_idx] = torch.cat(probs).numpy() + sim[img_idx, txt_idx]
    return scores


def answer_questions(model: ImageTextModel, tokenizer, vocab: AnswerVocab, images: LoadedImages,
                     questions: list, cfg: EvalConfig, max_length: int,
                     show: bool = True, text_tokenizer=None) -> list[str]:
    """Generated answers (prompts in ``tokenizer``, the decoder's) or classified ones
    (questions in ``text_tokenizer``, the text encoder's own when it has one)."""
    device = _device(model)
    text_tok = text_tokenizer or tokenizer
    normalize = TextNormalizer.from_config(model.spec.text)  # as the model was trained
    answers: list[str] = []
    for start in _batches(len(questions), cfg.batch_size, "vqa", show):
        chunk = questions[start: start + cfg.batch_size]
        texts = [normalize(q.question) for q in chunk]
        px = images.pixels[[images.row[q.image_path] for q in chunk]].to(device)
        if vqa.generates_answers(model):  # model.vqa.mode: generate
            ids, mask = left_padded_prompts(tokenizer, texts, max_length)
            out = vqa.generate_answers(model, px, ids.to(device), mask.to(device))
            answers.extend(decode_text(tokenizer, _until_eos(row, model.spec.eos_token_id))
                           for row in out.tolist())
            continue
        enc = text_tok(texts, padding="longest", truncation=True,
                       max_length=max_length, return_tensors="pt")
        pred = vqa.predict_step(model, px, enc["input_ids"].to(device),
                                enc["attention_mask"].to(device))
        answers.extend(vocab.answer(i) for i in pred.tolist())
    return answers


def _vqa_records(questions: list) -> tuple[list[dict], list[dict]]:
    qs = [{"question_id": q.question_id, "image_id": q.image_id, "question": q.question}
          for q in questions]
    anns = [{"question_id": q.question_id, "image_id": q.image_id,
             "question_type": q.question_type, "answer_type": q.answer_type,
             "multiple_choice_answer": q.multiple_choice_answer,
             "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(q.answers)]}
            for q in questions]
    return qs, anns


def _evaluation_set(model: ImageTextModel, data: SplitData, cfg: EvalConfig,
                    show: bool) -> tuple[list, list, LoadedImages]:
    """The captioned images (at most ``eval.max_images``), their questions, and every image
    decoded once; images that fail to load are dropped with their texts (and counted)."""
    spec = model.spec
    captions = data.captions[: cfg.max_images] if cfg.max_images else data.captions
    paths = [r.image_path for r in captions]
    ids = [r.image_id for r in captions]
    allowed = set(paths) if cfg.max_images else None
    questions = [q for q in data.questions if allowed is None or q.image_path in allowed]
    known = set(paths)
    for q in questions:  # VQA-only images are loaded too
        if q.image_path not in known:
            known.add(q.image_path)
            paths.append(q.image_path)
            ids.append(q.image_id)
    transform = ImageTransform.for_model(spec)
    images = load_images(paths, ids, transform, show)
    return ([r for r in captions if r.image_path in images.row],
            [q for q in questions if q.image_path in images.row], images)


@torch.no_grad()
def evaluate_split(model: ImageTextModel, tokenizer, vocab: AnswerVocab | None, data: SplitData,
                   cfg: EvalConfig, out_dir: Path, max_length: int,
                   show_progress: bool = True,
                   scenes: Scenes | None = None, text_tokenizer=None) -> dict:
    """Every task of ``cfg.tasks`` on ``data`` -> ``out_dir/{metrics.json,predictions.jsonl}``.
    With ``scenes`` (shapes data: every image's objects) ``metrics["grounding"]`` says how much
    of the fusion's attention lands on the objects relative-position questions name.
    ``tokenizer`` is the decoder's; ``text_tokenizer`` the text encoder's own (None: the
    decoder's serves both)."""
    model.eval()
    text_tok = text_tokenizer or tokenizer
    captions, questions, images = _evaluation_set(model, data, cfg, show_progress)
    skipped = list(data.skipped) + images.skipped

    metrics: dict = {"split": data.split, "n_images": len(captions), "n_questions": len(questions),
                     "skipped": len(skipped)}
    protocol = base_protocol(data.split, source="tuwen eval", n_images=len(captions),
                             n_questions=len(questions))
    protocol.update(image_ids_sha256=ids_sha256([r.image_id for r in captions]),
                    question_ids_sha256=ids_sha256([q.question_id for q in questions]),
                    text_normalization=model.spec.text.model_dump(mode="json"))
    lines: list[dict] = []
    if "caption" in cfg.tasks and captions:
        _eval_captions(model, tokenizer, images, captions, cfg, metrics, protocol, lines,
                       show_progress)
    if "retrieval" in cfg.tasks and captions:
        _eval_retrieval(model, text_tok, images, captions, cfg, max_length, metrics, protocol,
                        lines, show_progress)
    if "vqa" in cfg.tasks and questions and vocab is not None:
        _eval_vqa(model, (tokenizer, text_tok), vocab, images, questions, cfg, max_length,
                  metrics, protocol, lines, show_progress)
    if scenes is not None and "vqa" in cfg.tasks and questions:
        _eval_grounding(model, text_tok, images, questions, scenes, max_length, metrics,
                        protocol, cfg.batch_size)
    metrics["protocol"] = protocol
    metrics["skipped_reasons"] = skipped[:20]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with (out_dir / "predictions.jsonl").open("w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return metrics


def _captioned(images: LoadedImages, captions: list) -> LoadedImages:
    """The loaded images of ``captions``, in their order."""
    paths = [r.image_path for r in captions]
    return LoadedImages(paths, [r.image_id for r in captions],
                        images.pixels[[images.row[p] for p in paths]],
                        {p: i for i, p in enumerate(paths)}, [])


def _eval_captions(model, tokenizer, images, captions, cfg, metrics, protocol, lines, show):
    refs = {r.image_id: list(r.captions) for r in captions}
    sub = _captioned(images, captions)
    decodings = [cfg.decoding] + (["greedy"] if cfg.decoding != "greedy" else [])
    for decoding in decodings:
        texts = generate_captions(model, tokenizer, sub, cfg, decoding, show)
        preds = dict(zip(sub.ids, texts))
        scores = caption_scores(preds, refs)
        key = "caption" if decoding == cfg.decoding else f"caption_{decoding}"
        metrics[key] = {k: scores[k] for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor",
                                               "rouge_l", "cider")}
        metrics[key]["distinct_captions"] = len(set(texts)) / max(len(texts), 1)
        protocol[key] = {**scores.get("protocol", {}), **decoding_settings(cfg, decoding),
                         "references_per_image": references_per_image(refs)}
        if key == "caption":
            per_image = scores.get("per_image", {})
            lines.extend({"task": "caption", "image_id": i, "image": _abs(path),
                          "caption": preds[i], "references": refs[i], **per_image.get(i, {})}
                         for i, path in zip(sub.ids, sub.paths))


def _eval_retrieval(model, tokenizer, images, captions, cfg, max_length, metrics, protocol,
                    lines, show):
    sub = _captioned(images, captions)
    texts = [c for r in captions for c in r.captions]
    owner = [i for i, r in enumerate(captions) for _ in r.captions]
    feats = retrieval_features(model, tokenizer, sub, texts, cfg, max_length, show)
    sim = feats.similarity()
    itc = retrieval_recall(sim, owner)
    result = itc
    protocol["retrieval"] = {**RETRIEVAL_PROTOCOL, "score": "itc cosine", "n_texts": len(texts),
                             "texts_per_image": count_histogram(len(r.captions) for r in captions)}
    i2t_scores = t2i_scores = sim
    if cfg.itm_rerank_k:
        k = cfg.itm_rerank_k
        i2t_scores = itm_rerank(model, feats, sim, k, "i2t", cfg.batch_size, show)
        t2i_scores = itm_rerank(model, feats, sim, k, "t2i", cfg.batch_size, show)
        i2t, t2i = retrieval_recall(i2t_scores, owner), retrieval_recall(t2i_scores, owner)
        result = {**{key: v for key, v in i2t.items() if key.startswith("i2t")},
                  **{key: v for key, v in t2i.items() if key.startswith("t2i")}}
        metrics["retrieval_itc"] = _summary(itc)
        protocol["retrieval"]["score"] = (f"itc cosine, top-{k} per query re-ranked by "
                                          "itm probability + itc (BLIP protocol)")
    metrics["retrieval"] = _summary(result)
    lines.extend(_retrieval_lines(captions, texts, owner, i2t_scores, t2i_scores, result))


def _abs(path) -> str:
    """Image paths in predictions.jsonl are absolute: the report may be drawn elsewhere."""
    return str(Path(path).absolute())


def _retrieval_lines(captions, texts, owner, i2t_scores, t2i_scores, result, k=5) -> list[dict]:
    """Per query (image, then caption): the 1-based rank of the right answer and the top k."""
    ids = [r.image_id for r in captions]
    top_texts = np.argsort(-i2t_scores, axis=1, kind="stable")[:, :k]     # (N_img, k)
    top_images = np.argsort(-t2i_scores, axis=0, kind="stable")[:k].T     # (N_txt, k)
    return [{"task": "retrieval", "direction": "i2t", "image_id": ids[i],
             "image": _abs(r.image_path), "i2t_rank": int(result["i2t_ranks"][i]) + 1,
             "top": [texts[j] for j in top_texts[i]],
             "top_right": [owner[j] == i for j in top_texts[i]]}
            for i, r in enumerate(captions)] + [
            {"task": "retrieval", "direction": "t2i", "query": text, "image_id": ids[owner[j]],
             "t2i_rank": int(result["t2i_ranks"][j]) + 1, "top": [ids[i] for i in top_images[j]]}
            for j, text in enumerate(texts)]


def _summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.endswith("_ranks")}


def _eval_vqa(model, tokenizers, vocab, images, questions, cfg, max_length, metrics, protocol,
              lines, show):
    lm_tok, text_tok = tokenizers
    answers = answer_questions(model, lm_tok, vocab, images, questions, cfg, max_length, show,
                               text_tokenizer=text_tok)
    qs, anns = _vqa_records(questions)
    preds = {q.question_id: a for q, a in zip(questions, answers)}
    result = vqa_accuracy(preds, qs, anns)
    metrics["vqa"] = {k: result[k] for k in ("accuracy", "by_answer_type", "by_question_type")}
    protocol["vqa"] = {**VQA_PROTOCOL,
                       "answers_per_question": count_histogram(len(q.answers) for q in questions),
                       "answering": ("generation, greedy (model.vqa.mode: generate)"
                                     if vqa.generates_answers(model)
                                     else "classification over the answer vocabulary"),
                       "answer_vocab_size": len(vocab),
                       "answer_vocab_coverage": vocab.coverage(
                           q.multiple_choice_answer for q in questions)}
    per_q = result.get("per_question", {})
    lines.extend({"task": "vqa", "question_id": q.question_id, "image_id": q.image_id,
                  "image": _abs(q.image_path),
                  "question": q.question, "question_type": q.question_type,
                  "answer_type": q.answer_type,
                  "answer": preds[q.question_id], "gt": q.multiple_choice_answer,
                  "accuracy": per_q.get(q.question_id)} for q in questions)


def _eval_grounding(model, tokenizer, images, questions, scenes, max_length, metrics, protocol,
                    batch_size):
    relative = [q for q in questions if q.question_type == "relative_position"]
    objects = scene_rows([q.image_id for q in relative], scenes.objects)
    if not relative or objects is None:
        return
    pixels = images.pixels[[images.row[q.image_path] for q in relative]]
    result = relation_grounding(model, tokenizer, pixels, [q.question for q in relative],
                                objects, max_length, batch_size, scenes.image_size)
    if result is not None:
        metrics["grounding"] = result
        protocol["grounding"] = GROUNDING_PROTOCOL


def evaluate_run(run_dir: str | Path, split: str, *, tasks: list[str] | None = None,
                 overrides: list[str] | None = None, show_progress: bool = True) -> dict:
    """Evaluate ``RUN/model`` on ``split`` of the run's own data config -> ``RUN/eval/<split>/``."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml", overrides)
    if tasks:
        config.eval.tasks = tasks
    model_dir = run_dir / "model"
    model = ImageTextModel.from_pretrained(model_dir)
    vocab_path = model_dir / "answer_vocab.json"
    vocab = AnswerVocab.load(vocab_path) if vocab_path.is_file() else None
    data = read_split(config.data, split)
    scenes = load_scenes(config.data.root)  # shapes data: the objects of every image
    metrics = evaluate_split(model, load_tokenizer(model_dir), vocab, data, config.eval,
                             run_dir / "eval" / split, config.data.max_text_length, show_progress,
                             scenes=scenes, text_tokenizer=load_text_tokenizer(model_dir))
    write_report(run_dir / "eval" / split, run_dir, show_progress=show_progress)
    return metrics
