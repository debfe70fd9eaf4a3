"""The package's layers import only downwards (DESIGN.md §2), and no modules import each
other in a cycle."""

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
    if name in ("errors", "fsio", "model_files", "__init__"):
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
    lowest = {"errors": -1, "fsio": -1, "model_files": -1, "__init__": -1}
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


# ---------------------------------------------------------------- import cycles
# Only imports that run when a module is imported count: module level, class bodies and
# if/try blocks, not function bodies (a deferred import is how a caller opts out on
# purpose) nor ``if TYPE_CHECKING:`` blocks.


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for the package at ``root``."""
    names = {}
    for path in root.rglob("*.py"):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _runs_at_import(tree: ast.Module) -> list[ast.stmt]:
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
            continue
        out.append(node)
        todo += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
    return out


def _targets(node: ast.stmt, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    target = ".".join(p for p in (base if node.level else "", node.module or "") if p)
    # ``from pkg import sub`` imports the submodule pkg.sub when there is one
    return [target] + [f"{target}.{a.name}" for a in node.names]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports when it is imported."""
    names = module_names(root)
    graph = {}
    for module, path in names.items():
        nodes = _runs_at_import(ast.parse(path.read_text()))
        is_package = path.name == "__init__.py"
        found = {t for n in nodes for t in _targets(n, module, is_package)}
        graph[module] = {t for t in found if t in names and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    done, stack = set(), []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        stack.append(node)
        for nxt in sorted(graph[node]):
            if cycle := visit(nxt):
                return cycle
        stack.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph(SRC))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_the_cycle_check_sees_a_cycle_through_absolute_and_relative_imports(tmp_path):
    pkg = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/models/__init__.py": "",
        "pkg/models/a.py": "from pkg.models.b import B\n",
        "pkg/models/b.py": "from . import c\nB = 1\n",
        "pkg/models/c.py": "import pkg.models.a\n"})
    assert find_cycle(import_graph(pkg)) == [
        "pkg.models.a", "pkg.models.b", "pkg.models.c", "pkg.models.a"]


def test_the_cycle_check_ignores_deferred_imports(tmp_path):
    pkg = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import B\n",
        "pkg/b.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from pkg.a import A\n"
                     "def f():\n    from pkg.a import A\n    return A\nB = 1\n")})
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == set()
    assert find_cycle(graph) is None
    (pkg / "b.py").write_text("try:\n    from pkg.a import A\nexcept ImportError:\n    A = None\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.a"]
