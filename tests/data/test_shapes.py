"""The synthetic shapes generator: formats, determinism, and agreement with the pictures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tuwen.data.answers import normalize_answer
from tuwen.data.readers import read_karpathy, read_vqav2
from tuwen.data.shapes import (
    COLOURS,
    HELD_OUT_PAIRS,
    SHAPES,
    SIZES,
    SPLITS,
    generate_shapes,
    shapes_manifest,
)
from tuwen.data.shapes_scene import RGB
from tuwen.errors import TuwenError

TINY = {"n_train": 40, "n_val": 8, "n_test": 12, "n_test_novel": 20}
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate_shapes(out, seed=3, progress=False, **TINY)
    return out


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A thousand small images, for statistics over the dataset."""
    out = tmp_path_factory.mktemp("shapes_medium")
    generate_shapes(out, seed=1, image_size=32, n_train=1000, n_val=0, n_test=0,
                    n_test_novel=100, progress=False)
    return out


@pytest.fixture(scope="module")
def scenes(tiny: Path) -> dict:
    return _load(tiny / "scenes.json")


@pytest.fixture(scope="module")
def vqa(tiny: Path) -> list[tuple[dict, dict]]:
    """(question, annotation) pairs over all splits."""
    pairs = []
    for split in SPLITS:
        questions = _load(tiny / f"vqa_questions_{split}.json")["questions"]
        annotations = _load(tiny / f"vqa_annotations_{split}.json")["annotations"]
        pairs += list(zip(questions, annotations, strict=True))
    return pairs


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(tiny: Path, tmp_path: Path) -> None:
    generate_shapes(tmp_path, seed=3, progress=False, **TINY)
    assert _files(tmp_path) == _files(tiny)


def test_worker_processes_write_the_same_bytes_as_one(tmp_path: Path) -> None:
    counts = {"n_train": 700, "n_val": 100, "n_test": 150, "n_test_novel": 50}  # 2 workers
    generate_shapes(tmp_path / "one", seed=3, progress=False, workers=1, image_size=32,
                    **counts)
    generate_shapes(tmp_path / "two", seed=3, progress=False, workers=2, image_size=32,
                    **counts)
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


def test_different_seed_gives_different_data(tiny: Path, tmp_path: Path) -> None:
    generate_shapes(tmp_path, seed=4, progress=False, **TINY)
    ours, theirs = _files(tmp_path), _files(tiny)
    assert ours.keys() == theirs.keys()
    assert ours["captions.json"] != theirs["captions.json"]
    assert ours["images/000001.png"] != theirs["images/000001.png"]


def test_an_image_does_not_depend_on_the_rest_of_the_run(tiny: Path, tmp_path: Path) -> None:
    generate_shapes(tmp_path, seed=3, n_train=5, n_val=0, n_test=0, n_test_novel=0,
                    progress=False)
    for image_id in range(1, 6):
        name = f"images/{image_id:06d}.png"
        assert (tmp_path / name).read_bytes() == (tiny / name).read_bytes()


# ---------------------------------------------------------------- formats


def test_manifest_matches_parameters(tiny: Path) -> None:
    manifest = _load(tiny / "manifest.json")
    assert manifest == shapes_manifest(seed=3, **TINY)
    assert manifest["held_out_pairs"] == [list(p) for p in HELD_OUT_PAIRS]
    assert manifest["format_version"] >= 1


def test_karpathy_captions_format(tiny: Path) -> None:
    data = _load(tiny / "captions.json")
    assert data["dataset"] == "shapes"
    images = data["images"]
    assert [e["cocoid"] for e in images] == list(range(1, sum(TINY.values()) + 1))
    expected_splits = [s for s in SPLITS for _ in range(TINY[f"n_{s}"])]
    assert [e["split"] for e in images] == expected_splits
    sentids = []
    for imgid, entry in enumerate(images):
        assert entry["imgid"] == imgid
        assert entry["filepath"] == "images"
        assert entry["filename"] == f"{entry['cocoid']:06d}.png"
        assert len(entry["sentences"]) == 5
        assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]]
        sentids += entry["sentids"]
        for sentence in entry["sentences"]:
            raw = sentence["raw"]
            assert sentence["imgid"] == imgid
            assert raw == raw.lower() and not raw.endswith(".")
            assert sentence["tokens"] == raw.replace(",", "").replace(":", "").split()
    assert len(set(sentids)) == len(sentids)


def test_images_are_rgb_pngs_of_the_requested_size(tiny: Path, scenes: dict) -> None:
    pngs = sorted((tiny / "images").glob("*.png"))
    assert len(pngs) == len(scenes) == sum(TINY.values())
    for png in pngs[:10]:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)


def test_image_size_parameter(tmp_path: Path) -> None:
    generate_shapes(tmp_path, image_size=48, n_train=2, n_val=0, n_test=0, n_test_novel=1,
                    progress=False)
    with Image.open(tmp_path / "images" / "000003.png") as image:
        assert image.size == (48, 48)


def test_vqa_files_format(tiny: Path) -> None:
    for split in SPLITS:
        questions = _load(tiny / f"vqa_questions_{split}.json")
        annotations = _load(tiny / f"vqa_annotations_{split}.json")
        assert questions["task_type"] == "Open-Ended"
        assert questions["data_type"] == annotations["data_type"] == "shapes"
        assert questions["data_subtype"] == annotations["data_subtype"] == split
        for key in ("info", "license"):
            assert key in questions and key in annotations
        assert len(questions["questions"]) == len(annotations["annotations"]) > 0


def test_vqa_records(vqa: list[tuple[dict, dict]], scenes: dict) -> None:
    per_image: dict[int, list[int]] = {}
    for q, a in vqa:
        assert set(q) == {"image_id", "question", "question_id"}
        assert q["question_id"] == a["question_id"] and q["image_id"] == a["image_id"]
        assert q["question"].endswith("?")
        per_image.setdefault(q["image_id"], []).append(q["question_id"])
        assert a["answer_type"] in ("yes/no", "number", "other")
        assert a["question_type"] in ("colour", "shape", "count", "exists", "relative_position",
                                      "relative_direction")
        assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
        assert all(x["answer_confidence"] == "yes" for x in a["answers"])
    assert sorted(per_image) == sorted(int(i) for i in scenes)
    for image_id, question_ids in per_image.items():
        assert 5 <= len(question_ids) <= 9
        assert question_ids == [image_id * 100 + k for k in range(len(question_ids))]


def test_answers_are_normalisation_variants_of_the_canonical_one(
        vqa: list[tuple[dict, dict]]) -> None:
    n_variants = 0
    for _, a in vqa:
        answers = [x["answer"] for x in a["answers"]]
        assert all(normalize_answer(x) == a["multiple_choice_answer"] for x in answers)
        assert answers.count(a["multiple_choice_answer"]) >= 8
        n_variants += 10 - answers.count(a["multiple_choice_answer"])
    assert n_variants > 0


# ---------------------------------------------------------------- scenes and held-out pairs


def test_scene_layout(scenes: dict) -> None:
    cell = 64 / 3
    for scene in scenes.values():
        objects = scene["objects"]
        assert 1 <= len(objects) <= 3
        cells = [(o["row"], o["col"]) for o in objects]
        assert cells == sorted(set(cells))  # distinct, in reading order
        for o in objects:
            assert o["colour"] in COLOURS and o["shape"] in SHAPES and o["size"] in SIZES
            # The whole shape stays inside its cell.
            assert o["col"] * cell <= o["x"] - o["radius"] and o["x"] + o["radius"] <= (
                o["col"] + 1) * cell
            assert o["row"] * cell <= o["y"] - o["radius"] and o["y"] + o["radius"] <= (
                o["row"] + 1) * cell
    radii = {o["size"]: o["radius"] for s in scenes.values() for o in s["objects"]}
    assert radii["large"] > 1.5 * radii["small"]


def test_held_out_pairs(medium: Path) -> None:
    assert len(HELD_OUT_PAIRS) == 3
    held_out = {tuple(p) for p in HELD_OUT_PAIRS}
    seen = set()
    for scene in _load(medium / "scenes.json").values():
        pairs = {(o["colour"], o["shape"]) for o in scene["objects"]}
        if scene["split"] == "test_novel":
            assert pairs & held_out
        else:
            assert not pairs & held_out
            seen |= pairs
    # Every colour and every shape of a held-out pair is still seen with other partners.
    assert {c for c, _ in seen} == set(COLOURS)
    assert {s for _, s in seen} == set(SHAPES)


def test_exists_questions_never_name_a_held_out_pair_outside_test_novel(medium: Path) -> None:
    held_out = [_article(f"{c} {s}") for c, s in HELD_OUT_PAIRS]
    questions = _load(medium / "vqa_questions_train.json")["questions"]
    assert not [q for q in questions if any(p in q["question"] for p in held_out)]


# ---------------------------------------------------------------- captions vs scenes


def test_captions_follow_the_grammar(tiny: Path, scenes: dict) -> None:
    for entry in _load(tiny / "captions.json")["images"]:
        objects = scenes[str(entry["cocoid"])]["objects"]
        raws = [s["raw"] for s in entry["sentences"]]
        phrases = [_article(f"{o['size']} {o['colour']} {o['shape']}") for o in objects]
        short = [_article(f"{o['colour']} {o['shape']}") for o in objects]
        where = [f"in the {POSITIONS[o['row'] * 3 + o['col']]}" for o in objects]
        joined = phrases[0] if len(phrases) == 1 else (
            ", ".join(phrases[:-1]) + " and " + phrases[-1])
        assert raws[0] == joined
        number = ("one", "two", "three")[len(objects) - 1]
        assert raws[1].startswith(f"there {'is' if len(objects) == 1 else 'are'} {number} shape")
        assert raws[1].endswith(": " + joined)
        assert all(f"{p} {w}" in raws[2] for p, w in zip(phrases, where))
        assert all(s in raws[4] for s in short) and "large" not in raws[4]
        _check_relation_caption(raws[3], objects, phrases, where)


def _check_relation_caption(raw: str, objects: list[dict], phrases: list[str],
                            where: list[str]) -> None:
    if len(objects) == 1:
        assert raw == f"a single {phrases[0][2:]} {where[0]}"
        return
    a, b = objects[0], objects[1]
    relation = raw[len(phrases[0]) + 1:].split(" a ")[0].split(" an ")[0]
    assert raw.startswith(phrases[0])
    # The stated relation holds in pixel coordinates.
    if relation == "to the left of":
        assert a["x"] < b["x"]
    elif relation == "to the right of":
        assert a["x"] > b["x"]
    else:
        assert relation == "above" and a["y"] < b["y"] and a["col"] == b["col"]
    if len(objects) == 3:
        assert raw.endswith(f" and {phrases[2]} {where[2]}")


# ---------------------------------------------------------------- answers vs scenes


def _answer_from_scene(question: str, objects: list[dict]) -> str:
    """Recompute the answer of a question from scenes.json alone."""
    def matching(**attrs: str) -> list[dict]:
        return [o for o in objects if all(o[k] == v for k, v in attrs.items())]

    words = question.rstrip("?").split()
    if question == "how many shapes are there?":
        return str(len(objects))
    if question.startswith("how many") and words[3] == "shapes":
        return str(len(matching(colour=words[2])))
    if question.startswith("how many"):
        return str(len(matching(shape=words[2][:-1])))
    if question.startswith("what colour is the"):
        attrs = {"shape": words[-1]} | ({"size": words[-2]} if len(words) == 6 else {})
        (obj,) = matching(**attrs)
        return obj["colour"]
    if question.startswith("what shape is the"):
        attrs = {"colour": words[-2]} | ({"size": words[-3]} if len(words) == 7 else {})
        (obj,) = matching(**attrs)
        return obj["shape"]
    if question.startswith("is there"):
        return "yes" if matching(colour=words[-2], shape=words[-1]) else "no"
    return _relative_answer(question, matching)


def _relative_answer(question: str, matching) -> str:
    choose = re.fullmatch(r"is the (\w+) (\w+) (left or right of|above or below) the (\w+) "
                          r"(\w+)\?", question)
    if choose:
        (a,) = matching(colour=choose[1], shape=choose[2])
        (b,) = matching(colour=choose[4], shape=choose[5])
        if choose[3] == "left or right of":
            assert a["col"] != b["col"]
            return "left" if a["x"] < b["x"] else "right"
        assert a["row"] != b["row"]
        return "above" if a["y"] < b["y"] else "below"
    match = re.fullmatch(r"is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?",
                         question)
    assert match, question
    (a,) = matching(colour=match[1], shape=match[2])
    (b,) = matching(colour=match[4], shape=match[5])
    holds = {"left of": a["x"] < b["x"], "right of": a["x"] > b["x"],
             "above": a["y"] < b["y"], "below": a["y"] > b["y"]}[match[3]]
    # Only strict relations are asked: different columns (or rows) in the grid.
    assert (a["col"] != b["col"]) if match[3] in ("left of", "right of") else (
        a["row"] != b["row"])
    return "yes" if holds else "no"


def test_answers_agree_with_scenes(vqa: list[tuple[dict, dict]], scenes: dict) -> None:
    for q, a in vqa:
        objects = scenes[str(q["image_id"])]["objects"]
        assert _answer_from_scene(q["question"], objects) == a["multiple_choice_answer"], q


def test_question_mix(medium: Path) -> None:
    annotations = _load(medium / "vqa_annotations_train.json")["annotations"]
    by_type: dict[str, list[str]] = {}
    for a in annotations:
        by_type.setdefault(a["question_type"], []).append(a["multiple_choice_answer"])
    assert set(by_type) == {"colour", "shape", "count", "exists", "relative_position",
                            "relative_direction"}
    directions = by_type["relative_direction"]
    assert len(directions) > 1000 and set(directions) == {"left", "right", "above", "below"}
    for word in ("left", "above"):  # each axis's two answers about equally often
        share = directions.count(word) / (directions.count(word) + directions.count(
            {"left": "right", "above": "below"}[word]))
        assert 0.44 < share < 0.56, (word, share)
    assert {"0", "1", "2", "3"} <= set(by_type["count"])
    for kind in ("exists", "relative_position"):
        answers = by_type[kind]
        assert len(answers) > 1000
        assert 0.46 < answers.count("yes") / len(answers) < 0.54, kind


# ---------------------------------------------------------------- the pictures


def _nearest_colour(pixel: np.ndarray) -> tuple[str, float]:
    distances = {c: float(np.linalg.norm(pixel - np.array(rgb))) for c, rgb in RGB.items()}
    name = min(distances, key=distances.__getitem__)
    return name, distances[name]


def test_object_centres_have_the_object_colour(tiny: Path, scenes: dict) -> None:
    for image_id, scene in scenes.items():
        pixels = np.asarray(Image.open(tiny / "images" / f"{int(image_id):06d}.png"),
                            dtype=np.float32)
        for o in scene["objects"]:
            y, x = int(o["y"]), int(o["x"])
            centre = pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
            name, distance = _nearest_colour(centre)
            assert name == o["colour"] and distance < 45, (image_id, o, centre)


def test_background_is_never_a_shape_colour(tiny: Path, scenes: dict) -> None:
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    for image_id, scene in list(scenes.items())[:30]:
        pixels = np.asarray(Image.open(tiny / "images" / f"{int(image_id):06d}.png"),
                            dtype=np.float32)
        away = np.ones((64, 64), dtype=bool)
        for o in scene["objects"]:
            away &= np.hypot(xx - o["x"], yy - o["y"]) > 1.5 * o["radius"] + 1
        background = pixels[away]
        palette = np.array(list(RGB.values()), dtype=np.float32)
        nearest = np.linalg.norm(background[:, None, :] - palette[None], axis=2).min(axis=1)
        assert nearest.min() > 80, image_id
        assert background.std() > 3  # textured and noisy, not flat


# ---------------------------------------------------------------- errors and reruns


@pytest.mark.parametrize("kwargs", [{"image_size": 8}, {"seed": -1}, {"n_train": -5},
                                    {"n_train": 0, "n_val": 0, "n_test": 0, "n_test_novel": 0}])
def test_bad_parameters_raise_a_clear_error(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(TuwenError, match="shapes: "):
        generate_shapes(tmp_path, progress=False, **kwargs)


def test_rerun_with_fewer_images_removes_stale_ones(tmp_path: Path) -> None:
    generate_shapes(tmp_path, n_train=6, n_val=0, n_test=0, n_test_novel=0, progress=False)
    (tmp_path / "images" / "notes.txt").write_text("keep me")
    manifest = generate_shapes(tmp_path, n_train=3, n_val=0, n_test=0, n_test_novel=1,
                               progress=False)
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == ["000001.png", "000002.png", "000003.png", "000004.png", "notes.txt"]
    assert _load(tmp_path / "manifest.json") == manifest


def test_the_readers_read_every_generated_file(tiny: Path) -> None:
    captions = read_karpathy(tiny / "captions.json")
    assert not captions.skipped
    assert len(captions.records) == sum(TINY.values())
    assert all(len(r.captions) == 5 and r.image_path.is_file() for r in captions.records)
    for split in ("train", "val", "test", "test_novel"):
        vqa = read_vqav2(tiny / f"vqa_questions_{split}.json",
                         tiny / f"vqa_annotations_{split}.json",
                         image_pattern="images/{image_id:06d}.png")
        assert not vqa.skipped and vqa.records
        assert all(len(q.answers) == 10 for q in vqa.records)
