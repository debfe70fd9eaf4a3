"""LLaVA instruction data: a JSON list of conversations, each about one image or none.

    [{"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the bus?"},
                        {"from": "gpt", "value": "White and red."}, ...]},
     {"id": "text-7", "conversations": [...]}]

``image`` is relative to the image root; a sample without one is a text-only conversation.
``id`` is optional (default: the record's index), and so is ``split`` (as in a JSONL row).
A structural problem (not a list, a record that is not an object, no ``conversations`` list,
a turn whose ``from`` or ``value`` is not a string) is a one-line error naming the file,
record and key. A conversation that cannot be trained on (``conversation_problems``) or whose
image file is missing is skipped, its reason naming the sample id; the dataset doctor
reports the same problems.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tuwen.data.readers import _field, _json_type, _record, load_json
from tuwen.data.records import Conversation, Labelled
from tuwen.errors import DataError

IMAGE_TOKEN = "<image>"  # where the image stands in a human turn
# LLaVA's speakers, and the chat roles they are (the role names are accepted too)
ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}


def read_llava(path: str | Path, *, image_root: str | Path | None = None,
               splits: Iterable[str] | None = None, split: str = "",
               check_files: bool = True) -> Labelled:
    """The conversations of a LLaVA JSON file; ``image_root`` defaults to the file's folder.

    ``splits`` keeps only samples whose ``split`` is one of them (samples without one are
    kept); ``split`` is the split recorded for samples without one. ``check_files=False``
    (the doctor) keeps samples whose image file is missing."""
    path = Path(path)
    doc = load_json(path)
    if not isinstance(doc, list):
        raise DataError(path, f"expected a list of conversations, got {_json_type(doc)}")
    root = Path(image_root) if image_root is not None else path.parent
    keep = None if splits is None else set(splits)
    out = Labelled()
    for index, raw in enumerate(doc):
        rec = _record(raw, path, index)
        conv = _conversation(rec, path, index, root, split)
        if keep is not None and "split" in rec and conv.split not in keep:
            continue
        where = f"{path.name} sample {conv.conversation_id!r}"
        if problems := conversation_problems(conv):
            out.skipped.append(f"{where}: {problems[0]}")
        elif check_files and conv.image_path is not None and not conv.image_path.is_file():
            out.skipped.append(f"{where}: image not found: {conv.image_path}")
        else:
            out.conversations.append(conv)
    return out


def _conversation(rec: Mapping[str, Any], path: Path, index: int, root: Path,
                  split: str) -> Conversation:
    sample_id = _field(rec, "id", (int, str), path, index) if "id" in rec else index
    image = rec.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise DataError(path, f"expected a file name (a non-empty string), got "
                              f"{_json_type(image)}", index=index, key="image")
    record_split = _field(rec, "split", (str,), path, index) if "split" in rec else split
    turns = _field(rec, "conversations", (list,), path, index)
    parsed = []
    for t, turn in enumerate(turns):
        label = f"conversations[{t}]"
        if not isinstance(turn, dict):
            raise DataError(path, f"expected an object, got {_json_type(turn)}", index=index,
                            key=label)
        speaker = _field(turn, "from", (str,), path, index, label=f"{label}.from")
        text = _field(turn, "value", (str,), path, index, label=f"{label}.value")
        parsed.append((ROLES.get(speaker, speaker), text))
    return Conversation(sample_id, image, None if image is None else root / image,
                        record_split, tuple(parsed))


def conversation_problems(conv: Conversation) -> list[str]:
    """Why ``conv`` cannot be trained on, if it cannot: no turns, an empty turn, a speaker
    that is not human or gpt, turns that do not alternate human/gpt from a human turn, a last
    turn that is not gpt's, or an ``<image>`` count that is not one (with an image) or not
    zero (without one)."""
    if not conv.turns:
        return ["no turns"]
    problems = []
    for i, (role, text) in enumerate(conv.turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role not in ("user", "assistant"):
            problems.append(f"turn {i}: unknown speaker {role!r} (expected human or gpt)")
        elif role != expected:
            problems.append(f"turn {i}: turns do not alternate human/gpt (a "
                            f"{'human' if expected == 'user' else 'gpt'} turn was expected)")
        if not text.replace(IMAGE_TOKEN, "").strip():
            problems.append(f"turn {i}: empty")
    if conv.turns[-1][0] != "assistant":
        problems.append("the conversation does not end with a gpt turn")
    markers = sum(text.count(IMAGE_TOKEN) for _, text in conv.turns)
    if conv.image_path is not None and markers != 1:
        problems.append(f"{markers} {IMAGE_TOKEN} markers, expected one")
    if conv.image_path is None and markers:
        problems.append(f"{IMAGE_TOKEN} in a conversation without an image")
    return problems
