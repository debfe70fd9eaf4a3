"""What every config section shares: unknown keys are errors, and typed unions.

A typed union is a section whose keys depend on its ``type`` (or, for data sources, its
``format``). Its members are a plain dict beside the classes (``FUSIONS = {"concat":
ConcatFusionConfig, ...}``); nothing is registered at import time.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag


class Section(BaseModel):
    """A config section: unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def typed_union(members: dict[str, type[Section]], *, default: str | None,
                key: str = "type") -> Any:
    """A section whose keys depend on its ``key`` (each class has ``key: Literal[tag]``).

    A pydantic discriminated union over ``members`` (tag -> class), except that a missing
    ``key`` means ``default``; an unknown tag, or a key of another member, is an error that
    names ``<section>.<key>`` or that key.
    """

    def tag_of(value: Any) -> str | None:
        return value.get(key, default) if isinstance(value, dict) else getattr(value, key, None)

    tagged = tuple(Annotated[cls, Tag(tag)] for tag, cls in members.items())
    return Annotated[Union[tagged], Discriminator(  # noqa: UP007 (a runtime tuple of members)
        tag_of, custom_error_type="type_choice", custom_error_message="unknown type",
        custom_error_context={"expected": " or ".join(repr(t) for t in members), "key": key})]
