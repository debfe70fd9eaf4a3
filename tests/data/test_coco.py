"""The COCO captions reader on a file in the published layout, and on broken variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tuwen.data.coco import read_coco_captions
from tuwen.data.records import ImageCaptions
from tuwen.errors import DataError


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _coco_doc() -> dict:
    """captions_val2014.json as published: info/licenses, images with extra keys, several
    annotations per image in no particular order, a trailing space and newline in captions."""
    return {
        "info": {"description": "COCO 2014 Dataset"}, "licenses": [],
        "images": [
            {"license": 3, "file_name": "COCO_val2014_000000391895.jpg", "height": 360,
             "width": 640, "id": 391895, "coco_url": "http://x/391895.jpg"},
            {"license": 4, "file_name": "COCO_val2014_000000522418.jpg", "height": 480,
             "width": 640, "id": 522418},
        ],
        "annotations": [
            {"image_id": 391895, "id": 10,
             "caption": "A man with a red helmet on a small moped on a dirt road. "},
            {"image_id": 522418, "id": 11,
             "caption": "A woman wearing a net on her head cutting a cake.\n"},
            {"image_id": 391895, "id": 12,
             "caption": "Man riding a motor bike on a dirt road on the countryside."},
        ],
    }


@pytest.fixture
def coco_file(tmp_path: Path) -> Path:
    for name in ("COCO_val2014_000000391895.jpg", "COCO_val2014_000000522418.jpg"):
        (tmp_path / "val2014").mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "val2014" / name, "JPEG")
    (tmp_path / "annotations").mkdir()
    return _write(tmp_path / "annotations" / "captions_val2014.json", _coco_doc())


def test_reads_the_published_layout(coco_file: Path) -> None:
    root = coco_file.parents[1] / "val2014"
    result = read_coco_captions(coco_file, image_root=root, split="val")
    assert result.skipped == []
    assert result.records == [
        ImageCaptions(391895, root / "COCO_val2014_000000391895.jpg", "val",
                      ("A man with a red helmet on a small moped on a dirt road.",
                       "Man riding a motor bike on a dirt road on the countryside.")),
        ImageCaptions(522418, root / "COCO_val2014_000000522418.jpg", "val",
                      ("A woman wearing a net on her head cutting a cake.",)),
    ]


def test_split_defaults_to_train_and_image_root_to_the_json_folder(coco_file: Path) -> None:
    result = read_coco_captions(coco_file, check_files=False)
    assert {r.split for r in result.records} == {"train"}
    assert result.records[0].image_path == coco_file.parent / "COCO_val2014_000000391895.jpg"


def test_missing_image_files_are_skipped_and_counted(coco_file: Path) -> None:
    result = read_coco_captions(coco_file)  # images are in val2014/, not next to the JSON
    assert result.records == []
    assert len(result.skipped) == 2
    assert "images record 0: image file not found" in result.skipped[0]


def test_empty_captions_and_uncaptioned_images_are_skipped(tmp_path: Path) -> None:
    doc = _coco_doc()
    doc["annotations"][1]["caption"] = "   "
    path = _write(tmp_path / "captions.json", doc)
    result = read_coco_captions(path, check_files=False)
    assert [r.image_id for r in result.records] == [391895]
    assert result.skipped == [
        "captions.json annotations record 1: empty caption (image_id 522418)",
        "captions.json images record 1: no non-empty caption (image_id 522418)",
    ]


def _broken(doc_edit) -> dict:
    doc = _coco_doc()
    doc_edit(doc)
    return doc


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.pop("annotations"), "missing the top-level list"),
    (lambda d: d.update(images={}), "key 'images': expected a list, got an object"),
    (lambda d: d["images"][1].pop("id"), "record 1, key 'images.id': missing required key"),
    (lambda d: d["images"][0].update(file_name=7),
     "record 0, key 'images.file_name': expected a string, got an integer"),
    (lambda d: d["images"][1].update(id=391895),
     "record 1, key 'images.id': duplicate images.id 391895 (first seen in record 0)"),
    (lambda d: d["annotations"][2].update(caption=None),
     "record 2, key 'annotations.caption': expected a string, got null"),
    (lambda d: d["annotations"][0].pop("image_id"),
     "record 0, key 'annotations.image_id': missing required key"),
    (lambda d: d["annotations"][1].update(image_id=5),
     "record 1, key 'annotations.image_id': image_id 5 is not the id of any record"),
    (lambda d: d["annotations"].append("a caption"),
     "record 3, key 'annotations': expected an object, got a string"),
])
def test_broken_files_name_file_record_and_key(tmp_path: Path, edit, message: str) -> None:
    path = _write(tmp_path / "captions_val2014.json", _broken(edit))
    with pytest.raises(DataError, match="captions_val2014.json") as err:
        read_coco_captions(path, check_files=False)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_json_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    path.write_text('{"images": [', encoding="utf-8")
    with pytest.raises(DataError, match=r"captions.json: not valid JSON"):
        read_coco_captions(path)
