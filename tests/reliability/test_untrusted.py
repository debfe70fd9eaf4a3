"""What tuwen does with files it does not trust: no code runs, nothing lands outside its
folder."""

import ast
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tuwen.config import load_config
from tuwen.data.readers_wds import read_webdataset
from tuwen.errors import ConfigError, TuwenError
from tuwen.training import checkpoint

SRC = Path(__file__).resolve().parents[2] / "src" / "tuwen"
RAN = []


class Payload:
    def __reduce__(self):  # unpickling would call RAN.append
        return (RAN.append, ("code ran",))


def test_a_checkpoint_whose_optimizer_file_holds_code_is_refused(tmp_path):
    path = checkpoint.save_checkpoint(tmp_path, 2, torch.nn.Linear(2, 2), {}, {"step": 2},
                                      [checkpoint.rng_state()])
    (path / "optimizer.pt").write_bytes(pickle.dumps(Payload()))
    manifest = (path / checkpoint.MANIFEST).read_text()  # re-sign it: the hash is no defence
    files = json.loads(manifest)["files"]
    files["optimizer.pt"] = checkpoint.sha256(path / "optimizer.pt")
    (path / checkpoint.MANIFEST).write_text(json.dumps({"step": 2, "files": files}))
    with pytest.raises(TuwenError, match=r"optimizer.pt: refused to load \(not plain tensors"):
        checkpoint.load_checkpoint(path, None)
    assert RAN == []


def test_yaml_tags_that_build_python_objects_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        load_config(path, [])


def test_no_source_file_passes_trust_remote_code_true():
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value), path


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_archive_members_with_absolute_or_parent_paths_stay_in_the_cache(tmp_path):
    shard = tmp_path / "shard" / "000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for name, data in [("../../escape/000.png", png()), ("../../escape/000.txt", b"hi"),
                           ("/tmp/tuwen-abs/001.png", png()), ("/tmp/tuwen-abs/001.txt", b"x")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cache = tmp_path / "shard" / "cache"
    out = read_webdataset([shard], cache)
    assert len(out.captions) == 2
    assert all(Path(c.image_path).resolve().is_relative_to(cache.resolve()) for c in out.captions)
    assert not (tmp_path / "escape").exists() and not Path("/tmp/tuwen-abs").exists()
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert written - {shard} <= set(cache.rglob("*"))


def test_a_damaged_safetensors_file_is_one_line(tmp_path):
    path = checkpoint.save_checkpoint(tmp_path, 2, torch.nn.Linear(2, 2), {}, {"step": 2},
                                      [checkpoint.rng_state()])
    (path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(TuwenError, match="checkpoint weights do not load"):
        checkpoint.load_weights_into(path, torch.nn.Linear(2, 2))
