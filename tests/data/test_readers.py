"""Readers on small files in the exact published layouts, and on broken variants of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tuwen.data.readers import read_karpathy, read_vqav2
from tuwen.data.records import ImageCaptions, VQAItem
from tuwen.errors import ConfigError, DataError


def _image(path: Path, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, format=fmt)
    return path


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _sentences(*raws: str) -> list[dict]:
    return [{"tokens": raw.lower().split(), "raw": raw, "imgid": 0, "sentid": k}
            for k, raw in enumerate(raws)]


# --- Karpathy -----------------------------------------------------------------------------


@pytest.fixture
def coco_karpathy(tmp_path: Path) -> Path:
    """dataset_coco.json as Karpathy published it: filepath, cocoid and imgid, restval."""
    _image(tmp_path / "val2014" / "COCO_val2014_000000391895.jpg", "JPEG")
    _image(tmp_path / "train2014" / "COCO_train2014_000000522418.jpg", "JPEG")
    _image(tmp_path / "val2014" / "COCO_val2014_000000184613.jpg", "JPEG")
    images = [
        {"filepath": "val2014", "sentids": [0, 1], "filename": "COCO_val2014_000000391895.jpg",
         "imgid": 0, "split": "test", "cocoid": 391895,
         "sentences": _sentences("A man with a red helmet on a small moped on a dirt road. ",
                                 "Man riding a motor bike on a dirt road on the countryside.")},
        {"filepath": "train2014", "sentids": [2], "filename": "COCO_train2014_000000522418.jpg",
         "imgid": 1, "split": "train", "cocoid": 522418,
         "sentences": _sentences("A woman wearing a net on her head cutting a cake.")},
        {"filepath": "val2014", "sentids": [3], "filename": "COCO_val2014_000000184613.jpg",
         "imgid": 2, "split": "restval", "cocoid": 184613,
         "sentences": _sentences("A child holding a flowered umbrella and petting a yak.")},
    ]
    return _write(tmp_path / "dataset_coco.json", {"images": images, "dataset": "coco"})


def test_karpathy_coco_layout(coco_karpathy: Path) -> None:
    result = read_karpathy(coco_karpathy)
    assert result.skipped == []
    assert [r.image_id for r in result.records] == [391895, 522418, 184613]
    first = result.records[0]
    assert first == ImageCaptions(
        image_id=391895,
        image_path=coco_karpathy.parent / "val2014" / "COCO_val2014_000000391895.jpg",
        split="test",
        captions=("A man with a red helmet on a small moped on a dirt road.",
                  "Man riding a motor bike on a dirt road on the countryside."))
    assert result.records[2].split == "restval"  # kept as is; callers decide


def test_karpathy_split_filter(coco_karpathy: Path) -> None:
    assert [r.split for r in read_karpathy(coco_karpathy, splits=["train", "restval"]).records] \
        == ["train", "restval"]
    assert [r.image_id for r in read_karpathy(coco_karpathy, splits="test").records] == [391895]


def test_karpathy_flickr_layout_without_filepath_or_cocoid(tmp_path: Path) -> None:
    _image(tmp_path / "flickr30k-images" / "1000092795.jpg", "JPEG")
    images = [{"sentids": [0], "imgid": 7, "split": "train", "filename": "1000092795.jpg",
               "sentences": _sentences("Two young guys with shaggy hair look at their hands.")}]
    path = _write(tmp_path / "dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})
    result = read_karpathy(path, image_root=tmp_path / "flickr30k-images")
    (record,) = result.records
    assert record.image_id == 7
    assert record.image_path == tmp_path / "flickr30k-images" / "1000092795.jpg"


def test_karpathy_image_id_falls_back_to_stem(tmp_path: Path) -> None:
    _image(tmp_path / "img_042.png")
    images = [{"filename": "img_042.png", "split": "val", "sentences": _sentences("a cat")}]
    (record,) = read_karpathy(_write(tmp_path / "captions.json", {"images": images})).records
    assert record.image_id == "img_042"


def test_karpathy_shapes_layout(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "000001.png")
    images = [{"filepath": "images", "filename": "000001.png", "imgid": 0, "cocoid": 1,
               "split": "train", "sentids": [0],
               "sentences": _sentences("a large red circle and a small blue square")}]
    (record,) = read_karpathy(_write(tmp_path / "captions.json",
                                     {"dataset": "shapes", "images": images})).records
    assert record.image_path == tmp_path / "images" / "000001.png"
    assert record.image_id == 1


def test_karpathy_empty_captions_are_dropped_and_counted(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    images = [{"filename": "a.png", "split": "train", "sentences": _sentences("a dog", "  ", "")},
              {"filename": "b.png", "split": "train", "sentences": _sentences(" \n")}]
    result = read_karpathy(_write(tmp_path / "captions.json", {"images": images}))
    assert [r.captions for r in result.records] == [("a dog",)]
    assert result.skipped == ["captions.json record 0: empty caption (sentence 1)",
                              "captions.json record 0: empty caption (sentence 2)",
                              "captions.json record 1: empty caption (sentence 0)",
                              "captions.json record 1: no non-empty caption"]


def test_karpathy_missing_image_is_skipped_and_counted(tmp_path: Path) -> None:
    _image(tmp_path / "here.png")
    images = [{"filename": "here.png", "split": "train", "sentences": _sentences("one")},
              {"filename": "gone.png", "split": "train", "sentences": _sentences("two")}]
    path = _write(tmp_path / "captions.json", {"images": images})
    result = read_karpathy(path)
    assert [r.image_id for r in result.records] == ["here"]
    assert len(result.skipped) == 1
    assert "record 1: image file not found" in result.skipped[0]
    assert "gone.png" in result.skipped[0]
    assert len(read_karpathy(path, check_files=False).records) == 2


def test_karpathy_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "dataset_coco.json"
    path.write_text('{"images": [\n  {"filename": "a.jpg",\n   "split": "train" "x"}\n]}')
    with pytest.raises(DataError) as err:
        read_karpathy(path)
    message = str(err.value)
    assert str(path) in message
    assert "not valid JSON" in message
    assert "line 3" in message


@pytest.mark.parametrize("content, problem", [
    (None, "file not found"),
    ("", "file is empty"),
    ("[1, 2]", "expected a JSON object at the top level, got a list"),
    ('{"annotations": []}', "key 'images': missing the top-level list"),
    ('{"images": {"a": 1}}', "key 'images': expected a list, got an object"),
])
def test_karpathy_file_level_errors(tmp_path: Path, content: str | None, problem: str) -> None:
    path = tmp_path / "captions.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match="captions.json") as err:
        read_karpathy(path)
    assert problem in str(err.value)


@pytest.mark.parametrize("record, problem", [
    ("a.png", "record 1: expected an object, got a string"),
    ({"split": "train", "sentences": []}, "record 1, key 'filename': missing required key"),
    ({"filename": "a.png", "sentences": []}, "record 1, key 'split': missing required key"),
    ({"filename": "a.png", "split": "train"}, "record 1, key 'sentences': missing required key"),
    ({"filename": 3, "split": "train", "sentences": []},
     "record 1, key 'filename': expected a string, got an integer"),
    ({"filename": "a.png", "split": "train", "sentences": "a cat"},
     "record 1, key 'sentences': expected a list, got a string"),
    ({"filename": "a.png", "split": "train", "sentences": ["a cat"]},
     "record 1, key 'sentences[0]': expected an object, got a string"),
    ({"filename": "a.png", "split": "train", "sentences": [{"raw": None}]},
     "record 1, key 'sentences[0].raw': expected a string, got null"),
    ({"filename": "a.png", "split": "train", "sentences": [{"tokens": ["a"]}]},
     "record 1, key 'sentences[0].raw': missing required key"),
    ({"filename": "a.png", "split": "train", "cocoid": True, "sentences": []},
     "record 1, key 'cocoid': expected an integer or a string, got a boolean"),
    ({"filename": "a.png", "filepath": ["x"], "split": "train", "sentences": []},
     "record 1, key 'filepath': expected a string, got a list"),
])
def test_karpathy_record_errors_name_index_and_key(tmp_path: Path, record: object,
                                                   problem: str) -> None:
    good = {"filename": "ok.png", "split": "train", "sentences": _sentences("fine")}
    path = _write(tmp_path / "captions.json", {"images": [good, record]})
    with pytest.raises(DataError) as err:
        read_karpathy(path, check_files=False)
    assert str(err.value) == f"{path}, {problem}"
    assert err.value.index == 1


def test_karpathy_duplicate_image_id_is_an_error(tmp_path: Path) -> None:
    images = [{"filename": f"{k}.png", "cocoid": 5, "split": "train",
               "sentences": _sentences("x")} for k in range(2)]
    with pytest.raises(DataError, match=r"record 1, key 'image id': duplicate image id 5"):
        read_karpathy(_write(tmp_path / "captions.json", {"images": images}), check_files=False)


# --- VQAv2 --------------------------------------------------------------------------------


def _vqa_files(folder: Path, subtype: str, items: list[tuple[int, int, str]]) -> tuple[Path, Path]:
    """Questions + annotations files in the VQAv2 layout, for (question_id, image_id, q)."""
    questions = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
                 "license": {}, "data_subtype": subtype,
                 "questions": [{"image_id": i, "question": q, "question_id": qid}
                               for qid, i, q in items]}
    annotations = {"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": subtype,
                   "annotations": [_annotation(qid, i) for qid, i, _ in items]}
    return (_write(folder / f"v2_OpenEnded_mscoco_{subtype}_questions.json", questions),
            _write(folder / f"v2_mscoco_{subtype}_annotations.json", annotations))


def _annotation(qid: int, image_id: int) -> dict:
    raw = ["yes"] * 8 + ["yes!", "no"]
    return {"question_type": "is the", "multiple_choice_answer": "yes", "image_id": image_id,
            "answer_type": "yes/no", "question_id": qid,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                        for k, a in enumerate(raw)]}


def test_vqav2_coco_layout(tmp_path: Path) -> None:
    _image(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg", "JPEG")
    qpath, apath = _vqa_files(tmp_path, "val2014", [(42000, 42, "Is the man happy?"),
                                                     (42001, 42, "Is it raining?")])
    result = read_vqav2(qpath, apath, image_root=tmp_path / "val2014")
    assert result.skipped == []
    assert result.records[0] == VQAItem(
        question_id=42000, image_id=42,
        image_path=tmp_path / "val2014" / "COCO_val2014_000000000042.jpg",
        question="Is the man happy?", answers=("yes",) * 8 + ("yes!", "no"),
        multiple_choice_answer="yes", question_type="is the", answer_type="yes/no")
    assert [r.question_id for r in result.records] == [42000, 42001]


def test_vqav2_shapes_layout(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "000001.png")
    _image(tmp_path / "images" / "000002.png")
    questions = _write(tmp_path / "vqa_questions_train.json", {
        "data_subtype": "train",
        "questions": [{"image_id": 1, "question": "what colour is the circle?",
                       "question_id": 100},
                      {"image_id": 2, "question": "how many squares are there?",
                       "question_id": 200}]})
    annotations = _write(tmp_path / "vqa_annotations_train.json", {
        "data_subtype": "train", "annotations": [
            {"question_id": 100, "image_id": 1, "question_type": "what colour",
             "answer_type": "other", "multiple_choice_answer": "red",
             "answers": [{"answer": "red", "answer_confidence": "yes", "answer_id": k}
                         for k in range(1, 11)]},
            {"question_id": 200, "image_id": 2, "question_type": "how many",
             "answer_type": "number", "multiple_choice_answer": "2",
             "answers": [{"answer": "2"}] * 10}]})
    result = read_vqav2(questions, annotations, image_pattern="images/{image_id:06d}.png")
    assert [r.image_path for r in result.records] == [tmp_path / "images" / "000001.png",
                                                      tmp_path / "images" / "000002.png"]
    assert result.records[1].answer_type == "number"
    assert result.records[0].answers == ("red",) * 10


def test_vqav2_image_map_accepts_int_and_str_keys(tmp_path: Path) -> None:
    _image(tmp_path / "pics" / "a.jpg", "JPEG")
    _image(tmp_path / "pics" / "b.jpg", "JPEG")
    qpath, apath = _vqa_files(tmp_path, "val2014", [(1, 10, "q1?"), (2, 20, "q2?"),
                                                     (3, 30, "q3?")])
    result = read_vqav2(qpath, apath, image_map={10: "pics/a.jpg", "20": tmp_path / "pics/b.jpg"})
    assert [r.image_path for r in result.records] == [tmp_path / "pics" / "a.jpg",
                                                      tmp_path / "pics" / "b.jpg"]
    reason = f"{qpath.name} record 2: image_id 30 not in image_map (question_id 3)"
    assert result.skipped == [reason]


def test_vqav2_soft_problems_are_skipped_and_counted(tmp_path: Path) -> None:
    _image(tmp_path / "COCO_val2014_000000000001.jpg", "JPEG")
    qpath, apath = _vqa_files(tmp_path, "val2014", [(1, 1, "fine?"), (2, 1, "   "),
                                                     (3, 2, "no picture?")])
    result = read_vqav2(qpath, apath)
    assert [r.question_id for r in result.records] == [1]
    assert len(result.skipped) == 2
    assert result.skipped[0] == f"{qpath.name} record 1: empty question (question_id 2)"
    assert "record 2: image file not found" in result.skipped[1]
    assert "COCO_val2014_000000000002.jpg" in result.skipped[1]
    assert len(read_vqav2(qpath, apath, check_files=False).records) == 2


def test_vqav2_question_without_annotation(tmp_path: Path) -> None:
    qpath, apath = _vqa_files(tmp_path, "val2014", [(1, 1, "a?"), (2, 1, "b?"), (3, 1, "c?")])
    doc = json.loads(apath.read_text())
    doc["annotations"] = doc["annotations"][:1]
    _write(apath, doc)
    with pytest.raises(DataError, match=r"2 question\(s\) .* no annotation .*first question_id 2"):
        read_vqav2(qpath, apath, check_files=False)


def test_vqav2_annotation_without_question(tmp_path: Path) -> None:
    qpath, apath = _vqa_files(tmp_path, "val2014", [(1, 1, "a?"), (2, 1, "b?")])
    doc = json.loads(qpath.read_text())
    doc["questions"] = doc["questions"][1:]
    _write(qpath, doc)
    with pytest.raises(DataError, match=r"1 annotation\(s\) .* no question .*first question_id 1"):
        read_vqav2(qpath, apath, check_files=False)


def test_vqav2_mismatched_image_id(tmp_path: Path) -> None:
    qpath, apath = _vqa_files(tmp_path, "val2014", [(1, 1, "a?")])
    doc = json.loads(apath.read_text())
    doc["annotations"][0]["image_id"] = 9
    _write(apath, doc)
    with pytest.raises(DataError, match=r"record 0, key 'image_id': image_id 9 differs"):
        read_vqav2(qpath, apath, check_files=False)


@pytest.mark.parametrize("which, change, problem", [
    ("questions", lambda d: d["questions"][1].pop("question"),
     "record 1, key 'question': missing required key"),
    ("questions", lambda d: d["questions"][1].update(question_id="2"),
     "record 1, key 'question_id': expected an integer, got a string"),
    ("questions", lambda d: d["questions"].__setitem__(1, 7),
     "record 1: expected an object, got an integer"),
    ("annotations", lambda d: d["annotations"][1].pop("answer_type"),
     "record 1, key 'answer_type': missing required key"),
    ("annotations", lambda d: d["annotations"][1]["answers"][3].pop("answer"),
     "record 1, key 'answers[3].answer': missing required key"),
    ("annotations", lambda d: d["annotations"][1].update(answers="yes"),
     "record 1, key 'answers': expected a list, got a string"),
    ("questions", lambda d: d.pop("questions"), "key 'questions': missing the top-level list"),
])
def test_vqav2_structural_errors(tmp_path: Path, which: str, change, problem: str) -> None:
    qpath, apath = _vqa_files(tmp_path, "val2014", [(1, 1, "a?"), (2, 1, "b?")])
    path = qpath if which == "questions" else apath
    doc = json.loads(path.read_text())
    change(doc)
    _write(path, doc)
    with pytest.raises(DataError) as err:
        read_vqav2(qpath, apath, check_files=False)
    assert str(err.value) == f"{path}, {problem}"


def test_vqav2_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    qpath, apath = _vqa_files(tmp_path, "val2014", [(1, 1, "a?")])
    apath.write_text('{"annotations": [\n\n  {"question_id": 1,,}]}')
    with pytest.raises(DataError, match=r"annotations\.json: not valid JSON: .* line 3"):
        read_vqav2(qpath, apath)


def test_vqav2_pattern_errors(tmp_path: Path) -> None:
    qpath, apath = _vqa_files(tmp_path, "val2014", [(1, 1, "a?")])
    with pytest.raises(ConfigError, match=r"\['split'\]"):
        read_vqav2(qpath, apath, image_pattern="{split}/{image_id}.jpg")
    doc = json.loads(qpath.read_text())
    del doc["data_subtype"]
    _write(qpath, doc)
    with pytest.raises(DataError, match="'data_subtype'"):
        read_vqav2(qpath, apath)
    # Without {subtype} the file does not need data_subtype
    assert len(read_vqav2(qpath, apath, image_pattern="{image_id}.jpg",
                          check_files=False).records) == 1
