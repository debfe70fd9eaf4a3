"""What every config section shares: unknown keys are errors, and typed unions.

A typed union is a section whose keys depend on its ``type`` (or, for data sources, its
``format``). Its members are a plain dict beside the classes (``FUSIONS = {"concat":
ConcatFusionConfig, ...}``); nothing is registered at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag


class Section(BaseModel):
    """A config section: unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class TypedUnion:
    """What a typed union is made of, kept in its annotation so that code reading raw config
    trees or error paths (:mod:`tuwen.config.paths`) can tell the section's type."""

    key: str
    members: dict[str, type[Section]]
    default: str | None

    def tag_of(self, value: Any) -> str | None:
        """The type of a section, raw (a mapping, where a missing key means the default) or
        validated."""
        if isinstance(value, dict):
            return value.get(self.key, self.default)
        return getattr(value, self.key, None)

    def member(self, value: Any) -> type[Section] | None:
        tag = self.tag_of(value)
        return self.members.get(tag) if isinstance(tag, str) else None


def typed_union(members: dict[str, type[Section]], *, default: str | None,
                key: str = "type") -> Any:
    """A section whose keys depend on its ``key`` (each class has ``key: Literal[tag]``).

    A pydantic discriminated union over ``members`` (tag -> class), except that a missing
    ``key`` means ``default``; an unknown tag, or a key of another member, is an error that
    names ``<section>.<key>`` or that key.
    """
    union = TypedUnion(key, dict(members), default)
    tagged = tuple(Annotated[cls, Tag(tag)] for tag, cls in members.items())
    return Annotated[Union[tagged], Discriminator(  # noqa: UP007 (a runtime tuple of members)
        union.tag_of, custom_error_type="type_choice", custom_error_message="unknown type",
        custom_error_context={"expected": " or ".join(repr(t) for t in members), "key": key}),
        union]

