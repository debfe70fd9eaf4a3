"""docs/config-reference.md is generated from the config models and kept fresh."""

from pathlib import Path
from typing import get_args

import pytest

from tuwen.apps.config_reference import task_options
from tuwen.config import (
    DECODERS,
    FUSIONS,
    IMAGE_ENCODERS,
    REDUCTIONS,
    SOURCES,
    TEXT_ENCODERS,
)
from tuwen.config.reference import COMMAND, blocks, main, render, task_blocks

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"


def test_committed_page_is_fresh():
    assert PAGE.is_file() and PAGE.read_text() == render(task_options()), (
        f"docs/config-reference.md is stale: run `{COMMAND}` (or `make docs`)")


def test_every_key_has_a_description():
    every = [*blocks(), *task_blocks(task_options())]
    missing = [f"{b.path}.{name}" for b in every for name in b.names
               if not (b.cls.model_fields[name].description or "").strip()]
    assert not missing, missing


def test_every_kind_of_every_union_is_listed_with_its_own_keys():
    page = render(task_options())
    unions = {"data.sources[]": SOURCES, "model.image_encoder": IMAGE_ENCODERS,
              "model.text_encoder": TEXT_ENCODERS, "model.fusion": FUSIONS,
              "model.decoder": DECODERS, "model.decoder.reduce": REDUCTIONS}
    for path, members in unions.items():
        for tag in members:
            key = "format" if path == "data.sources[]" else "type"
            assert f"## `{path}` with `{key}: {tag}`" in page, (path, tag)
    vqav2 = page.split("## `data.sources[]` with `format: vqav2`")[1].split("\n## ")[0]
    assert "| `image_map` |" in vqav2 and "| `questions` | string | required |" in vqav2
    fusion = page.split("## `model.fusion` with `type: cross_attention`")[1].split("\n## ")[0]
    assert "| `window` | integer \\| null | `null` |" in fusion
    itm = page.split("## `train.task_options.itm`")[1].split("\n## ")[0]
    assert "| `spatial_negatives` | boolean | `false` |" in itm  # a task's options, from the table


@pytest.mark.parametrize("members", [SOURCES, IMAGE_ENCODERS, TEXT_ENCODERS, FUSIONS, DECODERS,
                                     REDUCTIONS])
def test_union_dicts_name_each_class_by_its_tag(members):
    for tag, cls in members.items():
        key = "format" if "format" in cls.model_fields else "type"
        assert get_args(cls.model_fields[key].annotation) == (tag,)


def test_check_mode_fails_on_a_stale_page(tmp_path, capsys):
    stale = tmp_path / "ref.md"
    stale.write_text("# old\n")
    assert main(["--check", "--out", str(stale)]) == 1
    assert COMMAND in capsys.readouterr().err
    assert main(["--out", str(stale)]) == 0 and main(["--check", "--out", str(stale)]) == 0
