"""Start-up cost of the CLI: a command imports only what it uses.

Each check runs in a fresh interpreter (this one has long imported everything) and reads
``sys.modules`` there after the command ran.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import tuwen
from tuwen.apps.cli import build_parser

SRC = str(Path(tuwen.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

# what a from-scratch model never needs: transformers' modelling code and AutoTokenizer's
# index of every model, and the heavy extras of other commands
MODEL_CODE = ("transformers.modeling_utils", "transformers.models.auto")
EXTRAS = ("faiss", "fastapi", "uvicorn", "accelerate", "optuna", "matplotlib", "datasets",
          "pycocoevalcap")

CHECK = """
import json, sys
from tuwen.apps.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        code = main(argv)
    except SystemExit as exit:  # --help exits
        code = exit.code
    if code:
        sys.exit(f"{argv}: exit code {code}")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[2])
                        or m.startswith(tuple(json.loads(sys.argv[3]))))))
"""


def loaded_after(commands: list[list[str]], tops: tuple[str, ...],
                 prefixes: tuple[str, ...] = ()) -> list[str]:
    """The modules among ``tops`` (top-level packages) or under ``prefixes`` that a fresh
    interpreter holds after running ``commands`` through ``tuwen.apps.cli.main``."""
    out = subprocess.run([sys.executable, "-c", CHECK, json.dumps(commands), json.dumps(tops),
                          json.dumps(prefixes)], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def help_commands() -> list[list[str]]:
    """``--help`` of tuwen and of every (nested) subcommand."""
    commands, todo = [], [([], build_parser())]
    while todo:
        prefix, parser = todo.pop()
        commands.append([*prefix, "--help"])
        for action in parser._subparsers._group_actions if parser._subparsers else []:
            todo.extend(([*prefix, name], sub) for name, sub in action.choices.items())
    return commands


def test_help_of_every_command_imports_neither_torch_nor_transformers():
    commands = help_commands()
    assert ["caption", "--help"] in commands and ["score", "vqa", "--help"] in commands
    assert loaded_after(commands, ("torch", "transformers", "numpy", *EXTRAS)) == []


def test_a_from_scratch_model_captions_without_transformers_model_code(trained_run, tiny_shapes,
                                                                       capsys):
    model = trained_run / "model"
    spec = json.loads((model / "config.json").read_text())["model"]
    assert {spec["image_encoder"]["type"], spec["text_encoder"]["type"],
            spec["decoder"]["type"]} <= {"small_vit", "small_cnn", "transformer"}
    image = str(sorted((tiny_shapes / "images").glob("*.png"))[0])
    loaded = loaded_after([["caption", str(model), image, "--max-length", "4"]],
                          ("torch", *EXTRAS), MODEL_CODE)
    assert "torch" in loaded  # the command really ran a model
    assert [m for m in loaded if m != "torch" and not m.startswith("torch.")] == []
