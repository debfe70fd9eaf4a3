"""``tuwen demo`` trains the documented demo config from any folder, as after a pip install."""

import re
from fnmatch import fnmatch
from pathlib import Path

import tuwen.apps.demo
from tuwen.apps.cli import main
from tuwen.apps.demo import demo_config_path
from tuwen.config import load_config, packaged_config

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "tuwen"


def test_packaged_demo_config_is_the_repository_one():
    packaged = packaged_config("shapes")
    assert packaged == PACKAGE / "configs" / "shapes.yaml"
    assert packaged.read_bytes() == (REPO / "configs" / "shapes.yaml").read_bytes(), (
        "src/tuwen/configs/shapes.yaml differs from configs/shapes.yaml: "
        "cp configs/shapes.yaml src/tuwen/configs/shapes.yaml")


def test_the_packaged_config_ships_as_package_data():
    pyproject = (REPO / "pyproject.toml").read_text()
    table = pyproject.split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    line = next(x for x in table.splitlines() if x.startswith("tuwen ="))
    patterns = re.findall(r'"([^"]+)"', line.split("#")[0])
    assert any(fnmatch("configs/shapes.yaml", p) for p in patterns), patterns


def test_demo_config_resolves_to_the_packaged_file_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert demo_config_path() == packaged_config("shapes")
    assert demo_config_path("mine.yaml") == Path("mine.yaml")
    seen = {}
    monkeypatch.setattr(tuwen.apps.demo, "run_demo",
                        lambda out, config, **kw: seen.update(out=out, config=config))
    assert main(["demo", "--out", "r", "--minutes", "1"]) == 0
    expected = load_config(REPO / "configs" / "shapes.yaml", ["train.max_minutes=1"])
    assert seen["config"] == expected and seen["out"] == Path("r")
    config = seen["config"]
    assert config.data.image_size == 48 and config.train.task_options["itm"]["spatial_negatives"]
