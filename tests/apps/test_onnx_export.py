"""tuwen export --format onnx: the graphs against PyTorch, the torch-free reader, refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_tiny import hf_spec, save_bert, save_image_model
from tuwen.apps.cli import main
from tuwen.apps.export import TOLERANCE, export_onnx
from tuwen.apps.onnx_backend import MANIFEST_FILE, OnnxPipeline
from tuwen.apps.pipeline import Pipeline
from tuwen.errors import TuwenError
from tuwen.models.image_text_model import ImageTextModel, build_model

pytest.importorskip("onnxruntime")  # the onnx extra
pytest.importorskip("onnxscript")

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "export"
    assert main(["export", str(trained_run / "model"), "--format", "onnx", "--out",
                 str(out)]) == 0
    return out


def shapes_sample(tiny_shapes: Path, n: int = 32) -> tuple[list[Path], list[str]]:
    """``n`` images of the shapes data and one caption of each."""
    data = json.loads((tiny_shapes / "captions.json").read_text())["images"][:n]
    return ([tiny_shapes / "images" / item["filename"] for item in data],
            [item["sentences"][0]["raw"] for item in data])


def assert_backends_agree(model_dir: Path, export: Path, images, texts) -> dict[str, float]:
    torch_pipe = Pipeline.from_pretrained(model_dir, device="cpu")
    onnx_pipe = OnnxPipeline.from_export(export, threads=1)
    assert onnx_pipe.model_id == torch_pipe.model_id and onnx_pipe.embed_dim == \
        torch_pipe.embed_dim
    diffs = {
        "image": np.abs(onnx_pipe.embed_images(images) - torch_pipe.embed_images(images)).max(),
        "text": np.abs(onnx_pipe.embed_texts(texts) - torch_pipe.embed_texts(texts)).max()}
    ours, theirs = onnx_pipe.score(images, texts), torch_pipe.score(images, texts)
    diffs["itc"] = max(abs(a.itc - b.itc) for a, b in zip(ours, theirs))
    diffs["itm"] = max(abs(a.itm - b.itm) for a, b in zip(ours, theirs))
    assert max(diffs.values()) <= TOLERANCE, diffs
    return diffs


def test_export_agrees_with_pytorch_on_32_shapes_images_and_captions(trained_run, tiny_shapes,
                                                                     exported):
    images, texts = shapes_sample(tiny_shapes)
    assert len(images) == 32 and len(set(texts)) > 1
    assert_backends_agree(trained_run / "model", exported, images, texts)
    manifest = json.loads((exported / MANIFEST_FILE).read_text())
    assert manifest["check"]["n"] == 32
    assert max(manifest["check"]["max_abs_diff"].values()) <= TOLERANCE
    assert {"image.onnx", "text.onnx", "itm.onnx", "tokenizer"} <= \
        {p.name for p in exported.iterdir()}


def test_batch_and_text_length_are_dynamic(exported, tiny_shapes):
    pipe = OnnxPipeline.from_export(exported, threads=1)
    images, _ = shapes_sample(tiny_shapes, 3)
    assert pipe.embed_images(images[:1]).shape == (1, pipe.embed_dim)
    assert pipe.embed_images(images).shape == (3, pipe.embed_dim)
    one, long = pipe.embed_texts(["red"]), pipe.embed_texts(["a red circle " * 40])
    assert one.shape == long.shape == (1, pipe.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(pipe.embed_texts(["a", "b c d"]), axis=1), 1,
                               atol=1e-5)
    scores = pipe.score(images, ["red", "a blue square", "two shapes " * 30])
    assert all(0 <= s.itm <= 1 and -1 <= s.itc <= 1 for s in scores)


CHECK = """
import json, sys
from tuwen.apps.cli import main
for argv in json.loads(sys.argv[1]):
    if main(argv):
        sys.exit(f"{argv} failed")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))))
"""


def test_index_and_search_on_the_onnx_backend_import_no_torch(exported, trained_run,
                                                              tiny_shapes, tmp_path, capsys):
    images = tiny_shapes / "images"
    argv = [["index", str(exported), str(images), "--out", str(tmp_path / "idx"),
             "--backend", "onnx"],
            ["search", str(tmp_path / "idx"), "a red circle", "--backend", "onnx", "--json",
             "-k", "5"]]
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHECK, json.dumps(argv)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert json.loads(lines[-1]) == []   # neither torch nor transformers was imported
    onnx_hits = json.loads(lines[-2])
    # the same index searched with the PyTorch model: the index knows the model either way
    assert main(["search", str(tmp_path / "idx"), "a red circle", "--json", "-k", "5",
                 "--model", str(trained_run / "model"), "--device", "cpu"]) == 0
    torch_hits = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [h["id"] for h in onnx_hits] == [h["id"] for h in torch_hits]
    np.testing.assert_allclose([h["score"] for h in onnx_hits],
                               [h["score"] for h in torch_hits], atol=TOLERANCE)


def test_a_model_with_hugging_face_towers_exports(tmp_path):
    """ViT and BERT built from HF configs (random weights), saved like hub checkpoints."""
    vit, bert = save_image_model("vit", tmp_path / "vit"), save_bert(tmp_path / "bert")
    torch.manual_seed(0)
    model = ImageTextModel.from_encoders(str(vit), str(bert), hidden_size=32, embed_dim=16,
                                         max_text_length=24, num_answers=3,
                                         fusion={"type": "cross_attention", "layers": 1,
                                                 "heads": 2})
    model.eval().save_pretrained(tmp_path / "model")
    report = export_onnx(tmp_path / "model", tmp_path / "export")
    assert max(report.max_abs_diff.values()) <= TOLERANCE
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
              for _ in range(32)]
    words = ["a", "red", "blue", "green", "circle", "square", "left", "of", "the", "above"]
    texts = [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(32)]
    assert_backends_agree(tmp_path / "model", tmp_path / "export", images, texts)


def test_an_lstm_text_encoder_is_refused_in_one_line_naming_it(tmp_path, capsys):
    torch.manual_seed(0)
    build_model(hf_spec(text={"type": "lstm"})).save_pretrained(tmp_path / "model")
    assert main(["export", str(tmp_path / "model"), "--out", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "the lstm text encoder cannot be exported to ONNX (text graph)" in err
    assert not (tmp_path / "export" / MANIFEST_FILE).exists()


def test_the_onnx_backend_refuses_a_folder_that_is_no_export(trained_run):
    with pytest.raises(TuwenError, match="not a tuwen ONNX export.*tuwen export MODEL"):
        OnnxPipeline.from_export(trained_run / "model")


def test_the_benchmark_measures_both_backends(trained_run, exported, tiny_shapes):
    from benchmarks.onnx_backend import throughput

    rows = throughput(trained_run / "model", exported, tiny_shapes / "images", threads=1,
                      batch_size=16, repeats=1)
    assert {(r["backend"], r["what"]) for r in rows} == {
        (b, w) for b in ("torch", "onnx") for w in ("end_to_end", "model_only")}
    assert all(r["images_per_s"] > 0 and r["images"] == 96 for r in rows)
