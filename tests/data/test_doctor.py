"""The dataset doctor: passes clean data, finds planted leaks, missing and broken files."""

from __future__ import annotations

import json
import shutil

import format_fixtures as ff

from tuwen.apps.cli import main
from tuwen.config import load_config
from tuwen.data.doctor import check_data, length_summary
from tuwen.data.doctor_report import format_table


def shapes_config(root, *sets):
    return load_config("configs/shapes.yaml", [f"data.root={root}", "data.image_size=32",
                                               "data.tokenizer.vocab_size=200", *sets])


def part(report, source, split):
    return next(p for p in report["parts"] if (p["source"], p["split"]) == (source, split))


def test_clean_shapes_data_passes(tiny_shapes):
    report = check_data(shapes_config(tiny_shapes), show_progress=False)
    assert report["ok"] and report["errors"] == []
    assert report["leakage"] == {"image_id": [], "content": []}
    train = part(report, "captions", "train")
    assert (train["images"], train["captions"], train["missing"], train["unreadable"]) == \
        (64, 320, 0, 0)
    vqa = part(report, "vqa", "test")
    assert vqa["images"] == 16 and vqa["questions"] > 16 and vqa["answer_coverage"] > 90
    tokens = train["caption_tokens"]
    assert sum(tokens["histogram"].values()) == 320 and 0 < tokens["mean"] <= tokens["max"] < 40
    assert [(p["source"], p["split"]) for p in report["parts"]] == [
        (s, split) for split in ("train", "val", "test") for s in ("captions", "vqa")]


def test_planted_leaks_and_a_missing_file_fail_the_check(tiny_shapes, tmp_path):
    root = tmp_path / "shapes"
    shutil.copytree(tiny_shapes, root)
    doc = json.loads((root / "captions.json").read_text())
    train = [r for r in doc["images"] if r["split"] == "train"]
    test = [r for r in doc["images"] if r["split"] == "test"]
    # a test image becomes a copy of a train image; another train image goes missing
    shutil.copy(root / "images" / train[0]["filename"], root / "images" / test[0]["filename"])
    (root / "images" / train[2]["filename"]).unlink()

    report = check_data(shapes_config(root), show_progress=False)
    assert not report["ok"]
    content = report["leakage"]["content"]
    assert len(content) == 1 and content[0]["splits"] == ["test", "train"]
    assert sorted(f.rsplit("/", 1)[1] for f in content[0]["files"]) == sorted(
        [train[0]["filename"], test[0]["filename"]])
    assert part(report, "captions", "train")["missing"] == 1
    assert part(report, "vqa", "train")["missing"] == 1
    errors = "\n".join(report["errors"])
    assert "leakage: the same image bytes are in splits test, train" in errors
    assert "captions/train: 1 missing and 0 unreadable of 64 images (first: " in errors
    assert "more than data.max_bad_fraction=0.01" in errors
    assert "FAILED: 3 error(s)" in format_table(report)  # the leak; missing in 2 sources


def test_the_same_image_id_in_two_splits_is_leakage(tmp_path):
    source = ff.write_coco(tmp_path)
    path = tmp_path / "annotations" / "captions_val2017.json"
    doc = json.loads(path.read_text())
    doc["images"][0]["id"] = 1  # a train image's id, on another picture
    for a in doc["annotations"]:
        a["image_id"] = 1 if a["image_id"] == 5 else a["image_id"]
    path.write_text(json.dumps(doc))
    sets = [f"data.root={tmp_path}", f"data.sources=[{json.dumps(source)}]",
            "train.tasks.vqa=0", "eval.splits=[]"]
    report = check_data(load_config(None, sets), show_progress=False)
    assert report["leakage"] == {"image_id": [{"source": "coco", "image_id": 1,
                                               "splits": ["train", "val"]}], "content": []}
    assert report["errors"] == ["leakage: coco image id 1 is in splits train, val"]


def test_unparseable_annotations_and_texts_truncated_away_are_errors(tmp_path):
    source = ff.write_jsonl(tmp_path)
    with (tmp_path / "pairs.jsonl").open("a") as f:
        f.write(json.dumps({"image": "pics/4.png", "split": "train", "caption": "?!..."}) + "\n")
    sets = [f"data.root={tmp_path}", f"data.sources=[{json.dumps(source)}]",
            "data.text.strip_punctuation=true", "data.max_text_length=5",
            "data.tokenizer.vocab_size=60", "eval.splits=[val]"]
    report = check_data(load_config(None, sets), show_progress=False)
    train = part(report, "jsonl", "train")
    assert train["caption_truncated_away"] == 1 and train["examples"]["caption_truncated_away"] \
        == ["'?!...'"]
    assert train["question_truncated"] >= 2  # 5 positions: [CLS] + 3 tokens + [SEP]
    assert any("1 caption(s) have no token left" in e for e in report["errors"])
    assert any("question(s) longer than data.max_text_length are cut" in w
               for w in report["warnings"])
    (tmp_path / "pairs.jsonl").write_text('{"image": "pics/1.jpg", "caption": "a"}\n{oops\n')
    report = check_data(load_config(None, sets), show_progress=False)
    assert report["errors"][0].startswith("jsonl/train: unparseable: ")
    assert "pairs.jsonl, record 1: not valid JSON" in report["errors"][0]


def test_shards_are_checked_as_streamed(tmp_path, monkeypatch):
    monkeypatch.setattr(ff, "BROKEN", {2: b"", 6: ff.SAMPLES[0].image_bytes()})
    source = ff.write_webdataset(tmp_path)
    sets = [f"data.root={tmp_path}", f"data.sources=[{json.dumps(source)}]",
            "train.tasks.vqa=0", "eval.splits=[]", "data.max_bad_fraction=0.5"]
    report = check_data(load_config(None, sets), min_side=41, show_progress=False)
    train, val = part(report, "webdataset", "train"), part(report, "webdataset", "val")
    assert (train["images"], train["captions"], train["unreadable"]) == (6, 6, 1)
    assert train["tiny"] == 3  # shorter side 40 < 41: sample 1 (two keys) and sample 4
    assert val["images"] == 3
    leak = report["leakage"]["content"]  # val sample 6 now holds train sample 1's bytes
    assert len(leak) == 1 and leak[0]["splits"] == ["train", "val"]
    assert not report["ok"]


def test_length_histogram_bins_up_to_the_limit():
    summary = length_summary([0, 3, 5, 9, 40, 41], max_length=40)
    assert summary["histogram"] == {"0-4": 2, "5-9": 2, "10-14": 0, "15-19": 0, "20-24": 0,
                                    "25-29": 0, "30-34": 0, "35-39": 0, ">=40": 2}
    assert summary["max"] == 41 and summary["mean"] == 16.33


def test_cli_writes_check_json_and_exits_non_zero_on_errors(tiny_shapes, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["data", "check", "configs/shapes.yaml", "--set", f"data.root={tiny_shapes}",
            "--set", "data.image_size=32", "--out", str(out), "--splits", "train,test"]
    assert main(args) == 0
    report = json.loads((out / "check.json").read_text())
    assert report["ok"] and {p["split"] for p in report["parts"]} == {"train", "test"}
    assert (out / "check_lengths.png").stat().st_size > 1000
    assert "data check OK" in capsys.readouterr().out
    root = tmp_path / "broken"
    shutil.copytree(tiny_shapes, root)
    (root / "vqa_questions_test.json").write_text("{")
    assert main([*args[:4], f"data.root={root}", *args[5:]]) == 1
    assert "vqa/test: unparseable" in capsys.readouterr().out


def test_default_splits_are_the_runs(tiny_shapes):
    cfg = shapes_config(tiny_shapes, "eval.splits=[test, test_novel]")
    report = check_data(cfg, show_progress=False)
    assert sorted({p["split"] for p in report["parts"]}) == ["test", "test_novel", "train", "val"]


def test_kept_counts_follow_the_text_modules_truncation_rule():
    from tuwen.data.doctor import kept_counts
    from tuwen.data.text import kept_token_count
    from tuwen.data.tokenizer import train_tokenizer

    texts = ["a red square", "", "what colour is the small square on the left", "a red square"]
    tok = train_tokenizer(texts * 3, vocab_size=60)
    for max_length, reserved in ((4, None), (4, 1), (12, 1), (2, None)):
        assert kept_counts(tok, texts, max_length, reserved) == [
            (len(tok(t, add_special_tokens=False)["input_ids"]),
             kept_token_count(tok, t, max_length, reserved=reserved)) for t in texts]
