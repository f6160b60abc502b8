"""Tolerant decoding of a msgspec tagged union: what this version cannot read exactly is kept raw.

Stored rows outlive the code that wrote them: a reason or a progress record written by another
version (an unknown tag, a field this version does not know, a value of another type) must still be
read, shown and written back unchanged. ``decode_tagged`` reads strictly into the union and falls
back to the caller's "other" record holding the raw object.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, get_args

import msgspec

OtherT = TypeVar("OtherT")


def tag_field_of(union: Any) -> str:
    """The tag field (``code``, ``kind``) shared by the Structs of a tagged ``union``."""
    members = get_args(union) or (union,)
    field = members[0].__struct_config__.tag_field
    if not isinstance(field, str):
        raise TypeError(f"{members[0].__name__} is not a tagged msgspec Struct")
    return field


def decode_tagged(
    raw: Mapping[str, Any], union: Any, other: Callable[[str | None, dict[str, Any]], OtherT]
) -> Any | OtherT:
    """``raw`` as the member of the tagged ``union`` its tag names, read strictly; anything this
    version cannot read exactly becomes ``other(tag, raw)`` (the tag when it is a string), never an
    exception."""
    tag = raw.get(tag_field_of(union))
    member = _members_by_tag(union).get(tag) if isinstance(tag, str) else None
    if member is not None:
        try:
            return msgspec.convert(raw, member)
        except msgspec.ValidationError:
            pass
    return other(tag if isinstance(tag, str) else None, dict(raw))


@functools.cache
def _members_by_tag(union: Any) -> dict[str, type[msgspec.Struct]]:
    # Converting to one Struct class is ~100x faster than to the union (msgspec caches a class's
    # decoder but rebuilds a union's on every call): the tag picks the class.
    members = get_args(union) or (union,)
    return {str(member.__struct_config__.tag): member for member in members}
