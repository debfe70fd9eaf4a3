"""Every reader on random bytes and on mutated valid files: only tuwen's own error type
(naming the file) ever escapes."""

import io
import json
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuwen.data.coco import read_coco_captions
from tuwen.data.readers import read_karpathy, read_vqav2
from tuwen.data.readers_table import read_csv, read_jsonl
from tuwen.data.readers_wds import iter_shard
from tuwen.errors import TuwenError

KARPATHY = json.dumps({"images": [
    {"filename": "a.png", "split": "train", "sentences": [{"raw": "a red circle"}]},
    {"filename": "b.png", "split": "test", "sentences": [{"raw": "a blue square"}]}]}).encode()
COCO = json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                   "annotations": [{"image_id": 1, "caption": "a red circle"}]}).encode()
QUESTIONS = json.dumps({"questions": [{"question_id": 1, "image_id": 1,
                                       "question": "what colour?"}]}).encode()
ANNOTATIONS = json.dumps({"annotations": [{
    "question_id": 1, "image_id": 1, "question_type": "what", "answer_type": "other",
    "multiple_choice_answer": "red", "answers": [{"answer": "red"}] * 10}]}).encode()
JSONL = b'{"image": "a.png", "caption": "a red circle"}\n{"image": "b.png", "captions": ["x"]}\n'
CSV = b"image,caption,split\na.png,a red circle,train\nb.png,a blue square,test\n"


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


SHARD = _tar({"000.txt": b"a red circle", "000.jpg": b"\xff\xd8", "001.json": b'{"caption": 1}'})


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """``valid`` with bytes flipped, cut, inserted or deleted."""
    def apply(edits: list[tuple[int, int, int]]) -> bytes:
        data = bytearray(valid)
        for kind, at, value in edits:
            at = at % (len(data) + 1)
            if kind == 0 and at < len(data):
                data[at] = value
            elif kind == 1:
                data.insert(at, value)
            elif kind == 2:
                del data[at:at + 1 + value % 8]
            else:
                del data[at:]
        return bytes(data)
    edit = st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255))
    return st.lists(edit, min_size=1, max_size=6).map(apply)


def random_or_mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=400), mutated(valid))


def only_tuwen_errors(read, files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        try:
            read(Path(tmp))
        except TuwenError as err:
            assert tmp in str(err) and "\n" not in str(err), str(err)


@given(random_or_mutated(KARPATHY))
def test_karpathy(data):
    only_tuwen_errors(lambda d: read_karpathy(d / "c.json", check_files=False), {"c.json": data})


@given(random_or_mutated(COCO))
def test_coco_captions(data):
    only_tuwen_errors(lambda d: read_coco_captions(d / "c.json", check_files=False),
                      {"c.json": data})


@given(random_or_mutated(QUESTIONS), random_or_mutated(ANNOTATIONS))
def test_vqav2(questions, annotations):
    only_tuwen_errors(lambda d: read_vqav2(d / "q.json", d / "a.json", check_files=False),
                      {"q.json": questions, "a.json": annotations})


@given(random_or_mutated(JSONL))
def test_jsonl(data):
    only_tuwen_errors(lambda d: read_jsonl(d / "c.jsonl", check_files=False), {"c.jsonl": data})


@given(random_or_mutated(CSV))
def test_csv(data):
    only_tuwen_errors(lambda d: read_csv(d / "c.csv", check_files=False), {"c.csv": data})


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # a damaged shard warns, by design
@given(random_or_mutated(SHARD))
def test_webdataset_shard(data):
    only_tuwen_errors(lambda d: list(iter_shard(d / "s.tar")), {"s.tar": data})
