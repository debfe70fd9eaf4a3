"""Every data format: the same tiny dataset in each published layout reads into the same
samples, trains, and fails clearly when broken."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import format_fixtures as ff
import pytest
import torch

from tiny import tiny_overrides
from tuwen.config import config_from_dict, load_config
from tuwen.data.dataset import EpochBatchSampler, JointDataset, example_repeats, join_by_image
from tuwen.data.images import ImageTransform
from tuwen.data.prepare import read_split
from tuwen.data.readers_table import read_csv, read_jsonl
from tuwen.data.streaming import StreamingDataset
from tuwen.errors import ConfigError, DataError
from tuwen.training.loop import train

FORMATS = list(ff.WRITERS)


def tasks_for(fmt: str) -> dict:
    caps = "captions" in ff.LABELS[fmt]
    qs = "questions" in ff.LABELS[fmt]
    return {"caption": float(caps), "itc": float(caps), "itm": float(caps), "vqa": float(qs)}


def config_for(root: Path, source: dict, fmt: str, **train):
    """``source`` as the only data source; with ``train`` settings, a tiny training run."""
    sets = [f"data.sources={json.dumps([source])}",
            *(f"train.tasks.{k}={v}" for k, v in tasks_for(fmt).items())]
    if train:
        return load_config(None, tiny_overrides(root, **train) + sets
                           + ["data.tokenizer.vocab_size=60"])
    return load_config(None, [f"data.root={root}", *sets])


# --- each layout reads into the same samples --------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_the_same_samples(fmt, tmp_path):
    cfg = config_for(tmp_path, ff.WRITERS[fmt](tmp_path), fmt)
    for split in ff.SPLITS:
        data = read_split(cfg.data, split)
        assert data.skipped == []
        assert ff.as_canonical(data) == ff.canonical(
            split, captions="captions" in ff.LABELS[fmt],
            questions="questions" in ff.LABELS[fmt]), (fmt, split)


def test_vqav2_images_by_an_id_to_file_map(tmp_path):
    source = ff.write_vqav2(tmp_path)
    files = {str(s.image_id): f"{s.split}2014/{s.coco_name}" for s in ff.SAMPLES}
    (tmp_path / "image_map.json").write_text(json.dumps(files))
    source = {**source, "image_pattern": None, "image_map": "image_map.json"}
    data = read_split(config_for(tmp_path, source, "vqav2").data, "train")
    assert ff.as_canonical(data) == ff.canonical("train", captions=False)
    (tmp_path / "image_map.json").write_text(json.dumps({"1": 5}))
    with pytest.raises(DataError, match=r"image_map\.json, key '1': expected a file name"):
        read_split(config_for(tmp_path, source, "vqav2").data, "train")


def test_vqav2_image_map_takes_the_split_like_every_path(tmp_path):
    source = ff.write_vqav2(tmp_path)
    for split in ff.SPLITS:
        files = {str(s.image_id): f"{s.split}2014/{s.coco_name}" for s in ff.SAMPLES
                 if s.split == split}
        (tmp_path / f"image_ids_{split}.json").write_text(json.dumps(files))
    source = {**source, "image_pattern": None, "image_map": "image_ids_{split}.json"}
    cfg = config_for(tmp_path, source, "vqav2")
    for split in ff.SPLITS:
        data = read_split(cfg.data, split)
        assert data.skipped == []
        assert ff.as_canonical(data) == ff.canonical(split, captions=False), split


def test_splits_map_run_splits_to_source_splits(tmp_path):
    source = {**ff.write_coco(tmp_path), "splits": {"train": ["train", "val"], "test": "val"}}
    cfg = config_for(tmp_path, source, "coco")
    assert len(read_split(cfg.data, "train").captions) == 6
    assert len(read_split(cfg.data, "test").captions) == 2
    with pytest.raises(DataError, match="no usable captions"):
        read_split(cfg.data, "val")  # the source does not serve it


def test_mixed_sources_pool_by_image_and_keep_task_labels(tmp_path):
    """COCO captions + VQAv2 questions on the same image files (an id -> file map) join
    into one example per image; a JSONL source adds its questions only, at weight 2."""
    coco = ff.write_coco(tmp_path)
    (tmp_path / "v").mkdir()
    vqa = ff.write_vqav2(tmp_path / "v")
    files = {str(s.image_id): f"{s.split}2017/{s.image_id:012d}.{s.ext}" for s in ff.SAMPLES}
    (tmp_path / "map.json").write_text(json.dumps(files))
    vqa = {**vqa, "questions": "v/" + vqa["questions"], "annotations": "v/" + vqa["annotations"],
           "image_pattern": None, "image_map": "map.json"}
    jsonl = {**ff.write_jsonl(tmp_path), "tasks": ["vqa"], "weight": 2}
    cfg = config_from_dict({"data": {"root": str(tmp_path), "sources": [coco, vqa, jsonl]}})
    data = read_split(cfg.data, "train")
    assert [s.name for s in cfg.data.sources] == ["coco", "vqav2", "jsonl"]
    assert len(data.captions) == 4 and len(data.questions) == 3 + 3  # jsonl: questions only
    examples = join_by_image(data.captions, data.questions)
    assert len(examples) == 4 + 3  # jsonl's images are other files
    both = [e for e in examples if e.captions and e.questions]
    assert sorted(e.image_id for e in both) == [1, 2, 3]
    weights = {p.parent.name: w for p, w in data.weights.items()}
    assert weights == {"train2017": 1.0, "pics": 2.0}
    assert example_repeats(examples, data.weights) == [1.0] * 4 + [2.0] * 3


# --- config --------------------------------------------------------------------------------


def test_a_key_of_another_format_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.questions: unknown key for "
                                          r"format 'coco'"):
        config_from_dict({"data": {"sources": [{"format": "coco", "path": "a.json",
                                                "questions": "q.json"}]}})
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.format: expected 'karpathy' or"):
        config_from_dict({"data": {"sources": [{"format": "parquet", "path": "x"}]}})
    with pytest.raises(ConfigError, match=r"names must be unique"):
        config_from_dict({"data": {"sources": [{"format": "karpathy", "name": "a"},
                                               {"format": "coco", "path": "p", "name": "a"}]},
                          "train": {"tasks": {"vqa": 0}}})
    with pytest.raises(ConfigError, match="no such labels"):
        config_from_dict({"data": {"sources": [{"format": "coco", "path": "p",
                                                "tasks": ["vqa"]}]}})


def test_repeat_factors_draw_weighted_examples_per_epoch():
    sampler = EpochBatchSampler(4, 1, seed=0, repeats=[1.0, 2.0, 0.5, 3.0])
    totals = torch.zeros(4)
    for epoch in range(400):
        sampler.set_position(epoch)
        for i in sampler.order():
            totals[i % 4] += 1
    assert totals[0] == totals[1] / 2 == totals[3] / 3 == 400
    assert abs(totals[2] / 400 - 0.5) < 0.08  # stochastic rounding of 0.5
    assert EpochBatchSampler(4, 1, seed=0).order() == EpochBatchSampler(4, 1, seed=0).order()


# --- broken files --------------------------------------------------------------------------


def jsonl(tmp_path, *lines) -> Path:
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("lines, message", [
    (['{"image": "a.png", "caption": "a"}', '{"image": "b.png", "caption": '],
     r"x\.jsonl, record 1: not valid JSON"),
    (['{"caption": "a"}'], r"x\.jsonl, record 0, key 'image': missing required key"),
    (['{"image": "a.png", "caption": 5}'],
     r"record 0, key 'caption': expected a string, got an integer"),
    (['{"image": "a.png", "captions": ["a", 2]}'],
     r"record 0, key 'captions\[1\]': expected a string"),
    (['{"image": "a.png", "question": "why?"}'], r"record 0, key 'answers': missing required key"),
    (['{"image": "a.png"}'], r"record 0, key 'caption': expected 'caption', 'captions' or"),
    (['["a.png", "a cat"]'], r"record 0: expected an object, got a list"),
])
def test_broken_jsonl_names_file_record_and_key(tmp_path, lines, message):
    with pytest.raises(DataError, match=message):
        read_jsonl(jsonl(tmp_path, *lines), check_files=False)


@pytest.mark.parametrize("text, message", [
    ("file,caption\na.png,a cat\n", r"x\.csv, key 'image': the header row has no 'image'"),
    ("image,question,answers,question_id\na.png,why?,yes,seven\n",
     r"x\.csv, record 0, key 'question_id': expected an integer, got 'seven'"),
    ("image,caption\na.png,a cat\nb.png,a dog,extra\n", r"x\.csv, record 1: 1 more cell"),
    ('image,caption\na.png,"a cat\n', r"x\.csv: not valid CSV"),
])
def test_broken_csv_names_file_record_and_key(tmp_path, text, message):
    (tmp_path / "x.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_csv(tmp_path / "x.csv", check_files=False)


def test_table_rows_skip_missing_images_and_empty_texts(tmp_path):
    ff.write_jsonl(tmp_path)
    (tmp_path / "pics" / "2.png").unlink()
    with (tmp_path / "pairs.jsonl").open("a") as f:
        f.write(json.dumps({"image": "pics/4.png", "caption": "  "}) + "\n")
    result = read_jsonl(tmp_path / "pairs.jsonl", splits=["train"])
    assert len(result.captions) == 3 and len(result.questions) == 2
    assert any("empty caption" in s for s in result.skipped)
    assert sum("image file not found" in s for s in result.skipped) == 2  # caption + question


def test_hf_missing_column_wrong_type_and_unreadable_files(tmp_path):
    import datasets

    source = ff.write_hf(tmp_path)
    with pytest.raises(DataError, match=r"text_column 'caption' is not a column"):
        read_split(config_for(tmp_path, {**source, "text_column": "caption"}, "hf").data, "train")
    rows = {"image": ["pics/1.jpg", "pics/2.png"], "caption": [1.5, 3.5]}  # arrow: one type
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad, record 0, key 'caption': expected a string"):
        read_split(config_for(tmp_path, {"format": "hf", "path": "bad"}, "hf_json").data, "train")
    source = ff.write_hf_json(tmp_path)
    (tmp_path / "hf_train.jsonl").write_text('{"file": "pics/1.jpg", "texts": ["a"]}\n{"fi')
    with pytest.raises(DataError, match=r"cannot read: .*hf_train\.jsonl|JSON"):
        read_split(config_for(tmp_path, source, "hf_json").data, "train")


def test_webdataset_skips_bad_samples_and_the_rest_of_a_truncated_shard(tmp_path):
    source = ff.write_webdataset(tmp_path)
    shard = tmp_path / "shards" / "train-00000.tar"
    members = ff.wds_members([ff.SAMPLES[0], ff.SAMPLES[2]])  # keys 0-3, one per caption
    members = [(n, b"{not json" if n == "000000001.json" else d) for n, d in members
               if n != "000000001.txt"]
    raw = ff.tar_bytes(members)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        last = tar.getmember("000000003.jpg")
    shard.write_bytes(raw[: last.offset_data + last.size // 2])  # cut inside key 3's image
    with pytest.warns(RuntimeWarning, match=r"train-00000\.tar: truncated or corrupt tar after "
                                            r"3 samples.*rest of the shard skipped"):
        data = read_split(config_for(tmp_path, source, "webdataset").data, "train")
    assert data.skipped == ["train-00000.tar:000000001: .json: not valid JSON: Expecting "
                            "property name enclosed in double quotes at column 2"]
    keys = sorted(r.image_id for r in data.captions)
    assert keys == ["000000000", "000000002", "000000100", "000000101"]  # the other shard


def test_a_missing_shard_is_an_error(tmp_path):
    source = {**ff.write_webdataset(tmp_path), "shards": "shards/{split}-{00000..00002}.tar"}
    with pytest.raises(DataError, match=r"train-00002\.tar: shard not found \(1 of 3"):
        read_split(config_for(tmp_path, source, "webdataset").data, "train")


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


@pytest.mark.parametrize("fmt", FORMATS)
def test_broken_images_are_skipped_and_counted(fmt, tmp_path, monkeypatch):
    """Image 1 zero bytes, 2 cut short, 3 missing: each is a reader skip or a bad item, and
    the one good training image (4) still loads."""
    monkeypatch.setattr(ff, "BROKEN", {1: truncated(ff.SAMPLES[0].image_bytes()), 2: b"",
                                       3: None})
    cfg = config_for(tmp_path, ff.WRITERS[fmt](tmp_path), fmt)
    data = read_split(cfg.data, "train", stream=True)
    transform = ImageTransform(16)
    if data.streams:
        items = list(StreamingDataset(data.streams, transform, max_epochs=1))
    else:
        examples = join_by_image(data.captions, data.questions)
        items = [JointDataset(examples, transform)[i] for i in range(len(examples))]
    bad = [it["bad"] for it in items if "bad" in it]
    assert any("empty (0 bytes)" in b for b in bad), bad
    assert any("truncat" in b.lower() for b in bad), bad  # the cut-off JPEG
    missing = [r for r in data.skipped + bad if "not found" in r or "no image" in r]
    assert bool(missing) == (fmt != "hf")  # hf: an embedded image is never missing
    loaded = [it for it in items if "bad" not in it]
    assert len(loaded) == (fmt != "vqav2")  # image 4, which has no question
    if loaded:
        assert loaded[0]["captions"] == ["a yellow square"]
        assert loaded[0]["pixel_values"].shape == (3, 16, 16)


# --- training from each format -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two steps from every format (tiny model); the metrics of each run."""
    runs = {}
    for fmt in FORMATS:
        root = tmp_path_factory.mktemp(fmt)
        source = ff.WRITERS[fmt](root)
        cfg = config_for(root, source, fmt, batch_size=2, max_steps=2, log_every=1,
                         save_every=1000)
        result = train(cfg, root / "run", show_progress=False)
        lines = (root / "run" / "metrics.jsonl").read_text().splitlines()
        runs[fmt] = (result, [json.loads(x) for x in lines])
    return runs


@pytest.mark.parametrize("fmt", FORMATS)
def test_training_runs_from_every_format(trained, fmt):
    result, records = trained[fmt]
    assert result.steps == 2 and result.skipped == 0
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in steps)
    assert ("loss_vqa" in steps[0]) == ("questions" in ff.LABELS[fmt])
    assert ("loss_caption" in steps[0]) == ("captions" in ff.LABELS[fmt])


@pytest.mark.parametrize("group", [("karpathy", "coco", "hf_json"), ("jsonl", "csv", "hf")])
def test_the_same_data_in_different_formats_trains_identically(trained, group):
    losses = [[r["loss"] for r in trained[fmt][1] if "loss" in r] for fmt in group]
    assert losses[0] == losses[1] == losses[2]


def test_shard_members_are_written_as_img2dataset_does(tmp_path):
    ff.write_webdataset(tmp_path)
    with tarfile.open(tmp_path / "shards" / "train-00000.tar") as tar:
        names = tar.getnames()
        meta = json.load(io.BytesIO(tar.extractfile("000000000.json").read()))
    assert names[:3] == ["000000000.jpg", "000000000.json", "000000000.txt"]
    assert meta["caption"] == "a red square" and meta["status"] == "success"


def test_the_published_datasets_config_is_valid():
    cfg = load_config("configs/coco_flickr_vqa.yaml")
    coco, flickr, vqa = cfg.data.sources
    assert (coco.format, flickr.format, vqa.format) == ("karpathy", "karpathy", "vqav2")
    assert coco.split_names("train") == ["train", "restval"]
    assert coco.split_names("test") == ["test"]
    assert flickr.split_names("test") == [] and flickr.weight == 2
    assert vqa.split_names("train") == ["train"] and vqa.split_names("val") == []
