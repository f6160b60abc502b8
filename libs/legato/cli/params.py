"""The one ``--param`` parser (``start``, ``workflow plan``, ``signal send``).

``NAME=VALUE``: a VALUE that is valid JSON is taken as JSON (``3``, ``2.5``, ``true``, ``[1,2]``,
``{"a":1}``, ``"007"``); anything else is the text as written (``name=Ada``, ``day=2024-01-31``).
``null`` is refused: a run param cannot be null — leave the param out to get its default, or write
``NAME='"null"'`` for the four-letter text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


class ParamSyntaxError(ValueError):
    """A ``--param`` that is not ``NAME=VALUE`` (or sets null); the message names the argument."""


def parse_params(pairs: Sequence[str] | None, *, flag: str = "--param") -> dict[str, Any]:
    """``NAME=VALUE`` pairs as a dict (see the module docstring for how VALUE is read)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParamSyntaxError(f"{flag} expects NAME=VALUE, got {pair!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if value is None:
            raise ParamSyntaxError(
                f"{flag} {pair!r}: null is not a param value; leave {key} out to use its default, "
                f"or write {key}='\"null\"' for the text"
            )
        if key in out:
            raise ParamSyntaxError(f"{flag} {key} is given twice")
        out[key] = value
    return out
