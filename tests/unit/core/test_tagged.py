"""``decode_tagged`` reads a tagged union strictly and keeps what it cannot read, raw."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from legato.core.tagged import decode_tagged, tag_field_of


class _Base(msgspec.Struct, frozen=True, tag_field="shape", forbid_unknown_fields=True):
    pass


class Circle(_Base, frozen=True, tag="circle"):
    r: float


class Square(_Base, frozen=True, tag="square"):
    side: float


class Unknown(msgspec.Struct, frozen=True):
    shape: str | None
    raw: dict[str, Any]


Shape = Circle | Square


def test_a_known_member_decodes_to_its_struct() -> None:
    assert decode_tagged({"shape": "circle", "r": 2}, Shape, Unknown) == Circle(r=2.0)
    assert tag_field_of(Shape) == "shape" and tag_field_of(Circle) == "shape"


@pytest.mark.parametrize(
    ("raw", "tag"),
    [
        ({"shape": "hexagon", "side": 1}, "hexagon"),  # unknown tag
        ({"shape": "square", "side": 1, "colour": "red"}, "square"),  # unknown field
        ({"shape": "circle", "r": "big"}, "circle"),  # wrong type
        ({"r": 1}, None),  # no tag
        ({"shape": 7}, None),  # a tag that is not a string
    ],
)
def test_what_cannot_be_read_exactly_is_kept_raw(raw: dict[str, Any], tag: str | None) -> None:
    assert decode_tagged(raw, Shape, Unknown) == Unknown(tag, raw)


def test_an_untagged_type_is_refused() -> None:
    with pytest.raises(TypeError, match="not a tagged msgspec Struct"):
        tag_field_of(Unknown)
