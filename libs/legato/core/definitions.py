"""Parsing definitions from text, and their canonical JSON form (storage, digests)."""

from __future__ import annotations

import hashlib

import msgspec

from legato.core.compiled import analyze_definition
from legato.core.errors import DefinitionError
from legato.core.loader import load_document
from legato.core.model import WorkflowDefinition
from legato.core.reader import read_definition

_decoder = msgspec.json.Decoder(WorkflowDefinition)


def parse_definition(data: str | bytes, *, source: str = "<definition>") -> WorkflowDefinition:
    """Parse and validate a YAML or JSON definition; raises :class:`DefinitionError` with every issue."""
    raw = load_document(data, source)
    definition, issues = read_definition(raw)
    if definition is not None:
        issues.extend(analyze_definition(definition)[1])
    if issues or definition is None:
        raise DefinitionError(issues)
    return definition


def definition_to_json(defn: WorkflowDefinition) -> bytes:
    """Canonical JSON of a normalised definition: keys sorted, every field present; round-trips."""
    return msgspec.json.encode(defn, order="sorted")


def definition_from_json(data: bytes | str) -> WorkflowDefinition:
    """Decode a definition stored by :func:`definition_to_json` (trusted: no re-validation)."""
    return _decoder.decode(data)


def definition_digest(defn: WorkflowDefinition) -> str:
    """sha256 hex of the canonical JSON: the same definition pushed twice has the same digest."""
    return hashlib.sha256(definition_to_json(defn)).hexdigest()
