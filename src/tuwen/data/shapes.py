"""The synthetic shapes dataset: pictures of coloured shapes with captions and VQA.

``generate_shapes(DIR)`` writes, deterministically for a seed::

    DIR/images/{image_id:06d}.png          RGB, image_size x image_size
    DIR/captions.json                      Karpathy split format, 5 captions per image
    DIR/vqa_questions_{split}.json         VQAv2 questions, per split
    DIR/vqa_annotations_{split}.json       VQAv2 annotations, 10 answers per question
    DIR/scenes.json                        ground truth: the objects of every image
    DIR/manifest.json                      the parameters; written last

Splits are train, val, test and test_novel; test_novel scenes each hold at least one of
``HELD_OUT_PAIRS``, which never occur in the other splits. Every image draws from its own
RNG seeded by (seed, image_id), so an image does not depend on the order of generation.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import fields
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tuwen.data.shapes_scene import (
    COLOURS,
    HELD_OUT_PAIRS,
    SHAPES,
    SIZES,
    ShapeObject,
    render_scene,
    sample_scene,
)
from tuwen.data.shapes_text import (
    Question,
    make_answers,
    make_captions,
    make_questions,
    tokenize_caption,
)
from tuwen.errors import DataError, TuwenError

__all__ = ["COLOURS", "FORMAT_VERSION", "HELD_OUT_PAIRS", "SHAPES", "SIZES", "SPLITS",
           "generate_shapes", "shapes_manifest"]

# 2: "left or right of" / "above or below" questions (relative_direction) added
FORMAT_VERSION = 2
SPLITS: tuple[str, ...] = ("train", "val", "test", "test_novel")
MIN_IMAGE_SIZE = 32  # below this a small shape is a few pixels and colours smear
MAX_QUESTIONS_PER_IMAGE = 100  # question_id = image_id * 100 + k
_VQA_INFO = {"description": "tuwen synthetic shapes: coloured shapes on a textured background",
             "version": str(FORMAT_VERSION), "contributor": "tuwen"}
_LICENSE = {"name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}
_IMAGE_NAME = re.compile(r"^(\d{6,})\.png$")


def shapes_manifest(*, seed: int = 0, image_size: int = 64, n_train: int = 10000,
                    n_val: int = 500, n_test: int = 1000, n_test_novel: int = 500) -> dict:
    """The manifest ``generate_shapes`` writes for these parameters, without generating.

    Compare it with an existing ``DIR/manifest.json`` to decide whether to regenerate.
    """
    return {"dataset": "shapes", "format_version": FORMAT_VERSION, "seed": int(seed),
            "image_size": int(image_size), "n_train": int(n_train), "n_val": int(n_val),
            "n_test": int(n_test), "n_test_novel": int(n_test_novel),
            "held_out_pairs": [list(p) for p in HELD_OUT_PAIRS],
            "colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES)}


def generate_shapes(out_dir: str | Path, *, seed: int = 0, image_size: int = 64,
                    n_train: int = 10000, n_val: int = 500, n_test: int = 1000,
                    n_test_novel: int = 500, progress: bool = True,
                    workers: int | None = None) -> dict:
    """Writes the dataset and returns the manifest dict (also written to out_dir/manifest.json).

    Images are drawn by ``workers`` processes (default: one per CPU); each image's random
    numbers depend only on the seed and its id, so the files are the same for any count.
    """
    counts = {"train": n_train, "val": n_val, "test": n_test, "test_novel": n_test_novel}
    _check_params(seed, image_size, counts)
    out = Path(out_dir)
    images_dir = out / "images"
    _prepare_dir(out, images_dir, sum(counts.values()))

    plan = _split_plan(counts)
    karpathy: list[dict] = []
    scenes: dict[str, dict] = {}
    vqa: dict[str, tuple[list[dict], list[dict]]] = {s: ([], []) for s in SPLITS}
    draw = partial(_write_image, images_dir, seed, image_size=image_size)
    workers = min(workers or os.cpu_count() or 1, max(1, len(plan) // 500))
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        drawn = (pool.map(draw, *zip(*plan), chunksize=100) if workers > 1
                 else (draw(image_id, split) for image_id, split in plan))
        scene_objects = list(tqdm(drawn, total=len(plan), desc="shapes", unit="img",
                                  disable=not progress))
    for imgid, ((image_id, split), objects) in enumerate(zip(plan, scene_objects)):
        scenes[str(image_id)] = {"split": split, "objects": [o.to_json() for o in objects]}
        karpathy.append(_karpathy_entry(imgid, image_id, split, make_captions(objects)))
        text_rng = np.random.default_rng([seed, image_id, 1])
        questions = make_questions(objects, text_rng, allow_held_out=split == "test_novel")
        for k, question in enumerate(questions):
            q, a = _vqa_records(image_id, image_id * MAX_QUESTIONS_PER_IMAGE + k, question,
                                make_answers(question, text_rng))
            vqa[split][0].append(q)
            vqa[split][1].append(a)

    _write_json(out / "captions.json", {"dataset": "shapes", "images": karpathy})
    for split, (questions, answers) in vqa.items():
        _write_json(out / f"vqa_questions_{split}.json", _questions_file(split, questions))
        _write_json(out / f"vqa_annotations_{split}.json", _annotations_file(split, answers))
    _write_json(out / "scenes.json", scenes)
    manifest = shapes_manifest(seed=seed, image_size=image_size, n_train=n_train, n_val=n_val,
                               n_test=n_test, n_test_novel=n_test_novel)
    # Last, so a directory with a manifest is a complete one.
    _write_json(out / "manifest.json", manifest, indent=2)
    return manifest


def _check_params(seed: int, image_size: int, counts: dict[str, int]) -> None:
    def is_int(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(seed) or seed < 0:
        raise TuwenError(f"shapes: seed must be a non-negative integer, got {seed!r}")
    if not is_int(image_size) or image_size < MIN_IMAGE_SIZE:
        raise TuwenError(f"shapes: image_size must be an integer >= {MIN_IMAGE_SIZE}, "
                         f"got {image_size!r}")
    for split, n in counts.items():
        if not is_int(n) or n < 0:
            raise TuwenError(f"shapes: n_{split} must be a non-negative integer, got {n!r}")
    if sum(counts.values()) == 0:
        raise TuwenError("shapes: every split count is 0, nothing to generate")


def _prepare_dir(out: Path, images_dir: Path, n_images: int) -> None:
    """Create the folders; forget an older dataset here so it cannot pass as this one."""
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TuwenError(f"shapes: cannot create {images_dir}: {err.strerror}") from err
    manifest = out / "manifest.json"
    if not manifest.exists():
        return
    manifest.unlink()
    # Pictures beyond the new id range would otherwise linger in images/ (e.g. for
    # `tuwen index images/`); only numbered PNGs of a previous run are removed.
    for path in images_dir.iterdir():
        match = _IMAGE_NAME.match(path.name)
        if match and int(match.group(1)) > n_images:
            path.unlink()


def _split_plan(counts: dict[str, int]) -> list[tuple[int, str]]:
    """(image_id, split) for every image: ids from 1, splits in SPLITS order."""
    splits = [split for split in SPLITS for _ in range(counts[split])]
    return [(image_id, split) for image_id, split in enumerate(splits, start=1)]


def _write_image(images_dir: Path, seed: int, image_id: int, split: str,
                 image_size: int) -> list[ShapeObject]:
    rng = np.random.default_rng([seed, image_id, 0])
    objects = sample_scene(rng, image_size, novel=split == "test_novel")
    image = render_scene(rng, objects, image_size)
    # Noise makes pixels incompressible anyway; level 1 is twice as fast as the default.
    image.save(images_dir / f"{image_id:06d}.png", format="PNG", compress_level=1)
    return objects


def _karpathy_entry(imgid: int, image_id: int, split: str, captions: list[str]) -> dict:
    sentids = [imgid * len(captions) + k for k in range(len(captions))]
    sentences = [{"raw": raw, "tokens": tokenize_caption(raw), "imgid": imgid, "sentid": sentid}
                 for raw, sentid in zip(captions, sentids)]
    return {"filepath": "images", "filename": f"{image_id:06d}.png", "imgid": imgid,
            "cocoid": image_id, "split": split, "sentids": sentids, "sentences": sentences}


def _vqa_records(image_id: int, question_id: int, question: Question,
                 answers: list[str]) -> tuple[dict, dict]:
    q = {"image_id": image_id, "question": question.question, "question_id": question_id}
    a = {"question_id": question_id, "image_id": image_id,
         "question_type": question.question_type, "answer_type": question.answer_type,
         "multiple_choice_answer": question.answer,
         "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i}
                     for i, answer in enumerate(answers, start=1)]}
    return q, a


def _questions_file(split: str, questions: list[dict]) -> dict:
    return {"info": _VQA_INFO, "task_type": "Open-Ended", "data_type": "shapes",
            "data_subtype": split, "license": _LICENSE, "questions": questions}


def _annotations_file(split: str, annotations: list[dict]) -> dict:
    return {"info": _VQA_INFO, "license": _LICENSE, "data_type": "shapes",
            "data_subtype": split, "annotations": annotations}


def _write_json(path: Path, obj: object, indent: int | None = None) -> None:
    """Write atomically, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent), encoding="utf-8")
    os.replace(tmp, path)


SCENE_KEYS = tuple(f.name for f in fields(ShapeObject))  # what scenes.json holds per object


def read_scenes(path: str | Path) -> dict[str, list[ShapeObject]]:
    """``scenes.json`` as written by ``generate_shapes``: image id (a string) -> its objects.

    A missing file, malformed JSON or an object without one of ``SCENE_KEYS`` is a DataError
    naming the file (and the image id and key)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "missing (the shapes generator writes it beside captions.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(raw, dict):
        raise DataError(path, "expected an object of image id -> scene")
    scenes: dict[str, list[ShapeObject]] = {}
    for image_id, scene in raw.items():
        objects = scene.get("objects") if isinstance(scene, dict) else None
        if not isinstance(objects, list):
            raise DataError(path, f"scene of image {image_id} has no list of objects",
                            key="objects")
        for obj in objects:
            missing = [k for k in SCENE_KEYS if not isinstance(obj, dict) or k not in obj]
            if missing:
                raise DataError(path, f"an object of image {image_id} lacks {missing[0]!r}",
                                key=missing[0])
        scenes[image_id] = [ShapeObject(**{k: obj[k] for k in SCENE_KEYS}) for obj in objects]
    return scenes


def write_class_folders(shapes_dir: str | Path, out: str | Path, split: str) -> dict[str, int]:
    """The one-object images of ``split`` as an image folder (``out/<colour>_<shape>/``) for
    zero-shot classification; returns the images per class. On ``test_novel`` every such
    object is a colour-shape pair that training never showed: zero-shot by construction."""
    shapes_dir, out = Path(shapes_dir), Path(out)
    captions = json.loads((shapes_dir / "captions.json").read_text())
    in_split = {str(im["cocoid"]) for im in captions["images"] if im["split"] == split}
    counts: dict[str, int] = {}
    for image_id, objects in read_scenes(shapes_dir / "scenes.json").items():
        if len(objects) != 1 or image_id not in in_split:
            continue
        name = f"{objects[0].colour}_{objects[0].shape}"
        source = shapes_dir / "images" / f"{int(image_id):06d}.png"
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / source.name).write_bytes(source.read_bytes())
        counts[name] = counts.get(name, 0) + 1
    if not counts:
        raise DataError(shapes_dir, f"no one-object images in split {split!r}")
    return dict(sorted(counts.items()))
