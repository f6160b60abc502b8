"""Plain data (from YAML or JSON) to the normalised definition Structs, collecting every issue.

The reader checks shape and local rules (types, ranges, patterns, required and unknown fields) and
normalises shorthands. It keeps going after a problem — substituting a default — so that one pass
reports every issue; the graph and expression checks run afterwards (:mod:`legato.core.analysis`).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from legato.core.connections import CONNECTION_NAME
from legato.core.durations import parse_duration
from legato.core.errors import DefinitionError, DefinitionIssue
from legato.core.model import (
    CATCH_UP_POLICIES,
    PARAM_TYPES,
    RUN_STRATEGIES,
    SCHEMA_VERSION,
    STEP_TYPES,
    Backoff,
    ContainerMount,
    ContainerStep,
    CronTrigger,
    ForeachSpec,
    ForeachStep,
    HttpStep,
    LoopSpec,
    LoopStep,
    MatchPredicate,
    NoopStep,
    NotebookStep,
    ParamSpec,
    PluginStep,
    PythonStep,
    RetryPolicy,
    RunStrategy,
    ShellStep,
    SignalLeg,
    SignalPublish,
    SignalTrigger,
    SignalWait,
    SleepStep,
    SqlStatement,
    SqlStep,
    Step,
    SubworkflowRef,
    SubworkflowStep,
    Transition,
    Trigger,
    WorkflowDefinition,
)
from legato.core.step_types import check_config, config_fields, installed_step_types
from legato.core.values import coerce, infer_param_type, to_json_value
from legato.sel.lib_time import resolve_local, zone
from legato.sel.values import a_type, type_name

WORKFLOW_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")
STEP_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # trigger ids, queues, concurrency tags
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# ``_legato...`` names are the platform's own subjects (the scheduler's wait registrations), never a
# user's signal: a trigger, wait or publish of one would mix with them.
SIGNAL_NAME = re.compile(r"(?!_legato)[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
SIGNAL_NAME_RULE = "letters, digits, _ - and dots, not starting with _legato"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
FUNCTION_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")

IMAGE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}")
"""An image reference (``registry/name:tag`` or ``name@sha256:...``); never an option (no leading ``-``)."""
CONTAINER_PATH = re.compile(r"/[^\0\n,]{0,4095}")
"""An absolute path without the characters that separate ``--mount`` options."""
ARTIFACT_PATH = re.compile(r"(?!/)(?!.*(?:^|/)\.\.(?:/|$))[^\0]{1,255}")
"""A relative path or glob that does not climb out of the step's folder."""
MAX_SQL_ROWS = 10_000
MAX_STEPS = 10_000
"""Steps in one definition, all bodies included."""
MAX_NESTING = 10
"""foreach/loop bodies inside bodies."""
MAX_VALUES = 1_000_000
"""Values walked in one definition (YAML aliases can make a small text expand enormously)."""
MAX_TIMEOUT = 366 * 86400.0
MAX_SIGNAL_LEGS = 8
MAX_CATCH_UP = 10_000  # missed fires one cron trigger may run after downtime
MAX_JITTER = 3600.0
MATCH_OPS = ("=", "!=", ">", ">=", "<", "<=", "in")

T = TypeVar("T")
_MISSING: Any = object()


def kind_of(value: Any) -> str:
    """A value's type in YAML/JSON words, for messages: "an int", "a map", "null"."""
    if value is None:
        return "null"
    if type_name(value) == "host object":  # YAML tags such as !!binary or !!set
        return f"a {type(value).__name__}"
    return a_type(value)


def shown(value: Any) -> str:
    """A value as error messages quote it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def at(path: str, key: str | int) -> str:
    """``path`` extended by a map key or a list index."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _TooLarge(Exception):
    pass


class Reader:
    """One pass over a definition's data; ``issues`` holds everything found."""

    def __init__(self) -> None:
        self.issues: list[DefinitionIssue] = []
        self.values_left = MAX_VALUES
        self.steps_seen = 0

    def issue(self, path: str, message: str) -> None:
        self.issues.append(DefinitionIssue(path, message))

    # ------------------------------------------------------------------ generic shapes

    def mapping(self, value: Any, path: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.issue(path, f"must be a map, got {kind_of(value)}")
            return None
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, str):
                out[k] = v
            else:
                self.issue(path, f"keys must be strings, got {kind_of(k)} {shown(k)}")
        return out

    def fields(
        self, m: dict[str, Any], path: str, allowed: Iterable[str], required: Iterable[str] = ()
    ) -> None:
        names = list(allowed)
        for key in m:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                self.issue(at(path, key), "unknown field" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        for key in required:
            if key not in m:
                self.issue(at(path, key), "required")

    def jsonable(self, value: Any, path: str, depth: int = 0) -> Any:
        """``value`` in JSON form (YAML dates become ISO text); counts values against YAML alias bombs."""
        self.values_left -= 1
        if self.values_left < 0:
            raise _TooLarge
        if depth > 64:
            self.issue(path, "nested deeper than 64 levels")
            return None
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                self.issue(path, f"must be a finite number, got {value!r}")
                return None
            return value
        if isinstance(value, (date, datetime)):
            return value.isoformat()
        if isinstance(value, list):
            return [self.jsonable(v, at(path, i), depth + 1) for i, v in enumerate(value)]
        if isinstance(value, dict):
            m = self.mapping(value, path) or {}
            return {k: self.jsonable(v, at(path, k), depth + 1) for k, v in m.items()}
        self.issue(path, f"must be a JSON value, got {kind_of(value)}")
        return None

    def string(
        self,
        m: dict[str, Any],
        key: str,
        path: str,
        default: Any = None,
        *,
        pattern: re.Pattern[str] | None = None,
        rule: str = "",
        nonempty: bool = True,
    ) -> Any:
        value = m.get(key, _MISSING)
        if value is _MISSING or (value is None and default is None):
            return default
        p = at(path, key)
        if not isinstance(value, str):
            self.issue(p, f"must be a string, got {kind_of(value)}")
            return default
        if nonempty and not value.strip():
            self.issue(p, "must not be empty")
            return default
        if pattern is not None and not pattern.fullmatch(value):
            self.issue(p, f"must match {rule or pattern.pattern}, got {shown(value)}")
        return value

    def integer(self, m: dict[str, Any], key: str, path: str, default: Any, lo: int, hi: int) -> Any:
        value = m.get(key, _MISSING)
        if value is _MISSING:
            return default
        p = at(path, key)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                self.issue(p, f"must be an integer, got {kind_of(value)} {shown(value)}")
                return default
        if value < lo:
            self.issue(p, f"must be >= {lo}, got {value}")
            return default
        if value > hi:
            self.issue(p, f"must be <= {hi}, got {value}")
            return default
        return value

    def number(self, m: dict[str, Any], key: str, path: str, default: float, lo: float, hi: float) -> float:
        value = m.get(key, _MISSING)
        if value is _MISSING:
            return default
        p = at(path, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.issue(p, f"must be a number, got {kind_of(value)} {shown(value)}")
            return default
        if not lo <= value <= hi:
            self.issue(p, f"must be between {lo:g} and {hi:g}, got {value}")
            return default
        return float(value)

    def boolean(self, m: dict[str, Any], key: str, path: str, default: bool) -> bool:
        value = m.get(key, _MISSING)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.issue(at(path, key), f"must be true or false, got {kind_of(value)} {shown(value)}")
            return default
        return value

    def choice(self, m: dict[str, Any], key: str, path: str, choices: Iterable[str], default: Any) -> Any:
        value = m.get(key, _MISSING)
        if value is _MISSING:
            return default
        options = list(choices)
        if value not in options:
            self.issue(at(path, key), f"must be one of {', '.join(options)}, got {shown(value)}")
            return default
        return value

    def duration(
        self,
        m: dict[str, Any],
        key: str,
        path: str,
        default: float | None,
        *,
        allow_zero: bool = False,
        hi: float = MAX_TIMEOUT,
    ) -> float | None:
        value = m.get(key, _MISSING)
        if value is _MISSING or value is None:
            return default
        p = at(path, key)
        try:
            seconds = parse_duration(value, p)
        except DefinitionError as exc:
            self.issues.extend(exc.errors)
            return default
        if seconds < 0 or (seconds == 0 and not allow_zero):
            self.issue(p, f"must be {'>= 0' if allow_zero else '> 0'}, got {shown(value)}")
            return default
        if seconds > hi:
            self.issue(p, f"must be at most {hi / 86400:g} days, got {shown(value)}")
            return default
        return seconds

    def names(
        self,
        m: dict[str, Any],
        key: str,
        path: str,
        *,
        pattern: re.Pattern[str] | None = None,
        rule: str = "",
        unique: bool = True,
    ) -> list[str]:
        value = m.get(key, _MISSING)
        if value is _MISSING or value is None:
            return []
        p = at(path, key)
        if isinstance(value, str):
            value = [value]  # a single name is a list of one
        if not isinstance(value, list):
            self.issue(p, f"must be a list of strings, got {kind_of(value)}")
            return []
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.issue(at(p, i), f"must be a non-empty string, got {kind_of(item)}")
            elif pattern is not None and not pattern.fullmatch(item):
                self.issue(at(p, i), f"must match {rule or pattern.pattern}, got {shown(item)}")
            elif unique and item in out:
                self.issue(at(p, i), f"duplicate {shown(item)}")
            else:
                out.append(item)
        return out

    def listing(
        self, m: dict[str, Any], key: str, path: str, read: Callable[[Any, str], T | None]
    ) -> list[T]:
        value = m.get(key, _MISSING)
        if value is _MISSING or value is None:
            return []
        p = at(path, key)
        if not isinstance(value, list):
            self.issue(p, f"must be a list, got {kind_of(value)}")
            return []
        out = []
        for i, item in enumerate(value):
            read_item = read(item, at(p, i))
            if read_item is not None:
                out.append(read_item)
        return out

    def value_map(
        self, m: dict[str, Any], key: str, path: str, *, names: re.Pattern[str] | None = None
    ) -> dict[str, Any]:
        """A map of param-like values (literals, templates, ``{expr: ...}``), in JSON form."""
        value = m.get(key, _MISSING)
        if value is _MISSING or value is None:
            return {}
        p = at(path, key)
        mapped = self.mapping(value, p)
        if mapped is None:
            return {}
        out = {}
        for k, v in mapped.items():
            if names is not None and not names.fullmatch(k):
                self.issue(at(p, k), f"must be a name matching {names.pattern}")
                continue
            out[k] = self.jsonable(v, at(p, k))
        return out

    # ------------------------------------------------------------------ the workflow

    def workflow(self, raw: Any) -> WorkflowDefinition | None:
        m = self.mapping(raw, "") if isinstance(raw, dict) else None
        if m is None:
            self.issue("", f"a definition must be a map with id and steps, got {kind_of(raw)}")
            return None
        self.fields(
            m,
            "",
            (
                "schema",
                "id",
                "description",
                "owner",
                "tags",
                "criticality",
                "run_strategy",
                "step_concurrency",
                "timeout",
                "params",
                "triggers",
                "steps",
            ),
            required=("id", "steps"),
        )
        schema = m.get("schema", SCHEMA_VERSION)
        if schema != SCHEMA_VERSION or isinstance(schema, bool):
            self.issue(
                "schema",
                f"unsupported schema version {shown(schema)}; this Legato reads schema {SCHEMA_VERSION}",
            )
        workflow_id = self.string(
            m,
            "id",
            "",
            "invalid",
            pattern=WORKFLOW_ID,
            rule="lowercase letters, digits, _ . - (max 128), starting with a letter or digit",
        )
        params = self.params(m.get("params"), "params")
        return WorkflowDefinition(
            schema=SCHEMA_VERSION,
            id=workflow_id,
            description=self.string(m, "description", "", nonempty=False),
            owner=self.string(m, "owner", ""),
            tags=self.names(m, "tags", ""),
            criticality=self.choice(m, "criticality", "", ("critical", "high", "medium", "low"), "medium"),
            run_strategy=self.run_strategy(m.get("run_strategy", "sequential"), "run_strategy"),
            step_concurrency=self.integer(m, "step_concurrency", "", None, 1, 1000),
            timeout=self.duration(m, "timeout", "", None),
            params=params,
            triggers=self.listing(m, "triggers", "", self.trigger),
            steps=self.steps(m.get("steps"), "steps", 0),
        )

    def run_strategy(self, raw: Any, path: str) -> RunStrategy:
        if isinstance(raw, str):
            raw = {"type": raw}
        m = self.mapping(raw, path)
        if m is None:
            return RunStrategy()
        self.fields(m, path, ("type", "max_concurrency"), required=("type",))
        kind = self.choice(m, "type", path, RUN_STRATEGIES, "sequential")
        if kind == "parallel":
            return RunStrategy(
                type="parallel", max_concurrency=self.integer(m, "max_concurrency", path, 20, 0, 1000)
            )
        if "max_concurrency" in m and m["max_concurrency"] != 1:
            self.issue(
                at(path, "max_concurrency"),
                f"only the parallel strategy takes max_concurrency (type is {kind})",
            )
        return RunStrategy(type=kind, max_concurrency=1)

    # ------------------------------------------------------------------ params

    def params(self, raw: Any, path: str) -> dict[str, ParamSpec]:
        if raw is None:
            return {}
        m = self.mapping(raw, path)
        if m is None:
            return {}
        out: dict[str, ParamSpec] = {}
        for name, spec in m.items():
            p = at(path, name)
            if not PARAM_NAME.fullmatch(name) or name.startswith("__"):
                self.issue(p, "param names are identifiers: letters, digits and _, not starting with a digit")
                continue
            read = self.param(spec, p)
            if read is not None:
                out[name] = read
        return out

    def param(self, raw: Any, path: str) -> ParamSpec | None:
        if not (isinstance(raw, dict) and ("type" in raw or "expr" in raw)):
            # shorthand: a bare literal is the default, its type inferred
            inferred = infer_param_type(raw)
            if inferred is None:
                self.issue(
                    path, f"a param is {{type, default | expr, ...}} or a literal default, got {kind_of(raw)}"
                )
                return None
            return ParamSpec(type=inferred, default=self.typed_default(raw, inferred, path))
        m = self.mapping(raw, path) or {}
        self.fields(m, path, ("type", "default", "expr", "required", "description", "values", "mode"))
        kind = m.get("type")
        if kind is None:
            kind = infer_param_type(m["default"]) if m.get("default") is not None else None
            if kind is None:
                self.issue(at(path, "type"), f"required (one of {', '.join(PARAM_TYPES)})")
                return None
        elif kind not in PARAM_TYPES:
            self.issue(at(path, "type"), f"must be one of {', '.join(PARAM_TYPES)}, got {shown(kind)}")
            return None
        expr = self.string(m, "expr", path)
        required = self.boolean(m, "required", path, False)
        mode = self.choice(m, "mode", path, ("overridable", "fixed"), "overridable")
        default = None
        if m.get("default") is not None:
            if expr is not None:
                self.issue(path, "give either default or expr, not both")
            default = self.typed_default(m["default"], kind, at(path, "default"))
        if required and (default is not None or expr is not None):
            self.issue(
                at(path, "required"), "a required param takes no default or expr (the run must supply it)"
            )
        if mode == "fixed" and default is None and expr is None:
            self.issue(at(path, "mode"), "a fixed param needs a default or an expr")
        values = None
        if m.get("values") is not None:
            raw_values = m["values"]
            if not isinstance(raw_values, list) or not raw_values:
                self.issue(at(path, "values"), "must be a non-empty list of allowed values")
            else:
                values = [
                    self.typed_default(v, kind, at(at(path, "values"), i)) for i, v in enumerate(raw_values)
                ]
                if default is not None and default not in values:
                    self.issue(at(path, "default"), f"{shown(default)} is not one of the allowed values")
        return ParamSpec(
            type=kind,
            default=default,
            expr=expr,
            required=required,
            description=self.string(m, "description", path, nonempty=False),
            values=values,
            mode=mode,
        )

    def typed_default(self, raw: Any, kind: str, path: str) -> Any:
        try:
            return to_json_value(coerce(self.jsonable(raw, path), kind))  # type: ignore[arg-type]
        except ValueError as exc:
            self.issue(path, str(exc))
            return None

    # ------------------------------------------------------------------ triggers

    def trigger(self, raw: Any, path: str) -> Trigger | None:
        m = self.mapping(raw, path)
        if m is None:
            return None
        index = int(path.rsplit("[", 1)[1].rstrip("]"))
        kind = m.get("type")
        if kind == "cron":
            return self.cron_trigger(m, path, index)
        if kind == "signal":
            return self.signal_trigger(m, path, index)
        self.issue(at(path, "type"), f"must be one of cron, signal, got {shown(kind)}")
        return None

    def cron_trigger(self, m: dict[str, Any], path: str, index: int) -> CronTrigger | None:
        self.fields(
            m,
            path,
            (
                "type",
                "id",
                "cron",
                "timezone",
                "params",
                "catch_up",
                "max_catch_up",
                "start",
                "end",
                "jitter",
            ),
            required=("cron",),
        )
        # the schedule and the time zone are checked when the definition is compiled
        expr = self.string(m, "cron", path, "* * * * *")
        tz = self.string(m, "timezone", path, "UTC")
        catch_up = self.choice(m, "catch_up", path, CATCH_UP_POLICIES, "all")
        max_catch_up = self.integer(m, "max_catch_up", path, 100, 1, MAX_CATCH_UP)
        if "max_catch_up" in m and catch_up != "all":
            self.issue(at(path, "max_catch_up"), f"only applies to catch_up: all, not {catch_up}")
        start = self.window_bound(m, "start", path, tz)
        end = self.window_bound(m, "end", path, tz)
        if start is not None and end is not None and end <= start:
            self.issue(at(path, "end"), f"must be after start ({start.isoformat()}), got {end.isoformat()}")
        jitter = self.duration(m, "jitter", path, 0.0, allow_zero=True, hi=MAX_JITTER) or 0.0
        return CronTrigger(
            id=self.string(m, "id", path, f"cron-{index}", pattern=NAME),
            cron=expr,
            timezone=tz,
            params=self.value_map(m, "params", path),
            catch_up=catch_up,
            max_catch_up=max_catch_up,
            start=start,
            end=end,
            jitter=jitter,
        )

    def window_bound(self, m: dict[str, Any], key: str, path: str, tz: Any) -> datetime | None:
        """A cron ``start``/``end``: a date is midnight, a time without offset is local, in the trigger's zone."""
        raw = m.get(key)
        if raw is None:
            return None
        p = at(path, key)
        if isinstance(raw, date) and not isinstance(raw, datetime):
            raw = datetime.combine(raw, datetime.min.time())
        elif isinstance(raw, str):
            try:
                raw = datetime.fromisoformat(raw.strip())
            except ValueError:
                self.issue(p, f"must be a date (YYYY-MM-DD) or an ISO 8601 datetime, got {shown(raw)}")
                return None
        if not isinstance(raw, datetime):
            self.issue(p, f"must be a date (YYYY-MM-DD) or an ISO 8601 datetime, got {kind_of(raw)}")
            return None
        if raw.tzinfo is not None:
            return raw.astimezone(UTC)
        try:
            local = zone(tz) if isinstance(tz, str) else UTC
        except ValueError:
            local = UTC  # the zone itself is reported when the definition is compiled
        return resolve_local(raw, local).astimezone(UTC)

    def signal_trigger(self, m: dict[str, Any], path: str, index: int) -> SignalTrigger | None:
        self.fields(
            m, path, ("type", "id", "signals", "join", "expiry", "since", "params"), required=("signals",)
        )
        legs = self.listing(m, "signals", path, lambda raw, p: self.signal_leg(raw, p))
        if "signals" in m and isinstance(m["signals"], list):
            if not m["signals"]:
                self.issue(at(path, "signals"), "must list at least one signal")
            elif len(m["signals"]) > MAX_SIGNAL_LEGS:
                self.issue(
                    at(path, "signals"),
                    f"at most {MAX_SIGNAL_LEGS} signals per trigger, got {len(m['signals'])}",
                )
        seen: set[str] = set()
        for i, leg in enumerate(legs):
            if leg.name in seen:
                self.issue(
                    at(at(at(path, "signals"), i), "name"),
                    f"signal {leg.name!r} appears twice in this trigger",
                )
            seen.add(leg.name)
        join = self.names(m, "join", path)
        if len(legs) > 1 and not join and "join" not in m:
            self.issue(
                at(path, "join"), "required when a trigger has more than one signal (the keys that pair them)"
            )
        for key in join:
            for i, leg in enumerate(legs):
                if key in leg.match:
                    self.issue(
                        at(at(at(at(path, "signals"), i), "match"), key),
                        f"join key {key!r} cannot also be a match predicate",
                    )
        since = None
        if m.get("since") is not None:
            since = self.timestamp(m["since"], at(path, "since"))
        return SignalTrigger(
            id=self.string(m, "id", path, f"signal-{index}", pattern=NAME),
            signals=legs,
            join=join,
            expiry=self.duration(m, "expiry", path, 7 * 86400.0) or 7 * 86400.0,
            since=since,
            params=self.value_map(m, "params", path),
        )

    def timestamp(self, raw: Any, path: str) -> datetime | None:
        if isinstance(raw, datetime):
            value = raw
        elif isinstance(raw, str):
            try:
                value = datetime.fromisoformat(raw.strip())
            except ValueError:
                self.issue(path, f"must be an ISO 8601 datetime, got {shown(raw)}")
                return None
        else:
            self.issue(path, f"must be an ISO 8601 datetime, got {kind_of(raw)}")
            return None
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    def signal_leg(self, raw: Any, path: str) -> SignalLeg | None:
        m = self.mapping(raw, path)
        if m is None:
            return None
        self.fields(m, path, ("name", "match", "when"), required=("name",))
        name = self.string(m, "name", path, pattern=SIGNAL_NAME, rule=SIGNAL_NAME_RULE)
        if name is None:
            return None
        match = self.match(m, path, templates=False)
        return SignalLeg(name=name, match=match, when=self.string(m, "when", path))

    def match(self, m: dict[str, Any], path: str, *, templates: bool) -> dict[str, MatchPredicate]:
        raw = m.get("match")
        if raw is None:
            return {}
        p = at(path, "match")
        mapped = self.mapping(raw, p)
        if mapped is None:
            return {}
        out: dict[str, MatchPredicate] = {}
        for field, spec in mapped.items():
            fp = at(p, field)
            op, value = "=", spec
            if isinstance(spec, dict):
                if len(spec) != 1 or next(iter(spec)) not in MATCH_OPS:
                    self.issue(fp, f"must be a value, or {{op: value}} with op one of {' '.join(MATCH_OPS)}")
                    continue
                op, value = next(iter(spec.items()))
            value = self.jsonable(value, fp)
            if op == "in":
                if not isinstance(value, list) or not value:
                    self.issue(fp, "'in' takes a non-empty list of values")
                    continue
            elif isinstance(value, (list, dict)):
                self.issue(fp, f"a {op!r} predicate compares with a single value, got {kind_of(value)}")
                continue
            elif op in (">", ">=", "<", "<=") and (value is None or isinstance(value, bool)):
                self.issue(fp, f"{op!r} compares numbers or strings, got {kind_of(value)}")
                continue
            if not templates and "${" in repr(value):
                self.issue(
                    fp, "templates are not allowed in a trigger's match (no run exists yet); use `when`"
                )
                continue
            out[field] = MatchPredicate(op=op, value=value)  # type: ignore[arg-type]  # op checked above
        return out

    # ------------------------------------------------------------------ steps

    def steps(self, raw: Any, path: str, depth: int) -> list[Step]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.issue(path, f"must be a list of steps, got {kind_of(raw)}")
            return []
        if not raw:
            self.issue(path, "must have at least one step")
        if depth > MAX_NESTING:
            self.issue(path, f"bodies nested deeper than {MAX_NESTING} levels")
            return []
        out = []
        for i, item in enumerate(raw):
            step = self.step(item, at(path, i), depth)
            if step is not None:
                out.append(step)
        return out

    _COMMON = (
        "id",
        "type",
        "description",
        "params",
        "depends_on",
        "next",
        "retry",
        "timeout",
        "on_failure",
        "queue",
        "concurrency_tags",
        "wait_for_signals",
        "publish_signals",
        "outputs",
    )
    _SPECIFIC: dict[str, tuple[str, ...]] = {
        "noop": (),
        "sleep": ("duration",),
        "shell": ("command", "env", "artifacts"),
        "python": ("function",),
        "http": ("url", "method", "headers", "body", "success_status"),
        "sql": ("connection", "sql", "args", "statements", "transaction", "result", "max_rows"),
        "notebook": ("notebook", "kernel"),
        "container": ("image", "command", "env", "mounts", "workdir", "pull", "artifacts"),
        "subworkflow": ("subworkflow",),
        "foreach": ("foreach",),
        "loop": ("loop",),
    }

    def step(self, raw: Any, path: str, depth: int) -> Step | None:
        m = self.mapping(raw, path)
        if m is None:
            return None
        self.steps_seen += 1
        if self.steps_seen == MAX_STEPS + 1:
            self.issue(path, f"a definition has at most {MAX_STEPS} steps (bodies included)")
        kind = m.get("type")
        installed = installed_step_types()
        plugin = installed.types.get(kind) if isinstance(kind, str) else None
        if not isinstance(kind, str) or (kind not in STEP_TYPES and plugin is None):
            if kind is None:
                self.issue(at(path, "type"), f"required (one of {', '.join(installed.names())})")
            else:
                self.issue(at(path, "type"), installed.unknown_type(kind))
            return None
        if plugin is not None:
            specific, required = config_fields(plugin)
        else:
            specific, required = list(self._SPECIFIC[kind]), list(self._required_for(kind))
        self.fields(m, path, (*self._COMMON, *specific), required=("id", *required))
        step_id = m.get("id")
        if not isinstance(step_id, str) or not step_id:
            if "id" in m:
                self.issue(at(path, "id"), f"must be a string, got {kind_of(step_id)}")
            return None
        if not STEP_ID.fullmatch(step_id):
            self.issue(
                at(path, "id"),
                f"must be lowercase letters, digits, _ and - (max 64), starting with a letter or digit; got {shown(step_id)}",
            )
        if "retry" in m and kind in ("foreach", "loop"):
            self.issue(
                at(path, "retry"), f"a {kind} step has no retry of its own; put retry on its body's steps"
            )
        common: dict[str, Any] = {
            "id": step_id,
            "description": self.string(m, "description", path, nonempty=False),
            "params": self.value_map(m, "params", path, names=PARAM_NAME),
            "depends_on": self.names(m, "depends_on", path),
            "next": self.listing(m, "next", path, self.transition),
            "retry": self.retry(m.get("retry"), at(path, "retry")),
            "timeout": self.duration(m, "timeout", path, None),
            "on_failure": self.choice(
                m, "on_failure", path, ("fail", "ignore", "finish_others_then_fail"), "fail"
            ),
            "queue": self.string(m, "queue", path, "default", pattern=NAME),
            "concurrency_tags": self.names(m, "concurrency_tags", path, pattern=NAME),
            "wait_for_signals": self.listing(m, "wait_for_signals", path, self.signal_wait),
            "publish_signals": self.listing(m, "publish_signals", path, self.signal_publish),
            "outputs": self.names(m, "outputs", path, pattern=PARAM_NAME, rule="an identifier"),
        }
        if plugin is not None:
            config = {k: self.jsonable(v, at(path, k)) for k, v in m.items() if k in specific}
            for problem in check_config(plugin, config, path):
                if problem.message != "required":  # already reported by fields()
                    self.issues.append(problem)
            return PluginStep(**common, plugin=kind, config=config)
        reader = getattr(self, f"step_{kind}")
        step: Step | None = reader(m, path, common, depth)
        return step

    @staticmethod
    def _required_for(kind: str) -> tuple[str, ...]:
        return {
            "sleep": ("duration",),
            "shell": ("command",),
            "python": ("function",),
            "http": ("url",),
            "sql": ("connection",),
            "notebook": ("notebook",),
            "container": ("image",),
            "subworkflow": ("subworkflow",),
            "foreach": ("foreach",),
            "loop": ("loop",),
        }.get(kind, ())

    def transition(self, raw: Any, path: str) -> Transition | None:
        if isinstance(raw, str):
            return Transition(step=raw)
        m = self.mapping(raw, path)
        if m is None:
            return None
        self.fields(m, path, ("step", "when"), required=("step",))
        target = self.string(m, "step", path)
        if target is None:
            return None
        return Transition(step=target, when=self.string(m, "when", path))

    def retry(self, raw: Any, path: str) -> RetryPolicy:
        if raw is None:
            return RetryPolicy()
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = {"error": raw}  # `retry: 3` means three retries after step errors
        m = self.mapping(raw, path)
        if m is None:
            return RetryPolicy()
        self.fields(m, path, ("error", "platform", "timeout", "backoff"))
        return RetryPolicy(
            error=self.integer(m, "error", path, 0, 0, 99),
            platform=self.integer(m, "platform", path, 10, 0, 99),
            timeout=self.integer(m, "timeout", path, 0, 0, 99),
            backoff=self.backoff(m.get("backoff"), at(path, "backoff")),
        )

    def backoff(self, raw: Any, path: str) -> Backoff:
        if raw is None:
            return Backoff()
        m = self.mapping(raw, path)
        if m is None:
            return Backoff()
        kind = self.choice(m, "type", path, ("exponential", "fixed"), "exponential")
        if kind == "fixed":
            self.fields(m, path, ("type", "initial"))
            initial = self.duration(m, "initial", path, 30.0, hi=86400.0) or 30.0
            return Backoff(type="fixed", initial=initial, max=initial, multiplier=1.0)
        self.fields(m, path, ("type", "initial", "max", "multiplier"))
        initial = self.duration(m, "initial", path, 1.0, hi=86400.0) or 1.0
        cap = self.duration(m, "max", path, 600.0, hi=86400.0) or 600.0
        if cap < initial:
            self.issue(at(path, "max"), f"must be >= initial ({initial:g}s), got {cap:g}s")
            cap = initial
        multiplier = self.number(m, "multiplier", path, 2.0, 1.0, 100.0)
        return Backoff(type="exponential", initial=initial, max=cap, multiplier=multiplier)

    def signal_wait(self, raw: Any, path: str) -> SignalWait | None:
        m = self.mapping(raw, path)
        if m is None:
            return None
        self.fields(m, path, ("name", "match"), required=("name",))
        name = self.string(m, "name", path, pattern=SIGNAL_NAME, rule=SIGNAL_NAME_RULE)
        if name is None:
            return None
        return SignalWait(name=name, match=self.match(m, path, templates=True))

    def signal_publish(self, raw: Any, path: str) -> SignalPublish | None:
        m = self.mapping(raw, path)
        if m is None:
            return None
        self.fields(m, path, ("name", "params"), required=("name",))
        name = self.string(m, "name", path, pattern=SIGNAL_NAME, rule=SIGNAL_NAME_RULE)
        if name is None:
            return None
        return SignalPublish(name=name, params=self.value_map(m, "params", path))

    # ------------------------------------------------------------------ step types

    def step_noop(self, m: dict[str, Any], path: str, common: dict[str, Any], depth: int) -> Step:
        return NoopStep(**common)

    def step_sleep(self, m: dict[str, Any], path: str, common: dict[str, Any], depth: int) -> Step:
        raw = m.get("duration")
        duration: float | str = 0.0
        if isinstance(raw, str) and "${" in raw:
            duration = raw
        elif raw is not None:
            duration = self.duration(m, "duration", path, 0.0, allow_zero=True) or 0.0
        return SleepStep(**common, duration=duration)

    def step_shell(self, m: dict[str, Any], path: str, common: dict[str, Any], depth: int) -> Step:
        env = self.value_map(m, "env", path, names=ENV_NAME)
        for key, value in env.items():
            if not isinstance(value, str):
                env[key] = value if value is None else str(to_json_value(value))
                if value is None or isinstance(value, (list, dict)):
                    self.issue(at(at(path, "env"), key), f"must be a string, got {kind_of(value)}")
        artifacts = self.names(m, "artifacts", path, pattern=ARTIFACT_PATH, rule="a relative path or glob")
        return ShellStep(**common, command=self.string(m, "command", path, ""), env=env, artifacts=artifacts)

    def step_python(self, m: dict[str, Any], path: str, common: dict[str, Any], depth: int) -> Step:
        function = self.string(m, "function", path, "", pattern=FUNCTION_REF, rule="module:function")
        return PythonStep(**common, function=function)

    def step_http(self, m: dict[str, Any], path: str, common: dict[str, Any], depth: int) -> Step:
        method = m.get("method", "GET")
        if isinstance(method, str):
            method = method.upper()
        methods = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
        if method not in methods:
            self.issue(at(path, "method"), f"must be one of {', '.join(methods)}, got {shown(method)}")
            method = "GET"
        headers = self.value_map(m, "headers", path)
        for key, value in headers.items():
            if not isinstance(value, str):
                self.issue(at(at(path, "headers"), key), f"must be a string, got {kind_of(value)}")
        statuses = []
        raw_statuses = m.get("success_status")
        if raw_statuses is not None:
            if not isinstance(raw_statuses, list):
                raw_statuses = [raw_statuses]
            for i, code in enumerate(raw_statuses):
                if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
                    self.issue(
                        at(at(path, "success_status"), i),
                        f"must be an HTTP status 100..599, got {shown(code)}",
                    )
                else:
                    statuses.append(code)
        return HttpStep(
            **common,
            url=self.string(m, "url", path, ""),
            method=method,
            headers={k: v for k, v in headers.items() if isinstance(v, str)},
            body=self.jsonable(m.get("body"), at(path, "body")),
            success_status=statuses,
        )

    def step_sql(self, m: dict[str, Any], path: str, common: dict[str, Any], depth: int) -> Step:
        connection = self.string(m, "connection", path, "", pattern=CONNECTION_NAME, rule="a connection name")
        statements: list[SqlStatement] = []
        if ("sql" in m) == ("statements" in m):
            self.issue(path, "give exactly one of sql (with args) or statements")
        elif "sql" in m:
            one = self.sql_statement({k: m[k] for k in ("sql", "args") if k in m}, path)
            statements = [one] if one is not None else []
        else:
            if "args" in m:
                self.issue(at(path, "args"), "with statements, give args on each statement")
            raw = m.get("statements")
            if not isinstance(raw, list) or not raw:
                self.issue(at(path, "statements"), f"must be a non-empty list, got {kind_of(raw)}")
            else:
                statements = self.listing(m, "statements", path, self.sql_statement)
        return SqlStep(
            **common,
            connection=connection,
            statements=statements,
            transaction=self.boolean(m, "transaction", path, True),
            result=self.choice(m, "result", path, ("none", "first", "rows"), "first"),
            max_rows=self.integer(m, "max_rows", path, 100, 1, MAX_SQL_ROWS),
        )

    def step_notebook(self, m: dict[str, Any], path: str, common: dict[str, Any], depth: int) -> Step:
        notebook = self.string(m, "notebook", path, "")
        if isinstance(notebook, str) and notebook and not notebook.endswith(".ipynb"):
            self.issue(at(path, "notebook"), f"must be a .ipynb file, got {shown(notebook)}")
        kernel = self.string(m, "kernel", path, "python3", pattern=NAME, rule="a kernel name")
        return NotebookStep(**common, notebook=notebook, kernel=kernel)

    def step_container(self, m: dict[str, Any], path: str, common: dict[str, Any], depth: int) -> Step:
        image = self.string(m, "image", path, "", pattern=IMAGE_REF, rule="an image reference (name[:tag])")
        command = m.get("command", [])
        if isinstance(command, str):
            self.issue(at(path, "command"), "must be a list of strings (the argument list; no shell is run)")
            command = []
        elif not isinstance(command, list):
            self.issue(at(path, "command"), f"must be a list of strings, got {kind_of(command)}")
            command = []
        args: list[str] = []
        for i, item in enumerate(command):
            value = self.jsonable(item, at(at(path, "command"), i))
            if isinstance(value, (dict, list)) or value is None:
                self.issue(at(at(path, "command"), i), f"must be a string, got {kind_of(item)}")
            else:
                args.append(value if isinstance(value, str) else str(to_json_value(value)))
        env = self.value_map(m, "env", path, names=ENV_NAME)
        for key, value in env.items():
            if not isinstance(value, str):
                env[key] = value if value is None else str(to_json_value(value))
                if value is None or isinstance(value, (list, dict)):
                    self.issue(at(at(path, "env"), key), f"must be a string, got {kind_of(value)}")
        mounts = self.listing(m, "mounts", path, self.container_mount)
        targets = [mount.target for mount in mounts]
        for i, target in enumerate(targets):
            if target in targets[:i] or target == "/legato/work":
                self.issue(at(at(at(path, "mounts"), i), "target"), f"{shown(target)} is already mounted")
        workdir = self.string(m, "workdir", path, None, pattern=CONTAINER_PATH, rule="an absolute path")
        artifacts = self.names(m, "artifacts", path, pattern=ARTIFACT_PATH, rule="a relative path or glob")
        return ContainerStep(
            **common,
            image=image,
            command=args,
            env=env,
            mounts=mounts,
            workdir=workdir,
            pull=self.choice(m, "pull", path, ("missing", "never", "always"), "missing"),
            artifacts=artifacts,
        )

    def container_mount(self, raw: Any, path: str) -> ContainerMount | None:
        m = self.mapping(raw, path)
        if m is None:
            return None
        self.fields(m, path, ("source", "target", "read_only"), required=("source", "target"))
        rule = "an absolute path without commas"
        source = self.string(m, "source", path, None, pattern=CONTAINER_PATH, rule=rule)
        target = self.string(m, "target", path, None, pattern=CONTAINER_PATH, rule=rule)
        if isinstance(source, str) and "/../" in f"{source}/":
            self.issue(at(path, "source"), f"must not contain '..', got {shown(source)}")
        if not isinstance(source, str) or not isinstance(target, str):
            return None
        return ContainerMount(
            source=source, target=target, read_only=self.boolean(m, "read_only", path, True)
        )

    def sql_statement(self, raw: Any, path: str) -> SqlStatement | None:
        if isinstance(raw, str):
            raw = {"sql": raw}
        m = self.mapping(raw, path)
        if m is None:
            return None
        self.fields(m, path, ("sql", "args"), required=("sql",))
        sql = self.string(m, "sql", path, "")
        if isinstance(sql, str) and "${" in sql:
            # Values are bound as query parameters, never formatted into the text.
            self.issue(at(path, "sql"), "must not contain ${...}: pass values in args and write $1, $2, ...")
        args = m.get("args", [])
        if not isinstance(args, list):
            self.issue(at(path, "args"), f"must be a list (bound to $1, $2, ...), got {kind_of(args)}")
            args = []
        return SqlStatement(
            sql=sql, args=[self.jsonable(v, at(at(path, "args"), i)) for i, v in enumerate(args)]
        )

    def subworkflow_ref(self, raw: Any, path: str) -> SubworkflowRef | None:
        m = self.mapping(raw, path)
        if m is None:
            return None
        self.fields(m, path, ("workflow", "version", "params", "apply_run_strategy"), required=("workflow",))
        version = m.get("version", "active")
        if version != "active" and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            self.issue(
                at(path, "version"), f"must be a version number >= 1 or 'active', got {shown(version)}"
            )
            version = "active"
        return SubworkflowRef(
            workflow=self.string(m, "workflow", path, "invalid", pattern=WORKFLOW_ID, rule="a workflow id"),
            version=version,
            params=self.value_map(m, "params", path, names=PARAM_NAME),
            apply_run_strategy=self.boolean(m, "apply_run_strategy", path, False),
        )

    def step_subworkflow(
        self, m: dict[str, Any], path: str, common: dict[str, Any], depth: int
    ) -> Step | None:
        ref = (
            self.subworkflow_ref(m.get("subworkflow"), at(path, "subworkflow"))
            if "subworkflow" in m
            else None
        )
        if ref is None:
            return None
        return SubworkflowStep(**common, subworkflow=ref)

    def step_foreach(self, m: dict[str, Any], path: str, common: dict[str, Any], depth: int) -> Step | None:
        p = at(path, "foreach")
        spec = self.mapping(m.get("foreach"), p) if "foreach" in m else None
        if spec is None:
            return None
        self.fields(
            spec, p, ("over", "as", "concurrency", "on_failure", "steps", "subworkflow"), required=("over",)
        )
        name = self.string(spec, "as", p, "item", pattern=PARAM_NAME, rule="an identifier")
        if name == "index":
            self.issue(at(p, "as"), "'index' is the iteration index; pick another name for the item")
        has_steps, has_sub = spec.get("steps") is not None, spec.get("subworkflow") is not None
        if has_steps == has_sub:
            self.issue(p, "give exactly one of steps (a body) or subworkflow")
        body = self.steps(spec.get("steps"), at(p, "steps"), depth + 1) if has_steps else None
        ref = self.subworkflow_ref(spec["subworkflow"], at(p, "subworkflow")) if has_sub else None
        return ForeachStep(
            **common,
            foreach=ForeachSpec(
                over=self.string(spec, "over", p, "[]"),
                as_=name,
                concurrency=self.integer(spec, "concurrency", p, 20, 1, 10_000),
                on_failure=self.choice(
                    spec,
                    "on_failure",
                    p,
                    ("fail", "ignore", "finish_others_then_fail"),
                    "finish_others_then_fail",
                ),
                steps=body,
                subworkflow=ref,
            ),
        )

    def step_loop(self, m: dict[str, Any], path: str, common: dict[str, Any], depth: int) -> Step | None:
        p = at(path, "loop")
        spec = self.mapping(m.get("loop"), p) if "loop" in m else None
        if spec is None:
            return None
        self.fields(
            spec, p, ("while", "max_iterations", "steps"), required=("while", "max_iterations", "steps")
        )
        return LoopStep(
            **common,
            loop=LoopSpec(
                while_=self.string(spec, "while", p, "false"),
                max_iterations=self.integer(spec, "max_iterations", p, 1, 1, 10_000),
                steps=self.steps(spec.get("steps"), at(p, "steps"), depth + 1),
            ),
        )


def read_definition(raw: Any) -> tuple[WorkflowDefinition | None, list[DefinitionIssue]]:
    """The normalised definition in ``raw`` (best effort) and every shape issue found."""
    reader = Reader()
    try:
        definition = reader.workflow(raw)
    except _TooLarge:
        reader.issue("", f"definition too large: more than {MAX_VALUES} values (YAML aliases expand?)")
        return None, reader.issues
    return definition, reader.issues
