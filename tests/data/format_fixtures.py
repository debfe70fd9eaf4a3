"""One tiny image-text dataset written in every published layout tuwen reads.

Six images (real JPEG and PNG files, different sizes) with captions and VQA questions, split
train/val. ``write(fmt, root)`` writes them in format ``fmt`` and returns the source config;
``canonical`` is what every reader must give back (per split: image bytes -> texts).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

ANSWERS = {"red": ["red"] * 9 + ["dark red"], "blue": ["blue"] * 10,
           "green": ["green"] * 8 + ["lime", "green"]}


@dataclass(frozen=True)
class Sample:
    image_id: int
    split: str
    colour: tuple[int, int, int]
    size: tuple[int, int]
    fmt: str  # JPEG or PNG
    captions: tuple[str, ...]
    question: str | None = None
    answer: str | None = None

    def image_bytes(self) -> bytes:
        out = io.BytesIO()
        image = Image.new("RGB", self.size, self.colour)
        image.paste((255, 255, 255), (0, 0, self.size[0] // 3, self.size[1] // 3))
        image.save(out, format=self.fmt, **({"quality": 95} if self.fmt == "JPEG" else {}))
        return out.getvalue()

    @property
    def ext(self) -> str:
        return "jpg" if self.fmt == "JPEG" else "png"

    @property
    def coco_name(self) -> str:
        return f"COCO_{self.split}2014_{self.image_id:012d}.jpg"

    def answers(self) -> list[str]:
        return ANSWERS[self.answer]


SAMPLES = (
    Sample(1, "train", (200, 30, 30), (48, 40), "JPEG", ("a red square", "a red box"),
           "what colour is it?", "red"),
    Sample(2, "train", (30, 30, 200), (40, 40), "PNG", ("a blue square",),
           "what colour is the square?", "blue"),
    Sample(3, "train", (30, 200, 30), (64, 48), "JPEG", ("a green square", "green"),
           "which colour?", "green"),
    Sample(4, "train", (200, 200, 30), (40, 56), "PNG", ("a yellow square",)),
    Sample(5, "val", (30, 200, 200), (40, 40), "JPEG", ("a cyan square",),
           "what colour is it?", "blue"),
    Sample(6, "val", (200, 30, 200), (56, 40), "PNG", ("a purple square", "purple")),
)
SPLITS = ("train", "val")


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def canonical(split: str, *, captions: bool = True, questions: bool = True) -> dict:
    """image bytes digest -> (sorted captions, sorted (question, answers)) for ``split``."""
    out = {}
    for s in SAMPLES:
        if s.split != split:
            continue
        caps = tuple(sorted(s.captions)) if captions else ()
        qs = ((s.question, tuple(s.answers())),) if questions and s.question else ()
        if caps or qs:
            out[digest(s.image_bytes())] = (caps, qs)
    return out


def as_canonical(data) -> dict:
    """A SplitData (or Labelled) in the shape of :func:`canonical`."""
    caps: dict[str, list[str]] = {}
    qs: dict[str, list] = {}
    for r in data.captions:
        caps.setdefault(digest(r.image_path.read_bytes()), []).extend(r.captions)
    for q in data.questions:
        qs.setdefault(digest(q.image_path.read_bytes()), []).append((q.question, q.answers))
    return {k: (tuple(sorted(caps.get(k, []))), tuple(sorted(qs.get(k, []))))
            for k in set(caps) | set(qs)}


# image_id -> the bytes to write instead of the real image (None: no image at all); the
# writers use it to plant broken files
BROKEN: dict[int, bytes | None] = {}


def image_data(sample: Sample) -> bytes | None:
    return BROKEN[sample.image_id] if sample.image_id in BROKEN else sample.image_bytes()


def _image(path: Path, sample: Sample) -> str:
    data = image_data(sample)
    if data is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path.name


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


# --- one writer per format -----------------------------------------------------------------


def write_karpathy(root: Path) -> dict:
    images = []
    for i, s in enumerate(SAMPLES):
        folder = "train2014" if s.split == "train" else ""  # filepath is optional
        _image(root / "images" / folder / f"{s.image_id}.{s.ext}", s)
        rec = {"filename": f"{s.image_id}.{s.ext}", "imgid": i, "split": s.split,
               "sentences": [{"raw": c, "tokens": c.split()} for c in s.captions],
               "cocoid": s.image_id}
        images.append({**rec, "filepath": folder} if folder else rec)
    _json(root / "dataset_coco.json", {"images": images, "dataset": "coco"})
    return {"format": "karpathy", "path": "dataset_coco.json", "image_root": "images"}


def write_coco(root: Path) -> dict:
    for split in SPLITS:
        samples = [s for s in SAMPLES if s.split == split]
        for s in samples:
            _image(root / f"{split}2017" / f"{s.image_id:012d}.{s.ext}", s)
        annotations = [{"id": 100 * s.image_id + k, "image_id": s.image_id, "caption": c}
                       for s in samples for k, c in enumerate(s.captions)]
        _json(root / "annotations" / f"captions_{split}2017.json",
              {"info": {}, "licenses": [],
               "images": [{"id": s.image_id, "file_name": f"{s.image_id:012d}.{s.ext}",
                           "width": s.size[0], "height": s.size[1]} for s in samples],
               "annotations": annotations})
    return {"format": "coco", "path": "annotations/captions_{split}2017.json",
            "image_root": "{split}2017"}


def write_vqav2(root: Path) -> dict:
    for split in SPLITS:
        samples = [s for s in SAMPLES if s.split == split and s.question]
        for s in [s for s in SAMPLES if s.split == split]:
            _image(root / f"{split}2014" / s.coco_name, s)
        _json(root / f"v2_OpenEnded_mscoco_{split}2014_questions.json",
              {"data_subtype": f"{split}2014", "task_type": "Open-Ended",
               "questions": [{"question_id": 10 * s.image_id, "image_id": s.image_id,
                              "question": s.question} for s in samples]})
        _json(root / f"v2_mscoco_{split}2014_annotations.json",
              {"annotations": [{"question_id": 10 * s.image_id, "image_id": s.image_id,
                                "question_type": "what color is the", "answer_type": "other",
                                "multiple_choice_answer": s.answer,
                                "answers": [{"answer": a, "answer_id": k + 1,
                                             "answer_confidence": "yes"}
                                            for k, a in enumerate(s.answers())]}
                               for s in samples]})
    return {"format": "vqav2", "questions": "v2_OpenEnded_mscoco_{split}2014_questions.json",
            "annotations": "v2_mscoco_{split}2014_annotations.json",
            "image_pattern": "{subtype}/COCO_{subtype}_{image_id:012d}.jpg"}


def _rows() -> list[dict]:
    rows = []
    for s in SAMPLES:
        image = f"pics/{s.image_id}.{s.ext}"
        rows.append({"image": image, "image_id": s.image_id, "split": s.split,
                     "captions": list(s.captions)})
        if s.question:
            rows.append({"image": image, "image_id": s.image_id, "split": s.split,
                         "question": s.question, "answers": s.answers(),
                         "question_id": 10 * s.image_id})
    return rows


def write_jsonl(root: Path) -> dict:
    for s in SAMPLES:
        _image(root / "pics" / f"{s.image_id}.{s.ext}", s)
    lines = []
    for row in _rows():  # one caption per line for the first image: "caption" works too
        if row["image_id"] == 1 and "captions" in row:
            lines += [{**{k: v for k, v in row.items() if k != "captions"}, "caption": c}
                      for c in row["captions"]]
        else:
            lines.append(row)
    (root / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"format": "jsonl", "path": "pairs.jsonl"}


def write_csv(root: Path) -> dict:
    for s in SAMPLES:
        _image(root / "pics" / f"{s.image_id}.{s.ext}", s)
    for split in SPLITS:
        with (root / f"{split}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, ["image", "image_id", "captions", "question", "answers",
                                   "question_id"])
            w.writeheader()
            for row in _rows():
                if row.pop("split") == split:
                    w.writerow({k: "|".join(v) if isinstance(v, list) else v
                                for k, v in row.items()})
    return {"format": "csv", "path": "{split}.csv"}


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def wds_members(samples, start: int = 0) -> list[tuple[str, bytes]]:
    """img2dataset's layout: one key per (image, caption); .txt, or .json only for some."""
    members, key = [], start
    for s in samples:
        for k, caption in enumerate(s.captions):
            name = f"{key:09d}"
            if image_data(s) is not None:
                members.append((f"{name}.{s.ext}", image_data(s)))
            meta = {"key": name, "caption": caption, "status": "success", "width": s.size[0]}
            members.append((f"{name}.json", json.dumps(meta).encode()))
            if k == 0:
                members.append((f"{name}.txt", caption.encode()))
            key += 1
    return members


def write_webdataset(root: Path) -> dict:
    for split in SPLITS:
        samples = [s for s in SAMPLES if s.split == split]
        for n, chunk in enumerate((samples[::2], samples[1::2])):
            path = root / "shards" / f"{split}-{n:05d}.tar"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tar_bytes(wds_members(chunk, start=100 * n)))
    return {"format": "webdataset", "shards": "shards/{split}-{00000..00001}.tar"}


def write_hf(root: Path) -> dict:
    """A save_to_disk DatasetDict with an Image feature (bytes inside the arrow files)."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("int64"),
                                  "captions": datasets.Sequence(datasets.Value("string")),
                                  "question": datasets.Value("string"),
                                  "answers": datasets.Sequence(datasets.Value("string"))})
    splits = {}
    for split in SPLITS:
        # an embedded image cannot be missing: "no image" is written as bytes of no image
        rows = [{"image": {"bytes": b"no image" if image_data(s) is None else image_data(s),
                           "path": None}, "image_id": s.image_id,
                 "captions": list(s.captions), "question": s.question,
                 "answers": s.answers() if s.question else []}
                for s in SAMPLES if s.split == split]
        splits[split] = datasets.Dataset.from_list(rows, features=features)
    datasets.disable_progress_bars()
    datasets.DatasetDict(splits).save_to_disk(str(root / "hf"))
    return {"format": "hf", "path": "hf", "text_column": "captions",
            "question_column": "question", "image_id_column": "image_id"}


def write_hf_json(root: Path) -> dict:
    """Local JSON-lines files read by ``load_dataset("json", data_files=...)``."""
    for s in SAMPLES:
        _image(root / "pics" / f"{s.image_id}.{s.ext}", s)
    for split in SPLITS:
        rows = [{"file": f"pics/{s.image_id}.{s.ext}", "texts": list(s.captions)}
                for s in SAMPLES if s.split == split]
        (root / f"hf_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"format": "hf", "builder": "json", "image_column": "file", "text_column": "texts",
            "data_files": {"train": "hf_train.jsonl", "val": "hf_val.jsonl"}, "image_root": "."}


WRITERS = {"karpathy": write_karpathy, "coco": write_coco, "vqav2": write_vqav2,
           "jsonl": write_jsonl, "csv": write_csv, "webdataset": write_webdataset,
           "hf": write_hf, "hf_json": write_hf_json}
# which labels each layout carries
LABELS = {"karpathy": {"captions"}, "coco": {"captions"}, "vqav2": {"questions"},
          "jsonl": {"captions", "questions"}, "csv": {"captions", "questions"},
          "webdataset": {"captions"}, "hf": {"captions", "questions"}, "hf_json": {"captions"}}
