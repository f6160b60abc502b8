"""Trigger builders: ``Cron`` and ``Signals``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, ClassVar

from legato.core.model import CronTrigger, SignalTrigger
from legato.flow.data import (
    Compact,
    Duration,
    data_of,
    datetime_text,
    duration_data,
    duration_text,
    name_list,
    put,
    value_data,
)
from legato.flow.options import Signal


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Cron(Compact):
    """A cron trigger: a run at each fire time of a 5-field schedule in a time zone."""

    repr_positional: ClassVar[tuple[str, ...]] = ("cron",)
    cron: str
    id: str | None = None
    timezone: str | None = None
    params: Mapping[str, Any] | None = None
    catch_up: str | None = None
    max_catch_up: int | None = None
    start: datetime | date | str | None = None
    end: datetime | date | str | None = None
    jitter: Duration | None = None

    def __init__(
        self,
        cron: str,
        *,
        id: str | None = None,
        timezone: str | None = None,
        params: Mapping[str, Any] | None = None,
        catch_up: str | None = None,
        max_catch_up: int | None = None,
        start: datetime | date | str | None = None,
        end: datetime | date | str | None = None,
        jitter: Duration | None = None,
    ) -> None:
        for name, value in locals().items():
            if name != "self":
                object.__setattr__(self, name, value)

    def to_data(self) -> dict[str, Any]:
        """The trigger as definition data."""
        out: dict[str, Any] = {"type": "cron"}
        put(out, "id", self.id)
        out["cron"] = self.cron
        put(out, "timezone", self.timezone)
        put(out, "params", None if self.params is None else value_data(self.params))
        put(out, "catch_up", self.catch_up)
        put(out, "max_catch_up", self.max_catch_up)
        put(out, "start", self.start)
        put(out, "end", self.end)
        put(out, "jitter", duration_data(self.jitter))
        return out

    @classmethod
    def from_model(cls, trigger: CronTrigger) -> Cron:
        """The builder form of a normalised cron trigger."""
        return cls(
            trigger.cron,
            id=trigger.id,
            timezone=None if trigger.timezone == "UTC" else trigger.timezone,
            params=dict(trigger.params) or None,
            catch_up=None if trigger.catch_up == "all" else trigger.catch_up,
            max_catch_up=None
            if trigger.max_catch_up == 100 or trigger.catch_up != "all"
            else trigger.max_catch_up,
            start=None if trigger.start is None else datetime_text(trigger.start),
            end=None if trigger.end is None else datetime_text(trigger.end),
            jitter=duration_text(trigger.jitter) if trigger.jitter else None,
        )


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Signals(Compact):
    """A signal trigger: one run per completed tuple of matching signals, joined on the ``join`` keys."""

    repr_varargs: ClassVar[str | None] = "signals"
    signals: tuple[Signal | str, ...]
    id: str | None = None
    join: list[str] | str | None = None
    expiry: Duration | None = None
    since: datetime | str | None = None
    params: Mapping[str, Any] | None = None

    def __init__(
        self,
        *signals: Signal | str,
        id: str | None = None,
        join: list[str] | str | None = None,
        expiry: Duration | None = None,
        since: datetime | str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        object.__setattr__(self, "signals", tuple(signals))
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "join", join)
        object.__setattr__(self, "expiry", expiry)
        object.__setattr__(self, "since", since)
        object.__setattr__(self, "params", params)

    def to_data(self) -> dict[str, Any]:
        """The trigger as definition data."""
        out: dict[str, Any] = {"type": "signal"}
        put(out, "id", self.id)
        out["signals"] = [Signal(s).to_data() if isinstance(s, str) else data_of(s) for s in self.signals]
        put(out, "join", name_list(self.join))
        put(out, "expiry", duration_data(self.expiry))
        put(out, "since", self.since)
        put(out, "params", None if self.params is None else value_data(self.params))
        return out

    @classmethod
    def from_model(cls, trigger: SignalTrigger) -> Signals:
        """The builder form of a normalised signal trigger."""
        legs = [
            leg.name if not leg.match and leg.when is None else Signal.from_model(leg)
            for leg in trigger.signals
        ]
        return cls(
            *legs,
            id=trigger.id,
            join=list(trigger.join) if trigger.join or len(trigger.signals) > 1 else None,
            expiry=None if trigger.expiry == 7 * 86400.0 else duration_text(trigger.expiry),
            since=None if trigger.since is None else datetime_text(trigger.since),
            params=dict(trigger.params) or None,
        )
