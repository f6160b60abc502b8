"""The outputs file a shell step may write (``$LEGATO_OUTPUTS``): a JSON object, or ``key=value`` lines."""

from __future__ import annotations

import json
from pathlib import Path

from legato.executor.step_runner import StepFailed
from legato.protocol.messages import JSONValue

OUTPUTS_LIMIT = 1024 * 1024  # bytes


def read_outputs_file(path: Path, limit: int = OUTPUTS_LIMIT) -> dict[str, JSONValue]:
    """Read and parse the outputs file; a missing or empty file means no outputs."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StepFailed(f"cannot read the outputs file: {exc}") from None
    if len(data) > limit:
        raise StepFailed(f"outputs file is larger than {limit // 1024} KiB; write less to $LEGATO_OUTPUTS")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StepFailed(f"outputs file is not UTF-8 text: {exc}") from None
    return parse_outputs(text)


def parse_outputs(text: str) -> dict[str, JSONValue]:
    """A JSON object, or one ``key=value`` per line (values that parse as JSON become those values)."""
    stripped = text.strip()
    if not stripped:
        return {}
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped, parse_constant=_no_constants)
        except ValueError as exc:
            raise StepFailed(f"outputs file is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise StepFailed("outputs file must hold a JSON object")
        return value
    outputs: dict[str, JSONValue] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, raw = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise StepFailed(
                f"outputs file line {number}: expected key=value or a JSON object, got {line[:80]!r}"
            )
        outputs[key] = _value(raw)
    return outputs


def _value(raw: str) -> JSONValue:
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except ValueError:
        return raw


def _no_constants(name: str) -> JSONValue:
    # NaN and Infinity are not JSON: "x=NaN" stays the string "NaN".
    raise ValueError(f"{name} is not a JSON value")
