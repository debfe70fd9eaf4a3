"""`tuwen score` on result files: captions against pycocoevalcap itself, VQA against
hand-computed official accuracies, retrieval on a hand-built matrix; broken files; protocol."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tuwen import __version__
from tuwen.apps.cli import main
from tuwen.errors import DataError
from tuwen.evaluation.score import score_captions, score_retrieval, score_vqa
from tuwen.tasks.metrics.protocol import ids_sha256

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="java not on PATH")
CAPTION_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _score(tmp_path: Path, *args: str) -> dict:
    """Run ``tuwen score ...`` as a user does and read the metrics.json it writes."""
    out = tmp_path / "out" / "metrics.json"
    assert main(["score", *args, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _fails(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run ``tuwen score ...`` expecting the one-line error (exit code 2); return it."""
    capsys.readouterr()
    assert main(["score", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tuwen: error: ") and "\n" not in err, err
    return err


# --- captions -----------------------------------------------------------------------------

# image id -> reference captions; punctuation, case, a contraction and a hyphen on purpose
REFERENCES = {
    391895: ["A man with a red helmet on a small moped on a dirt road. ",
             "Man riding a motor bike on a dirt road on the countryside.",
             "A man riding on the back of a motorcycle.",
             "A dirt path with a young person on a motor bike rests to the foreground.",
             "A man in a red shirt and a red hat is on a motorcycle on a hill side."],
    522418: ["A woman wearing a net on her head cutting a cake. ",
             "A woman cutting a large white sheet cake.",
             "A woman wearing a hair net cutting a large sheet cake.",
             "there is a woman that is cutting a white cake",
             "A woman marking a cake with the back of a chef's knife. "],
    184613: ["A child holding a flowered umbrella and petting a yak.",
             "A young man holding an umbrella next to a herd of cattle.",
             "a young boy barefoot holding an umbrella touching the horn of a cow",
             "A young boy with an umbrella who is touching the horn of a cow.",
             "A boy holding an umbrella while standing next to livestock."],
    318219: ["A young boy standing in front of a computer keyboard.",
             "a little boy wearing headphones and looking at a computer monitor",
             "He is listening intently to the computer at school.",
             "A young boy stares up at the computer monitor.",
             "a young kid with head phones on using a computer "],
    554625: ["a boy wearing headphones using one computer in a long row of computers",
             "A little boy with earphones on listening to something.",
             "A group of people sitting at desk using computers.",
             "Children sitting at computer stations on a long table.",
             "A small child wearing headphones plays on the computer."],
}
RESULTS = [
    {"image_id": 522418, "caption": "a woman cutting a large white sheet cake"},
    {"image_id": 391895, "caption": "A man riding a motorcycle on a dirt road."},
    {"image_id": 184613, "caption": "a boy holding an umbrella next to a cow"},
    {"image_id": 318219, "caption": "a young boy using a computer with headphones"},
    {"image_id": 554625, "caption": "children sitting at computers in a row"},
]


def _coco_refs(references: dict) -> dict:
    images = [{"id": k, "file_name": f"COCO_val2014_{k:012d}.jpg", "height": 480, "width": 640}
              for k in references]
    annotations = [{"image_id": k, "id": 100 * k + j, "caption": c}
                   for j in range(5) for k, caps in references.items() for c in caps[j:j + 1]]
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations}


def _karpathy_refs(references: dict) -> dict:
    images = [{"filepath": "val2014", "filename": f"COCO_val2014_{k:012d}.jpg", "imgid": i,
               "cocoid": k, "split": "test",
               "sentences": [{"raw": c, "tokens": c.lower().split(), "imgid": i}
                             for c in caps]}
              for i, (k, caps) in enumerate(references.items())]
    images.append({"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg",
                   "imgid": 99, "cocoid": 9, "split": "train",
                   "sentences": [{"raw": "A plate of food.", "tokens": [], "imgid": 99}]})
    return {"dataset": "coco", "images": images}


@pytest.fixture(scope="module")
def caption_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("captions")
    return (_write(folder / "res.json", RESULTS),
            _write(folder / "captions_val2014.json", _coco_refs(REFERENCES)),
            _write(folder / "dataset_coco.json", _karpathy_refs(REFERENCES)))


@pytest.fixture(scope="module")
def java_metrics(caption_files, tmp_path_factory) -> dict:
    """``tuwen score captions`` with Java (PTBTokenizer and METEOR), run once: each METEOR
    start loads its paraphrase table for seconds."""
    if not HAS_JAVA:
        pytest.skip("java not on PATH")
    res, coco, _ = caption_files
    return _score(tmp_path_factory.mktemp("java"), "captions", "--predictions", str(res),
                  "--references", str(coco))


def _pycocoevalcap_directly(results: list[dict], gts_captions: dict) -> dict:
    """What COCOEvalCap.evaluate computes (minus SPICE), written out with pycocoevalcap."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ids = [r["image_id"] for r in results]
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in gts_captions[k]] for k in ids})
    res = tokenizer.tokenize({r["image_id"]: [{"caption": r["caption"]}] for r in results})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor, _ = Meteor().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return dict(zip(CAPTION_KEYS, [*bleu, meteor, rouge, cider]))


@needs_java
def test_captions_equal_pycocoevalcap_called_directly(caption_files, java_metrics):
    res, coco, _ = caption_files
    gts_captions: dict = {}
    for ann in json.loads(coco.read_text())["annotations"]:  # as pycocotools' COCO index
        gts_captions.setdefault(ann["image_id"], []).append(ann["caption"])
    expected = _pycocoevalcap_directly(json.loads(res.read_text()), gts_captions)
    for key in CAPTION_KEYS:
        assert java_metrics["caption"][key] == pytest.approx(expected[key], abs=1e-9), key
    assert 0 < expected["meteor"] < 1 and 0 < expected["cider"]
    protocol = java_metrics["protocol"]
    assert protocol["caption"]["tokenization"] == "ptb-java"
    assert protocol["caption"]["meteor"] == "meteor-1.5"
    assert protocol["references"]["format"] == "coco" and protocol["split"] is None


def test_karpathy_references_score_like_the_same_coco_references(caption_files, monkeypatch):
    monkeypatch.setenv("PATH", "")  # python tokenisation: fast, and the same on both sides
    res, coco, karpathy = caption_files
    from_coco, from_karpathy = score_captions(res, coco), score_captions(res, karpathy)
    assert from_karpathy["caption"] == from_coco["caption"]
    assert from_karpathy["split"] == from_karpathy["protocol"]["split"] == "test"
    assert from_karpathy["protocol"]["references"]["format"] == "karpathy"
    assert from_karpathy["protocol"]["image_ids_sha256"] == \
        from_coco["protocol"]["image_ids_sha256"]


def test_captions_without_java_report_meteor_as_null_with_the_reason(
        tmp_path, caption_files, monkeypatch):
    res, coco, _ = caption_files
    no_java = tmp_path / "bin"
    no_java.mkdir()
    monkeypatch.setenv("PATH", str(no_java))  # a PATH on which there is no java
    metrics = _score(tmp_path, "captions", "--predictions", str(res), "--references", str(coco))
    assert metrics["caption"]["meteor"] is None
    assert "java not found" in metrics["protocol"]["caption"]["meteor_unavailable"]
    assert metrics["protocol"]["caption"]["tokenization"] == "ptb-python"
    assert '"meteor": null' in (tmp_path / "out" / "metrics.json").read_text()
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider"):
        assert 0 < metrics["caption"][key] < 10


@needs_java
def test_python_tokenisation_gives_the_java_numbers_on_these_captions(
        caption_files, java_metrics, monkeypatch):
    monkeypatch.setenv("PATH", "")
    res, coco, _ = caption_files
    python = score_captions(res, coco)
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"):
        assert python["caption"][key] == pytest.approx(java_metrics["caption"][key], abs=1e-12)


def test_caption_protocol_record(caption_files, monkeypatch):
    monkeypatch.setenv("PATH", "")  # no java needed here
    res, coco, karpathy = caption_files
    metrics = score_captions(res, karpathy)
    protocol = metrics["protocol"]
    assert metrics["n_images"] == protocol["n_images"] == 5 and metrics["skipped"] == 0
    assert protocol["tuwen_version"] == __version__
    assert protocol["source"] == "tuwen score captions"
    assert protocol["image_ids_sha256"] == ids_sha256(REFERENCES)  # order-free, like tuwen eval
    assert protocol["image_ids_sha256"] == ids_sha256([str(k) for k in reversed(REFERENCES)])
    assert protocol["caption"]["references_per_image"] == {"5": 5}
    assert protocol["caption"]["decoding"].startswith("unknown")
    assert protocol["predictions"]["file"] == str(res)
    assert len(protocol["predictions"]["sha256"]) == 16
    assert protocol["reference_images_not_scored"] == 0


def test_reference_images_without_predictions_need_subset(tmp_path, caption_files, capsys,
                                                          monkeypatch):
    monkeypatch.setenv("PATH", "")
    res, _, _ = caption_files
    more = {**REFERENCES, 7: ["A dog on a couch.", "A brown dog sleeping on a sofa."]}
    coco = _write(tmp_path / "captions_more.json", _coco_refs(more))
    err = _fails(capsys, "captions", "--predictions", str(res), "--references", str(coco))
    assert "res.json" in err and "1 of 6 reference images" in err and "--subset" in err
    subset = _score(tmp_path, "captions", "--predictions", str(res), "--references", str(coco),
                    "--subset")
    exact = score_captions(res, _write(tmp_path / "captions_5.json", _coco_refs(REFERENCES)))
    # the unpredicted image is ignored entirely, CIDEr's document frequencies included
    assert subset["caption"] == exact["caption"]
    assert subset["protocol"]["reference_images_not_scored"] == 1


def test_prediction_for_an_unknown_image_names_the_record(tmp_path, caption_files, capsys):
    _, coco, karpathy = caption_files
    res = _write(tmp_path / "res_bad.json", RESULTS[:2] + [{"image_id": "184613", "caption": "x"}])
    err = _fails(capsys, "captions", "--predictions", str(res), "--references", str(coco))
    assert "res_bad.json, record 2, key 'image_id'" in err
    assert "the references have 184613" in err  # a string id against an integer one
    res = _write(tmp_path / "res_train.json", RESULTS + [{"image_id": 9, "caption": "food"}])
    err = _fails(capsys, "captions", "--predictions", str(res), "--references", str(karpathy))
    assert "record 5, key 'image_id'" in err and "split 'test'" in err


def test_karpathy_split_that_is_not_there(caption_files, capsys):
    res, _, karpathy = caption_files
    err = _fails(capsys, "captions", "--predictions", str(res), "--references", str(karpathy),
                 "--split", "val")
    assert "dataset_coco.json: no image with split 'val'" in err and "['test', 'train']" in err


@pytest.mark.parametrize(("content", "message"), [
    ("[{\"image_id\": 1, ", "res.json: not valid JSON"),
    (json.dumps({"image_id": 1, "caption": "a"}), "res.json: expected a JSON list"),
    (json.dumps([]), "res.json: the results list is empty"),
    (json.dumps([{"image_id": 391895}]), "res.json, record 0, key 'caption': missing required"),
    (json.dumps(RESULTS[:1] + [{"image_id": 391895, "caption": 3}]),
     "res.json, record 1, key 'caption': expected a string, got an integer"),
    (json.dumps(RESULTS[:1] + [{"image_id": None, "caption": "a"}]),
     "res.json, record 1, key 'image_id': expected an integer or a string, got null"),
    (json.dumps(RESULTS + RESULTS[:1]), "res.json, record 5, key 'image_id': duplicate image_id"),
    (json.dumps(["a caption"]), "res.json, record 0: expected an object, got a string"),
])
def test_broken_caption_results(tmp_path, caption_files, capsys, content, message):
    _, coco, _ = caption_files
    res = tmp_path / "res.json"
    res.write_text(content, encoding="utf-8")
    err = _fails(capsys, "captions", "--predictions", str(res), "--references", str(coco))
    assert message in err


@pytest.mark.parametrize(("doc", "message"), [
    ({"images": [], "annotations": [{"image_id": 1}]},
     "refs.json, record 0, key 'annotations.caption': missing required key"),
    ({"images": [{"filename": "a.jpg", "split": "test", "sentences": "a dog"}]},
     "refs.json, record 0, key 'sentences': expected a list, got a string"),
    ({"captions": []}, "refs.json: expected COCO captions"),
])
def test_broken_caption_references(tmp_path, caption_files, capsys, doc, message):
    res, _, _ = caption_files
    refs = _write(tmp_path / "refs.json", doc)
    assert message in _fails(capsys, "captions", "--predictions", str(res),
                             "--references", str(refs))


# --- VQA ----------------------------------------------------------------------------------

# (question_id, question_type, answer_type, the ten annotators' answers, predicted answer,
#  expected accuracy). Official rule: when the answers differ, answers and prediction are
# normalised; each of the 10 annotators is left out in turn and the prediction scores
# min(1, matches among the other 9 / 3); the question's accuracy is the mean of the ten.
VQA_CASES = [
    # number words + trailing period: "Two." -> "2"; "two"/"2" x2 and the rest 3, 4, 5.
    # The two "2" annotators left out see 1 match (1/3), the other eight see 2 (2/3):
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6, not 2/3.
    (1, "how many", "number",
     ["two", "2", "three", "3", "3", "4", "four", "4", "4", "five"], "Two.", 0.6),
    # articles: "the dog", "a dog", "Dog" are all "dog" (3 matches): (3 * 2/3 + 7 * 1) / 10
    (2, "what is the", "other",
     ["a dog", "the dog", "Dog", "cat", "a cat", "puppy", "an animal", "animal", "pet",
      "puppy"], "The dog", 0.9),
    # contractions: the annotator's "dont" becomes "don't" (1 match): 9 * 1/3 / 10
    (3, "what is", "other",
     ["dont", "no", "no", "no", "nope", "no", "not", "no", "never", "no"], "don't", 0.3),
    # "1,000": a digit-comma-digit deletes the comma; "1000." loses its period (4 matches)
    (4, "how many", "number",
     ["1000", "1,000", "1000.", "1000", "many", "lots", "100", "999", "10000", "a lot"],
     "1,000", 1.0),
    # punctuation: "red,white" and "red-white" -> "red white" (spaced), "red, white" -> the
    # comma touches a space so it is deleted -> "red white" (3 matches)
    (5, "what is the", "other",
     ["red white", "red, white", "red-white", "red and white", "white", "red", "pink",
      "white and red", "red/blue", "blue"], "red,white", 0.9),
    # ten identical answers: nothing is normalised, so "Yes" does not match "yes"
    (6, "is there", "yes/no", ["yes"] * 10, "Yes", 0.0),
    (7, "is there", "yes/no", ["yes"] * 10, "yes", 1.0),
]
# Hand-computed from the accuracies above (percent, 2 decimals as the official setAccuracy)
VQA_EXPECTED = {
    "accuracy": 67.14,  # (0.6 + 0.9 + 0.3 + 1 + 0.9 + 0 + 1) / 7 = 0.671428...
    "by_answer_type": {"number": 80.0, "other": 70.0, "yes/no": 50.0},
    "by_question_type": {"how many": 80.0, "what is the": 90.0, "what is": 30.0,
                         "is there": 50.0},
}


@pytest.fixture
def vqa_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    questions = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
                 "data_subtype": "val2014", "license": {},
                 "questions": [{"question_id": q, "image_id": 1000 + q % 3, "question": f"q{q}?"}
                                for q, *_ in VQA_CASES]}
    annotations = {"info": {}, "data_subtype": "val2014", "annotations": [
        {"question_id": q, "image_id": 1000 + q % 3, "question_type": qt, "answer_type": at,
         "multiple_choice_answer": answers[0],
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                     for i, a in enumerate(answers)]}
        for q, qt, at, answers, _, _ in VQA_CASES]}
    results = [{"question_id": q, "answer": pred} for q, *_, pred, _ in reversed(VQA_CASES)]
    return (_write(tmp_path / "results.json", results),
            _write(tmp_path / "questions.json", questions),
            _write(tmp_path / "annotations.json", annotations))


def test_vqa_accuracy_equals_hand_computed_official_values(tmp_path, vqa_files):
    res, q, a = vqa_files
    metrics = _score(tmp_path, "vqa", "--predictions", str(res), "--questions", str(q),
                     "--annotations", str(a))
    assert metrics["vqa"] == VQA_EXPECTED
    assert metrics["n_questions"] == 7 and metrics["n_images"] == 3
    protocol = metrics["protocol"]
    assert protocol["split"] == "val2014" and protocol["n_questions"] == 7
    assert protocol["question_ids_sha256"] == ids_sha256(range(1, 8))
    assert protocol["vqa"]["answers_per_question"] == {"10": 7}
    assert "leave-one-out" in protocol["vqa"]["formula"]
    assert "number words to digits" in protocol["vqa"]["answer_normalisation"]


@pytest.mark.parametrize("case", VQA_CASES, ids=lambda c: str(c[0]))
def test_each_vqa_question_alone(tmp_path, vqa_files, case):
    """Every case on its own, so a wrong one is named (overall == its accuracy)."""
    _, q, a = vqa_files
    qid, *_, pred, expected = case
    docs = [json.loads(p.read_text()) for p in (q, a)]
    docs[0]["questions"] = [x for x in docs[0]["questions"] if x["question_id"] == qid]
    docs[1]["annotations"] = [x for x in docs[1]["annotations"] if x["question_id"] == qid]
    metrics = score_vqa(_write(tmp_path / "r1.json", [{"question_id": qid, "answer": pred}]),
                        _write(tmp_path / "q1.json", docs[0]),
                        _write(tmp_path / "a1.json", docs[1]))
    assert metrics["vqa"]["accuracy"] == round(100 * expected, 2)


def test_vqa_coverage_errors(tmp_path, vqa_files, capsys):
    res, q, a = vqa_files
    results = json.loads(res.read_text())
    args = ["vqa", "--questions", str(q), "--annotations", str(a), "--predictions"]
    short = _write(tmp_path / "short.json", results[:-1])
    err = _fails(capsys, *args, str(short))
    assert "short.json" in err and "1 of 7 questions of annotations.json have no predicted" in err
    extra = _write(tmp_path / "extra.json", results + [{"question_id": 99, "answer": "yes"}])
    err = _fails(capsys, *args, str(extra))
    assert "extra.json, record 7, key 'question_id': question_id 99 is not annotated" in err


@pytest.mark.parametrize(("target", "edit", "message"), [
    ("results", lambda d: d[0].pop("answer"), "results.json, record 0, key 'answer': missing"),
    ("results", lambda d: d[1].update(question_id="3"),
     "results.json, record 1, key 'question_id': expected an integer, got a string"),
    ("questions", lambda d: d["questions"][2].pop("image_id"),
     "questions.json, record 2, key 'image_id': missing required key"),
    ("annotations", lambda d: d["annotations"][4]["answers"][3].update(answer=4),
     "annotations.json, record 4, key 'answers[3].answer': expected a string"),
    ("annotations", lambda d: d["annotations"][1].update(answers=[]),
     "annotations.json, record 1, key 'answers': expected the annotators' answers"),
    ("annotations", lambda d: d["annotations"].pop(),
     "annotations.json: 1 question(s) of questions.json have no annotation"),
    ("annotations", lambda d: d["annotations"][0].update(question_type=None),
     "annotations.json, record 0, key 'question_type': expected a string, got null"),
])
def test_broken_vqa_files(vqa_files, capsys, target, edit, message):
    res, q, a = vqa_files
    path = {"results": res, "questions": q, "annotations": a}[target]
    doc = json.loads(path.read_text())
    edit(doc)
    _write(path, doc)
    err = _fails(capsys, "vqa", "--predictions", str(res), "--questions", str(q),
                 "--annotations", str(a))
    assert message in err


# --- retrieval ----------------------------------------------------------------------------

# 3 images x 15 texts, texts 5i..5i+4 describe image i. Ranks by hand (0-based, ties count
# against the query):
#   image->text, best own caption: image 0 -> 0 (0.9 beats all); image 1 -> 6 (its best,
#   0.5, is beaten by five 0.8s and one more 0.8); image 2 -> 10 (its 0.05s lose to ten 0.5s)
#   text->image: text 0 -> 0; texts 1-4 -> 2 (0.1 vs 0.8, 0.5); texts 5-9 -> 2 (0.6 beats,
#   and 0.5 ties, for text 5); text 10 -> 1 (0.8 beats 0.05); texts 11-14 -> 0
SIMILARITY = np.array([
    [0.9, 0.1, 0.1, 0.1, 0.1, 0.6, 0.6, 0.6, 0.6, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.8, 0.8, 0.8, 0.8, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.8, 0.0, 0.0, 0.0, 0.0],
    [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.05, 0.05, 0.05, 0.05, 0.05],
])
TEXT_IMAGE = [i for i in range(3) for _ in range(5)]
RETRIEVAL_EXPECTED = {
    "i2t_r1": 100 / 3, "i2t_r5": 100 / 3, "i2t_r10": 200 / 3,     # ranks 0, 6, 10
    "i2t_median_rank": 7.0, "i2t_mean_rank": 16 / 3 + 1,
    "t2i_r1": 100 / 3, "t2i_r5": 100.0, "t2i_r10": 100.0,         # five 0s, one 1, nine 2s
    "t2i_median_rank": 3.0, "t2i_mean_rank": 19 / 15 + 1,
}


@pytest.fixture
def retrieval_files(tmp_path: Path) -> tuple[Path, Path]:
    np.save(tmp_path / "S.npy", SIMILARITY)
    return tmp_path / "S.npy", _write(tmp_path / "G.json", {"text_image": TEXT_IMAGE})


def test_retrieval_on_a_hand_built_matrix_with_five_captions_per_image(tmp_path,
                                                                       retrieval_files):
    sim, gt = retrieval_files
    metrics = _score(tmp_path, "retrieval", "--similarities", str(sim), "--ground-truth", str(gt))
    assert metrics["retrieval"] == pytest.approx(RETRIEVAL_EXPECTED, abs=1e-9)
    assert metrics["n_images"] == 3 and metrics["n_texts"] == 15
    protocol = metrics["protocol"]
    assert protocol["retrieval"]["texts_per_image"] == {"5": 3}
    assert protocol["retrieval"]["found_by_any_caption"] is True
    assert protocol["similarities"]["shape"] == [3, 15]
    assert protocol["image_ids_sha256"] is None


def test_retrieval_ignores_text_order_and_records_image_ids(tmp_path):
    perm = np.random.default_rng(0).permutation(15)
    np.save(tmp_path / "S.npy", SIMILARITY[:, perm].astype(np.float32))
    gt = _write(tmp_path / "G.json", {"text_image": [TEXT_IMAGE[j] for j in perm],
                                      "image_ids": [11, 12, 13], "split": "test"})
    metrics = score_retrieval(tmp_path / "S.npy", gt)
    assert metrics["retrieval"] == pytest.approx(RETRIEVAL_EXPECTED, abs=1e-9)
    assert metrics["protocol"]["image_ids_sha256"] == ids_sha256([13, 12, 11])
    assert metrics["split"] == "test"


@pytest.mark.parametrize(("gt_doc", "message"), [
    ({"text_image": TEXT_IMAGE[:-1]}, "G.json, key 'text_image': has 14 texts but the "
                                      "similarity matrix has 15"),
    ({"text_image": TEXT_IMAGE[:-1] + [3]}, "G.json, record 14, key 'text_image': image index 3"),
    ({"text_image": TEXT_IMAGE[:-1] + ["2"]},
     "G.json, record 14, key 'text_image': expected an image index, got a string"),
    ({"text_image": [0] * 10 + [1] * 5}, "1 image row(s) have no text (first: row 2)"),
    ({"texts": TEXT_IMAGE}, "G.json, key 'texts': unknown key"),
    ({"text_image": TEXT_IMAGE, "image_ids": [1, 2]},
     "G.json, key 'image_ids': expected a list of 3 image ids"),
    ([0, 1], "G.json: expected a JSON object with 'text_image', got a list"),
])
def test_broken_retrieval_ground_truth(tmp_path, retrieval_files, capsys, gt_doc, message):
    sim, _ = retrieval_files
    gt = _write(tmp_path / "G.json", gt_doc)
    err = _fails(capsys, "retrieval", "--similarities", str(sim), "--ground-truth", str(gt))
    assert message in err


def test_broken_similarity_files(tmp_path, retrieval_files, capsys):
    _, gt = retrieval_files
    args = ["retrieval", "--ground-truth", str(gt), "--similarities"]
    np.save(tmp_path / "T.npy", SIMILARITY.T)
    assert "(is the matrix saved as (n_texts, n_images)?" in _fails(
        capsys, *args, str(tmp_path / "T.npy"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    assert "obj.npy: not a plain numeric .npy array" in _fails(
        capsys, *args, str(tmp_path / "obj.npy"))
    nan = SIMILARITY.copy()
    nan[1, 4] = math.nan
    np.save(tmp_path / "nan.npy", nan)
    assert "nan.npy: similarity [1, 4] is NaN" in _fails(capsys, *args, str(tmp_path / "nan.npy"))
    (tmp_path / "text.npy").write_text("not numpy")
    assert "text.npy: " in _fails(capsys, *args, str(tmp_path / "text.npy"))
    assert "missing.npy: file not found" in _fails(capsys, *args, str(tmp_path / "missing.npy"))


def test_without_out_the_metrics_json_goes_to_stdout(retrieval_files, capsys):
    sim, gt = retrieval_files
    capsys.readouterr()
    assert main(["score", "retrieval", "--similarities", str(sim), "--ground-truth", str(gt)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["retrieval"]["i2t_median_rank"] == 7.0


def test_library_errors_are_data_errors(retrieval_files):
    sim, _ = retrieval_files
    with pytest.raises(DataError, match="absent.json: file not found"):
        score_retrieval(sim, sim.parent / "absent.json")


# --- protocol helpers shared with `tuwen eval` --------------------------------------------


def test_decoding_settings_record_what_shapes_each_decoding():
    from tuwen.config import EvalConfig
    from tuwen.tasks.metrics.protocol import decoding_settings

    cfg = EvalConfig(beam_size=4, length_penalty=0.6, max_new_tokens=20)
    assert decoding_settings(cfg, "beam") == {"decoding": "beam", "beam_size": 4,
                                              "length_penalty": 0.6, "max_new_tokens": 20}
    assert decoding_settings(cfg, "greedy") == {"decoding": "greedy", "max_new_tokens": 20}
    sampled = decoding_settings(cfg, "top_p")  # only the fields this EvalConfig has
    assert sampled["decoding"] == "top_p" and sampled["max_new_tokens"] == 20
    assert set(sampled) <= {"decoding", "top_p", "temperature", "max_new_tokens", "seed"}


def test_ids_hash_ignores_order_and_json_type_but_not_membership():
    assert ids_sha256([3, 1, 2]) == ids_sha256(["1", "2", "3"])
    assert ids_sha256([1, 2]) != ids_sha256([1, 2, 3])
    assert len(ids_sha256([])) == 16
