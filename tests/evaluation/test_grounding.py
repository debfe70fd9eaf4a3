"""Attention on the objects a relative-position question names (shapes data)."""

import json
from types import SimpleNamespace

import pytest
import torch

from tuwen.config import TextConfig
from tuwen.data.shapes import read_scenes
from tuwen.data.shapes_scene import ShapeObject
from tuwen.data.tokenizer import train_tokenizer
from tuwen.errors import DataError
from tuwen.tasks.metrics.grounding import (
    load_scenes,
    named_objects,
    object_patches,
    relation_grounding,
)


def obj(colour, shape, x, y, radius=4.0):
    return ShapeObject(colour, shape, "small", int(y // 21.4), int(x // 21.4), x, y, radius)


RED_CIRCLE = obj("red", "circle", 10.0, 10.0)     # top left: patch 0 of a 4x4 grid on 64 px
BLUE_SQUARE = obj("blue", "square", 32.0, 53.0)   # bottom middle: on the 32 px column edge


def test_object_patches_are_those_its_bounding_square_overlaps():
    assert object_patches(RED_CIRCLE, 64, (4, 4)) == [0]
    assert object_patches(BLUE_SQUARE, 64, (4, 4)) == [13, 14]
    big = obj("red", "circle", 32.0, 32.0, radius=12.0)  # 20..44 on both axes
    assert object_patches(big, 64, (4, 4)) == [5, 6, 9, 10]
    assert object_patches(obj("red", "circle", 63.0, 63.0, 4.0), 64, (4, 4)) == [15]


def test_named_objects_finds_both_shape_words_or_gives_up():
    scene = [RED_CIRCLE, BLUE_SQUARE]
    q = "is the red circle left of the blue square?"
    named = named_objects(q, scene)
    assert [(q[i: i + 6], o) for i, o in named] == [("circle", RED_CIRCLE),
                                                   ("square", BLUE_SQUARE)]
    assert named_objects("is the red circle above the blue square", scene) is not None
    assert named_objects("what colour is the circle?", scene) is None
    assert named_objects(q, [RED_CIRCLE]) is None                     # B not in the scene
    assert named_objects(q, [RED_CIRCLE, RED_CIRCLE, BLUE_SQUARE]) is None  # ambiguous


class FocusedFusion(torch.nn.Module):
    """Layer 0 attends evenly to all 16 patches; layer 1 evenly to ``focus`` (per row)."""

    def __init__(self, focus):
        super().__init__()
        self.spec = SimpleNamespace(text=TextConfig())
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.focus = focus

    def encode_image(self, pixels):
        return SimpleNamespace(tokens=torch.zeros(len(pixels), 16, 2), grid=(4, 4))

    def encode_text(self, ids, mask):
        return ids

    def fuse(self, ids, image_tokens, output_attentions=False):
        b, length = ids.shape
        uniform = torch.full((b, 2, length, 16), 1 / 16)
        focused = torch.zeros(b, 2, length, 16)
        for row, patches in enumerate(self.focus[:b]):
            focused[row, :, :, patches] = 1 / len(patches)
        return SimpleNamespace(attentions=(uniform, focused))


def test_attention_share_on_named_objects_against_uniform():
    questions = ["is the red circle left of the blue square?",
                 "is the blue square below the red circle?",
                 "how many shapes are there?"]  # not a relation question: left out
    scene = [RED_CIRCLE, BLUE_SQUARE]
    tok = train_tokenizer(questions, vocab_size=60)
    # row 0 looks at both objects' 3 patches; row 1 only at the red circle's
    model = FocusedFusion([[0, 13, 14], [0], list(range(16))])
    out = relation_grounding(model, tok, torch.zeros(3, 3, 64, 64), questions, [scene] * 3,
                             max_length=20)
    assert out["questions"] == 2
    assert out["uniform"] == pytest.approx((1 + 2 + 2 + 1) / 4 / 16, abs=1e-4)
    assert out["per_layer"][0] == pytest.approx(out["uniform"], abs=1e-4)
    # words: row 0 circle 1/3, square 2/3; row 1 square 0, circle 1
    assert out["per_layer"][1] == pytest.approx((1 / 3 + 2 / 3 + 0 + 1) / 4, abs=1e-4)
    assert out["best_head_per_layer"] == pytest.approx(out["per_layer"], abs=1e-4)
    # the same scene drawn at 128 px and fed at 64: coordinates are in the drawn image's pixels
    doubled = [ShapeObject(o.colour, o.shape, o.size, o.row, o.col, 2 * o.x, 2 * o.y,
                           2 * o.radius) for o in scene]
    scaled = relation_grounding(model, tok, torch.zeros(3, 3, 64, 64), questions,
                                [doubled] * 3, max_length=20, scene_size=128)
    assert scaled == out
    none = relation_grounding(model, tok, torch.zeros(1, 3, 64, 64), questions[2:], [scene], 20)
    assert none is None


def test_read_scenes_and_its_errors(tmp_path):
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps({"7": {"split": "test", "objects": [RED_CIRCLE.to_json()]}}))
    assert read_scenes(path) == {"7": [RED_CIRCLE]}
    with pytest.raises(DataError, match="scenes.json: missing"):
        read_scenes(tmp_path / "missing" / "scenes.json")
    path.write_text('{"7": {"objects": [')
    with pytest.raises(DataError, match="not valid JSON"):
        read_scenes(path)
    broken = RED_CIRCLE.to_json()
    del broken["radius"]
    path.write_text(json.dumps({"7": {"objects": [broken]}}))
    with pytest.raises(DataError, match="image 7 lacks 'radius'"):
        read_scenes(path)
    path.write_text(json.dumps({"7": {"split": "test"}}))
    with pytest.raises(DataError, match="no list of objects"):
        read_scenes(path)


def test_load_scenes_needs_a_shapes_folder(tiny_shapes, tmp_path):
    scenes = load_scenes(tiny_shapes)
    assert scenes.image_size == 32 and len(scenes.objects) == 64 + 8 + 16 + 8
    assert all(1 <= len(objs) <= 3 for objs in scenes.objects.values())
    assert load_scenes(tmp_path) is None  # no scenes.json: not shapes data
    (tmp_path / "scenes.json").write_text("{}")
    (tmp_path / "manifest.json").write_text('{"dataset": "other"}')
    assert load_scenes(tmp_path) is None  # a manifest without image_size
