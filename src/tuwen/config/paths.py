"""Dotted key paths through the config's typed sections: setting a key in a raw YAML tree
(``--set``, sweeps, ablations), and reading the key path of a validation error.

Setting a typed section's key (``model.fusion.type=concat``) switches its type: the keys of
the old type that the new one also has stay (``layers``, ``heads``), the old type's other
keys are dropped (``window`` belongs to cross-attention only) and reported. Everything else
stays as set, as far as the new type allows. A key that the old type does not have either
(a typo) stays, so validation still names it.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tuwen.config.base import TypedUnion
from tuwen.config.root import Config
from tuwen.errors import ConfigError


def _unwrap(annotation: Any) -> Any:
    """One layer off: ``Annotated[X, ...]`` or ``X | None`` -> ``X``; else unchanged."""
    if typing.get_origin(annotation) is Annotated:
        return annotation.__origin__
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _bare(annotation: Any) -> Any:
    while (inner := _unwrap(annotation)) is not annotation:
        annotation = inner
    return annotation


def field_type(field: FieldInfo) -> Any:
    """A field's whole annotation: pydantic keeps an ``Annotated``'s extras apart."""
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def union_of(annotation: Any) -> TypedUnion | None:
    """The typed union an annotation stands for (``X | None`` included), else None."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            found = next((m for m in annotation.__metadata__ if isinstance(m, TypedUnion)), None)
            if found is not None:
                return found
        inner = _unwrap(annotation)
        if inner is annotation:
            return None
        annotation = inner


def _model(annotation: Any) -> type[BaseModel] | None:
    annotation = _bare(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
        else None


def _classes(annotation: Any) -> list[type[BaseModel]]:
    """The section classes a field can hold: every type of a typed union, or its model."""
    union = union_of(annotation)
    if union is not None:
        return list(union.members.values())
    model = _model(annotation)
    return [model] if model else []


def known_path(parts: list[str], root: type[BaseModel] = Config) -> bool:
    """``parts`` names a key of the config, in some type of each typed section on the way."""
    classes = [root]
    for part in parts:
        fields = [c.model_fields[part] for c in classes if part in c.model_fields]
        if not fields:
            return False
        classes = [c for f in fields for c in _classes(field_type(f))]
    return True


# ------------------------------------------------------------------ setting a key

def _raw_section(raw: dict, parts: list[str], root: type[BaseModel]
                 ) -> tuple[dict | None, TypedUnion | None]:
    """The raw mapping at ``parts`` and its typed union (None when it is a plain section);
    (None, None) when the tree does not hold that section."""
    cls: type[BaseModel] | None = root
    node: Any = raw
    union = None
    for part in parts:
        field = cls.model_fields.get(part) if cls is not None else None
        node = node.get(part) if isinstance(node, dict) else None
        if field is None or not isinstance(node, dict):
            return None, None
        union = union_of(field_type(field))
        cls = union.member(node) if union is not None else _model(field_type(field))
    return node, union


def switch_type(raw: dict, parts: list[str], value: Any,
                root: type[BaseModel] = Config) -> list[str]:
    """When ``parts`` is a typed section's key and ``value`` one of its types: drop the
    section's keys that its current type has and that type lacks. Returns their paths."""
    section, union = _raw_section(raw, parts[:-1], root)
    if section is None or union is None or parts[-1] != union.key \
            or not isinstance(value, str) or value not in union.members:
        return []
    old, new = union.member(section), union.members[value]
    if old is None:  # an unknown type: validation names it, and the keys stay for its message
        return []
    dropped = [k for k in section if k in old.model_fields and k not in new.model_fields]
    for key in dropped:
        del section[key]
    return [".".join([*parts[:-1], key]) for key in dropped]


def set_key(raw: dict, parts: list[str], value: Any, label: str,
            root: type[BaseModel] = Config) -> list[str]:
    """Set ``parts`` to ``value`` in the raw tree, switching a typed section's type as the
    module docstring says; returns the keys the switch dropped. ``label`` starts errors."""
    dropped = switch_type(raw, parts, value, root)
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{label}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = value
    return dropped


def dropped_note(label: str, dropped: list[str], value: Any) -> str:
    """The line that reports a type switch's dropped keys."""
    what = "a key" if len(dropped) == 1 else "keys"
    return f"{label}: dropped {', '.join(dropped)} (not {what} of {value})"


# ------------------------------------------------------------------ error key paths

def _child(annotation: Any, item: Any) -> Any:
    """The annotation one step down an error's key path, None when unknown."""
    model = _model(annotation)
    if model is not None:
        field = model.model_fields.get(item) if isinstance(item, str) else None
        return field_type(field) if field else None
    annotation = _bare(annotation)
    if typing.get_origin(annotation) is list and isinstance(item, int):
        return typing.get_args(annotation)[0]
    return None


def split_loc(loc: tuple, root: type[BaseModel] = Config
              ) -> tuple[list[str], dict[int, tuple[str, str]]]:
    """A pydantic error's key path without the tags pydantic puts in after each typed
    section, and those tags: {index in the path of the section: (its key, its type)}."""
    path: list[str] = []
    tags: dict[int, tuple[str, str]] = {}
    annotation: Any = root
    for item in loc:
        union = union_of(annotation)
        if union is not None and item in union.members:
            tags[len(path) - 1] = (union.key, item)
            annotation = union.members[item]
            continue
        path.append(str(item))
        annotation = _child(annotation, item)
    return path, tags
