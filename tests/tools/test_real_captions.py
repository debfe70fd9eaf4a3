"""tools/real_captions.py: Tux Paint's captioned stamps -> a Karpathy dataset tuwen reads.
The fast tests build from a stand-in stamps folder; the slow one from the real package
(/usr/share/tuxpaint/stamps, or the .deb named by TUWEN_TUXPAINT_DEB)."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tuwen.config import load_config
from tuwen.data.prepare import read_split

TOOL = Path(__file__).parents[2] / "tools" / "real_captions.py"
spec = importlib.util.spec_from_file_location("real_captions", TOOL)
real_captions = importlib.util.module_from_spec(spec)
sys.modules["real_captions"] = real_captions  # its dataclass looks itself up there
spec.loader.exec_module(real_captions)


def fake_stamps(root: Path, n: int = 160) -> Path:
    """Stamps as Tux Paint ships them: RGBA cut-outs, a .txt with English first."""
    for i in range(n):
        folder = root / ("animals/birds" if i % 2 else "food/fruit")
        folder.mkdir(parents=True, exist_ok=True)
        rgba = np.zeros((30 + i % 7, 40, 4), dtype=np.uint8)
        rgba[5:20, 5:30] = (200, i % 255, 40, 255)
        Image.fromarray(rgba, "RGBA").save(folder / f"s{i}.png")
        (folder / f"s{i}.txt").write_text(f"A thing number {i}.\nfr.utf8=Une chose {i}.\n")
    (root / "food/fruit/lonely.png").write_bytes((root / "food/fruit/s0.png").read_bytes())
    return root


def test_builds_a_karpathy_set_that_tuwen_reads(tmp_path):
    stamps, out = fake_stamps(tmp_path / "stamps"), tmp_path / "real"
    manifest = real_captions.build(stamps, out, size=48)
    assert manifest["n_images"] == 160  # lonely.png has no description: left out
    assert manifest["splits"] == {"train": 10, "val": 50, "test": 100}
    data = json.loads((out / "captions.json").read_text())
    first = data["images"][0]
    assert first["sentences"][0]["raw"].startswith("A thing number")  # English, not fr
    image = Image.open(out / first["filepath"] / first["filename"])
    assert image.size == (48, 48) and image.mode == "RGB"
    assert sum(image.getpixel((0, 0))) > 740  # the transparent corner is white (JPEG: ~)
    config = load_config(None, [f"data.root={out}",
                                "data.sources=[{format: karpathy, path: captions.json}]"])
    assert len(read_split(config.data, "test").captions) == 100
    again = tmp_path / "again"
    real_captions.build(stamps, again, size=48)  # the split does not depend on the file order
    assert (again / "captions.json").read_text() == (out / "captions.json").read_text()


def test_a_missing_source_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no stamps folder"):
        real_captions.main([str(tmp_path / "out"), "--stamps", str(tmp_path / "none")])


DEB = os.environ.get("TUWEN_TUXPAINT_DEB")
SYSTEM = Path("/usr/share/tuxpaint/stamps")


@pytest.mark.slow
@pytest.mark.skipif(not (DEB or SYSTEM.is_dir()), reason="tuxpaint-stamps-default not here "
                    "(apt-get install it, or set TUWEN_TUXPAINT_DEB to the downloaded .deb)")
def test_the_real_stamps_build(tmp_path):
    args = [str(tmp_path / "real")] + (["--deb", DEB] if DEB else [])
    assert real_captions.main(args) == 0
    manifest = json.loads((tmp_path / "real" / "manifest.json").read_text())
    assert manifest["n_images"] >= 700 and manifest["licence"] == "GPL-2+"
    assert manifest["splits"]["test"] == 100 and manifest["splits"]["val"] == 50
    config = load_config(None, [f"data.root={tmp_path / 'real'}",
                                "data.sources=[{format: karpathy, path: captions.json}]"])
    train = read_split(config.data, "train")
    assert len(train.captions) == manifest["splits"]["train"] and not train.skipped
