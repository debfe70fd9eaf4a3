"""LLaVA-format instruction data (``format: llava``): multi-turn and text-only conversations
read from a JSON list, structural problems as one-line errors, unusable conversations
skipped with their sample id, and the dataset doctor's findings on them."""

import json
from pathlib import Path

import pytest
from PIL import Image

from tuwen.config import load_config
from tuwen.data.doctor import check_data
from tuwen.data.prepare import read_split, split_labels
from tuwen.data.readers_llava import read_llava
from tuwen.errors import ConfigError, DataError

COLOUR = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def turn(speaker: str, text: str) -> dict:
    return {"from": speaker, "value": text}


def samples() -> list[dict]:
    """Three conversations about images (one multi-turn) and one without an image."""
    return [
        {"id": "red-1", "image": "pics/red.png", "conversations": [
            turn("human", "<image>\nWhat colour is the picture?"), turn("gpt", "It is red."),
            turn("human", "Is it dark?"), turn("gpt", "No, it is bright.")]},
        {"id": "blue-1", "image": "pics/blue.png", "conversations": [
            turn("human", "What colour is this?\n<image>"), turn("gpt", "Blue.")]},
        {"id": 7, "image": "pics/green.png", "conversations": [
            turn("human", "<image>\nName the colour."), turn("gpt", "Green.")]},
        {"id": "text-1", "conversations": [
            turn("human", "What is two plus two?"), turn("gpt", "Four.")]},
    ]


def write_llava(root: Path, records: list, name: str = "chat.json") -> Path:
    (root / "pics").mkdir(parents=True, exist_ok=True)
    for colour, rgb in COLOUR.items():
        Image.new("RGB", (32, 32), rgb).save(root / "pics" / f"{colour}.png")
    path = root / name
    path.write_text(json.dumps(records))
    return path


def llava_config(root: Path, *extra: str):
    return load_config(None, [f"data.root={root}", "data.image_size=32",
                              'data.sources=[{"format": "llava", "path": "chat.json"}]', *extra])


def test_conversations_are_read_multi_turn_and_text_only(tmp_path):
    write_llava(tmp_path, samples())
    data = read_split(llava_config(tmp_path).data, "train")
    assert split_labels(data) == {"chat"} and not data.skipped
    by_id = {c.conversation_id: c for c in data.conversations}
    assert set(by_id) == {"red-1", "blue-1", 7, "text-1"}
    red = by_id["red-1"]
    assert red.image_path == tmp_path / "pics" / "red.png" and red.image_id == "pics/red.png"
    assert red.turns == (("user", "<image>\nWhat colour is the picture?"),
                         ("assistant", "It is red."), ("user", "Is it dark?"),
                         ("assistant", "No, it is bright."))
    assert by_id["text-1"].image_path is None and by_id["text-1"].image_id is None
    # the tokenizer of a small decoder learns the turns' words, not the image marker
    assert "It is red." in data.texts() and not any("<image>" in t for t in data.texts())


def test_image_root_and_per_sample_splits(tmp_path):
    records = samples()
    records[0]["split"], records[1]["split"] = "val", "train"
    write_llava(tmp_path / "elsewhere", [])
    (tmp_path / "chat.json").write_text(json.dumps(records))
    read = read_llava(tmp_path / "chat.json", image_root=tmp_path / "elsewhere", splits=["val"],
                      split="val")
    assert [c.conversation_id for c in read.conversations] == ["red-1", 7, "text-1"]
    assert read.conversations[0].image_path == tmp_path / "elsewhere" / "pics" / "red.png"


@pytest.mark.parametrize("doc, message", [
    ({"conversations": []}, "chat.json: expected a list of conversations, got an object"),
    (["x"], "chat.json, record 0: expected an object, got a string"),
    ([{"id": "a"}], "chat.json, record 0, key 'conversations': missing required key"),
    ([{"id": "a", "conversations": {}}], "key 'conversations': expected a list, got an object"),
    ([{"id": "a", "conversations": [turn("human", 3)]}],
     "record 0, key 'conversations[0].value': expected a string, got an integer"),
    ([{"id": "a", "conversations": [{"value": "hi"}]}],
     "record 0, key 'conversations[0].from': missing required key"),
    ([{"id": 1.5, "conversations": []}], "key 'id': expected"),
    ([{"id": "a", "image": 3, "conversations": []}], "key 'image': expected a file name"),
])
def test_structural_problems_are_one_line_errors_naming_file_record_and_key(tmp_path, doc,
                                                                             message):
    path = write_llava(tmp_path, doc)
    with pytest.raises(DataError, match=None) as err:
        read_llava(path)
    assert message in str(err.value) and "\n" not in str(err.value)


BAD = [
    ({"id": "empty", "image": "pics/red.png", "conversations": [
        turn("human", "<image>\nWhat is it?"), turn("gpt", "  ")]}, "turn 1: empty"),
    ({"id": "two-images", "image": "pics/red.png", "conversations": [
        turn("human", "<image><image>\nWhat is it?"), turn("gpt", "Red.")]},
     "2 <image> markers, expected one"),
    ({"id": "no-marker", "image": "pics/red.png", "conversations": [
        turn("human", "What is it?"), turn("gpt", "Red.")]}, "0 <image> markers, expected one"),
    ({"id": "stray-marker", "conversations": [
        turn("human", "<image>\nWhat is it?"), turn("gpt", "Red.")]},
     "<image> in a conversation without an image"),
    ({"id": "two-humans", "image": "pics/red.png", "conversations": [
        turn("human", "<image>\nWhat is it?"), turn("human", "Well?"), turn("gpt", "Red.")]},
     "turn 1: turns do not alternate human/gpt (a gpt turn was expected)"),
    ({"id": "open-end", "image": "pics/red.png", "conversations": [
        turn("human", "<image>\nWhat is it?"), turn("gpt", "Red."), turn("human", "And?")]},
     "the conversation does not end with a gpt turn"),
    ({"id": "robot", "image": "pics/red.png", "conversations": [
        turn("human", "<image>\nWhat is it?"), turn("robot", "Red.")]},
     "turn 1: unknown speaker 'robot' (expected human or gpt)"),
    ({"id": "no-turns", "conversations": []}, "no turns"),
]


def test_unusable_conversations_are_skipped_with_their_sample_id(tmp_path):
    missing = {"id": "lost", "image": "pics/lost.png", "conversations": [
        turn("human", "<image>\nWhat is it?"), turn("gpt", "Red.")]}
    path = write_llava(tmp_path, [*samples(), *(rec for rec, _ in BAD), missing])
    read = read_llava(path)
    assert len(read.conversations) == len(samples())
    reasons = [f"chat.json sample {rec['id']!r}: {problem}" for rec, problem in BAD]
    assert read.skipped == [*reasons, f"chat.json sample 'lost': image not found: "
                                      f"{tmp_path / 'pics' / 'lost.png'}"]


def test_the_source_feeds_only_the_chat_task(tmp_path):
    write_llava(tmp_path, samples())
    config = llava_config(tmp_path)
    assert config.data.provides() == {"chat"}
    with pytest.raises(ConfigError, match="tasks .'caption'.: format 'llava' has no such"):
        load_config(None, [f"data.root={tmp_path}", 'data.sources=[{"format": "llava", '
                                                     '"path": "chat.json", "tasks": ["caption"]}]'])


def test_the_doctor_reports_each_problem_with_its_sample_id(tmp_path):
    missing = {"id": "lost", "image": "pics/lost.png", "conversations": [
        turn("human", "<image>\nWhat is it?"), turn("gpt", "Red.")]}
    write_llava(tmp_path, [*samples(), *(rec for rec, _ in BAD[:4]), missing])
    report = check_data(llava_config(tmp_path), splits=["train"], show_progress=False)
    part = report["parts"][0]
    assert part["conversations"] == 5 and part["text_only_conversations"] == 1
    assert part["bad_conversations"] == 4 and part["missing"] == 1
    found = part["examples"]["bad_conversations"]
    for rec, problem in BAD[:4]:
        assert f"chat.json sample {rec['id']!r}: {problem}" in found
    assert part["examples"]["missing"] == [f"sample 'lost' ({tmp_path / 'pics' / 'lost.png'})"]
    assert any("4 conversations that cannot be trained on" in w for w in report["warnings"])
    assert any("1 missing" in e and "sample 'lost'" in e for e in report["errors"])
