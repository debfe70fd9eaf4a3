"""The package's layers import only downwards (DESIGN.md §2)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tuwen"
LAYERS = ["config", "data", "models", "tasks", "training", "evaluation", "apps"]


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "tuwen" or len(parts) < 2:
        return None
    name = parts[1]
    if name in ("errors", "fsio", "__init__"):
        return -1
    return LAYERS.index(name) if name in LAYERS else None


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


FILES = sorted(p for p in SRC.rglob("*.py"))


def own_layer(rel: Path) -> int:
    if len(rel.parts) > 1:
        return LAYERS.index(rel.parts[0])
    # top-level modules: errors is below everything, __main__ is the entry point above apps
    lowest = {"errors": -1, "fsio": -1, "__init__": -1}
    return {"config": 0, **lowest, "__main__": len(LAYERS)}[rel.stem]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_only_own_layer_or_lower(path):
    rel = path.relative_to(SRC)
    own = own_layer(rel)
    bad = [m for m in imports(path) if (lay := layer_of(m)) is not None and lay > own]
    assert not bad, f"{rel} imports {bad} from a higher layer"


def test_models_do_not_import_data():
    for path in (SRC / "models").rglob("*.py"):
        assert not any(m.startswith("tuwen.data") for m in imports(path)), path
