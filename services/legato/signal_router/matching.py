"""Which triggers a signal feeds, under which join-key tuple, and when a tuple is complete (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from legato.core import CompiledWorkflow, MatchPredicate, SignalTrigger, to_json_value
from legato.core.signals import signal_matches
from legato.sel import SelError
from legato.telemetry import get_logger

log = get_logger("legato.signal_router")

_encode = msgspec.json.Encoder(order="deterministic").encode


@dataclass(frozen=True)
class Signal:
    """One stored (accepted) signal as the router matches it."""

    name: str
    id: str
    fields: Mapping[str, Any]
    published_at: datetime
    traceparent: str | None = None


@dataclass(frozen=True)
class RegisteredTrigger:
    """A signal trigger of a workflow's active version, and from when signals count for it."""

    workflow_id: str
    version: int
    trigger: SignalTrigger
    compiled: CompiledWorkflow
    counts_from: datetime

    @property
    def trigger_id(self) -> str:
        return self.trigger.id

    @property
    def legs(self) -> list[str]:
        return [leg.name for leg in self.trigger.signals]

    @property
    def joined(self) -> bool:
        """True when fired tuples need state across signals (several legs)."""
        return len(self.trigger.signals) > 1


@dataclass(frozen=True)
class Member:
    """A signal accepted by one leg of a trigger, under a join-key tuple."""

    trigger: RegisteredTrigger
    leg: str
    tuple_key: str
    join_values: dict[str, Any]
    signal: Signal


@dataclass
class TriggerTable:
    """Active signal triggers by the signal names their legs listen to."""

    epoch: int = -1
    by_name: dict[str, list[RegisteredTrigger]] = field(default_factory=dict)
    triggers: dict[tuple[str, str], RegisteredTrigger] = field(default_factory=dict)

    @classmethod
    def build(cls, epoch: int, triggers: Iterable[RegisteredTrigger]) -> TriggerTable:
        table = cls(epoch=epoch)
        for t in triggers:
            table.triggers[(t.workflow_id, t.trigger_id)] = t
            for name in dict.fromkeys(t.legs):
                table.by_name.setdefault(name, []).append(t)
        return table


def tuple_of(trigger: SignalTrigger, sig: Signal) -> tuple[str, dict[str, Any]] | None:
    """The join-key tuple a signal belongs to (``None``: it lacks a join key).

    Without join keys, every signal of a one-signal trigger is its own tuple (one run per signal).
    """
    if not trigger.join:
        if len(trigger.signals) == 1:
            return f"id:{sig.name}/{sig.id}", {}
        return "[]", {}
    values: dict[str, Any] = {}
    for key in trigger.join:
        if key not in sig.fields:
            return None
        values[key] = sig.fields[key]
    return _encode([values[k] for k in trigger.join]).decode(), values


def route(sig: Signal, table: TriggerTable) -> list[Member]:
    """Every (trigger, leg, tuple) a newly stored signal counts for."""
    out: list[Member] = []
    for t in table.by_name.get(sig.name, ()):
        if sig.published_at < t.counts_from:
            continue  # published before the trigger existed (and before its `since`)
        for leg in t.trigger.signals:
            if leg.name != sig.name or not leg_accepts(t, leg.name, sig):
                continue
            found = tuple_of(t.trigger, sig)
            if found is None:
                log.info(
                    "signal_lacks_join_key",
                    workflow_id=t.workflow_id,
                    trigger=t.trigger_id,
                    signal=sig.name,
                    signal_id=sig.id,
                    join=t.trigger.join,
                )
                continue
            out.append(Member(t, leg.name, found[0], found[1], sig))
    return out


def leg_accepts(t: RegisteredTrigger, leg: str, sig: Signal) -> bool:
    """The leg's predicates and ``when`` hold; a ``when`` that fails to evaluate is a non-match."""
    try:
        return t.compiled.signal_leg_accepts(t.trigger_id, leg, sig.fields)
    except SelError as exc:
        log.warning(
            "signal_condition_failed",
            workflow_id=t.workflow_id,
            trigger=t.trigger_id,
            signal=sig.name,
            signal_id=sig.id,
            error=str(exc),
        )
        return False


def missing_legs(t: RegisteredTrigger, members: Mapping[str, Any]) -> list[str]:
    """The legs of a signal join that have no signal yet."""
    return [leg for leg in t.legs if leg not in members]


def fire_params(t: RegisteredTrigger, fields_by_leg: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The run params the trigger maps from its signals (JSON form); raises ParamError/SelError."""
    typed = t.compiled.trigger_params(t.trigger_id, signals=fields_by_leg)
    return {k: to_json_value(v) for k, v in typed.items()}


def wait_matches(match: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    """A stored ``signal_wait.match`` (``{field: {op, value}}``, already evaluated) holds on ``fields``."""
    predicates = {k: msgspec.convert(v, MatchPredicate) for k, v in match.items()}
    return signal_matches(predicates, fields)


def containment_filter(match: Mapping[str, Any]) -> dict[str, Any]:
    """The ``=`` predicates on scalars as a jsonb containment filter (narrows the scan of stored signals)."""
    out: dict[str, Any] = {}
    for name, pred in match.items():
        value = pred.get("value") if isinstance(pred, Mapping) else None
        if (
            isinstance(pred, Mapping)
            and pred.get("op", "=") == "="
            and isinstance(value, str | int | float)
            and not isinstance(value, bool)
        ):
            out[name] = value
    return out
