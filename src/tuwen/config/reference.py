"""The configuration reference, generated from the pydantic models.

``python -m tuwen.apps.config_reference`` writes docs/config-reference.md: every key of every
section with its type, default and ``Field(description=...)``, nested sections in order, each
kind of a typed union (image/text encoder, fusion, decoder, data source) on its own, and each
task's options (handed in from the table of tasks, which lives above the config layer).
``--check`` only compares, and fails when the committed page is stale.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tuwen.config.base import Section
from tuwen.config.root import Config

PAGE = Path("docs/config-reference.md")
COMMAND = "python -m tuwen.apps.config_reference"
SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean",
           type(None): "null", Any: "any"}
HEADER = f"""# Configuration reference

Every key a tuwen config (YAML, or `--set KEY.PATH=VALUE`) accepts, with its type, default
and meaning. An unknown key, a wrong type or a value out of range is an error that names the
key. How configs, overrides and validation work: [configuration.md](configuration.md).

This page is generated from the pydantic models in `src/tuwen/config/` by `{COMMAND}`
(`make docs`); a test fails when it is stale. Edit the `Field(description=...)` in the code,
not this page.
"""


@dataclass(frozen=True)
class Block:
    """One table of the page: the keys ``names`` of section ``cls`` at key path ``path``,
    maybe one kind of a typed union (``kind``: "type: small_vit")."""

    path: str
    cls: type[Section]
    names: tuple[str, ...]
    kind: str | None = None

    @property
    def title(self) -> str:
        title = f"`{self.path}`" if self.path else "Top level"
        if self.kind is None:
            return title
        return f"{title} ({self.kind})" if self.kind.startswith("every") else \
            f"{title} with `{self.kind}`"


def slug(title: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _strip(annotation: Any) -> Any:
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def _members(annotation: Any) -> list[Any]:
    annotation = _strip(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return [_strip(a) for a in get_args(annotation)]
    return [annotation]


def _sections(annotation: Any) -> list[type[Section]]:
    """The section classes an annotation (or the items of a list annotation) may hold."""
    annotation = _strip(annotation)
    if get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    return [m for m in _members(annotation) if inspect.isclass(m) and issubclass(m, Section)]


def _tag_key(cls: type[Section]) -> str:
    return "format" if "format" in cls.model_fields else "type"


def _tag(cls: type[Section]) -> str:
    return get_args(cls.model_fields[_tag_key(cls)].annotation)[0]


def _common_base(members: list[type[Section]]) -> type[Section] | None:
    """The nearest section class every member derives from (its keys are shared)."""
    for base in members[0].__mro__:
        if base is not Section and issubclass(base, Section) and all(
                issubclass(m, base) for m in members):
            return base
    return None


def _sub_path(path: str, name: str, field: FieldInfo) -> str:
    is_list = get_origin(_strip(field.annotation)) is list
    return (f"{path}.{name}" if path else name) + ("[]" if is_list else "")


def blocks(cls: type[Section] = Config, path: str = "", kind: str | None = None,
           skip: frozenset[str] = frozenset()) -> Iterator[Block]:
    """Every section below ``cls``, depth first in field order; a typed union's shared keys
    in one table, then each kind's own keys (its tag first)."""
    names = [n for n in cls.model_fields if n not in skip]
    if kind is not None and kind.startswith(("type:", "format:")):
        tag = kind.split(":")[0]
        names = [tag] + [n for n in names if n != tag]
    yield Block(path, cls, tuple(names), kind)
    for name in names:
        field = cls.model_fields[name]
        sub, found = _sub_path(path, name, field), _sections(field.annotation)
        if len(found) == 1:
            yield from blocks(found[0], sub)
        elif found:
            base = _common_base(found)
            shared = frozenset(base.model_fields) if base else frozenset()
            if base:
                yield Block(sub, base, tuple(base.model_fields), f"every {_tag_key(found[0])}")
            for member in found:
                yield from blocks(member, sub, f"{_tag_key(member)}: {_tag(member)}", shared)


def type_text(annotation: Any) -> str:
    """An annotation in words."""
    annotation = _strip(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if (inspect.isclass(annotation) or annotation is Any) and annotation in SCALARS:
        return SCALARS[annotation]
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(type_text(a) for a in args)
    if origin is list:
        return f"list of {_grouped(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(type_text(a) for a in args) + "]"
    if origin is dict:
        return f"mapping {_grouped(args[0])} → {_grouped(args[1])}"
    return "section" if inspect.isclass(annotation) and issubclass(annotation, Section) \
        else str(annotation)


def _grouped(annotation: Any) -> str:
    text = type_text(annotation)
    return f"({text})" if "|" in text else text


def field_type(field: FieldInfo, anchor: str) -> str:
    """The type column: sections and typed unions link to their tables."""
    found = _sections(field.annotation)
    if not found:
        return type_text(field.annotation)
    many = "list of " if get_origin(_strip(field.annotation)) is list else ""
    what = (f"one of {len(found)} kinds by `{_tag_key(found[0])}`" if len(found) > 1
            else "section")
    optional = " \\| null" if type(None) in _members(field.annotation) else ""
    return f"{many}[{what}](#{anchor}){optional}"


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, list) and value and all(isinstance(v, Section) for v in value):
        return "see description"
    if isinstance(value, Section):
        union = len(_sections(field.annotation)) > 1
        return f"`{_tag_key(type(value))}: {_tag(type(value))}`" if union else "its defaults"
    return f"`{json.dumps(value)}`"


def _doc(cls: type[Section]) -> str:
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc).replace("``", "`") if doc else ""


def table(block: Block, anchors: dict[str, str]) -> list[str]:
    lines = [f"## {block.title}", ""]
    if doc := _doc(block.cls):
        lines += [doc, ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    for name in block.names:
        field = block.cls.model_fields[name]
        anchor = anchors.get(_sub_path(block.path, name, field), "")
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {field_type(field, anchor)} | {default_text(field)} | "
                     f"{description} |")
    return lines + [""]


def task_blocks(options: Mapping[str, type[Section]]) -> list[Block]:
    """One table per task with options: ``train.task_options.<task>``."""
    return [Block(f"train.task_options.{name}", cls, tuple(cls.model_fields))
            for name, cls in options.items() if cls.model_fields]


def render(task_options: Mapping[str, type[Section]] | None = None) -> str:
    """The whole page; ``task_options``: task name -> its options class (tasks.table)."""
    found = list(blocks()) + task_blocks(task_options or {})
    anchors: dict[str, str] = {}
    for block in found:  # a key path links to its first table
        anchors.setdefault(block.path, slug(block.title))
    contents = [f"{'  ' * block.path.count('.')}- "
                f"[{block.title}](#{slug(block.title)})" for block in found]
    body = [line for block in found for line in table(block, anchors)]
    return "\n".join([HEADER, "## Contents", "", *contents, "", *body]).rstrip() + "\n"


def main(argv: list[str] | None = None,
         task_options: Mapping[str, type[Section]] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PAGE, help=f"default: {PAGE}")
    parser.add_argument("--check", action="store_true", help="compare only; 1 when stale")
    args = parser.parse_args(argv)
    page = render(task_options)
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != page:
            print(f"{args.out} is stale: run `{COMMAND}` (or `make docs`)", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"wrote {args.out}")
    return 0

