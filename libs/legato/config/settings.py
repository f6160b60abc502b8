"""Settings from flags, the environment and the dev state file, decoded and checked with msgspec.

Where to connect, in order: explicit overrides (CLI flags) > environment (``LEGATO_*``) > the file
``legato dev`` writes in its state folder (``.legato/dev.json``) > defaults. A bad value fails at start
with one line naming the variable.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable and the rule."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Where a process connects and how it behaves; one field per ``LEGATO_<NAME>`` variable."""

    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/legato"
    # Scheduler partitions: a workflow belongs to partition hash(workflow_id) % partitions.
    partitions: int = 8
    # Prefix for stream names and subjects, so several Legato installs (or tests) can share one NATS.
    namespace: str = ""
    state_dir: str = ".legato"
    replica_id: str = ""
    grace_period: float = 10.0
    db_pool_min: int = 1
    db_pool_max: int = 8
    # JetStream stream replicas (3 in a cluster deployment).
    stream_replicas: int = 1
    max_deliveries: int = 5
    # How long the executors' attempt claims are kept (the bucket LEGATO_ATTEMPTS; set by the stateful
    # services, read from the bucket by executors). A work item is run only within this less an hour (or
    # less half of it, if shorter) of its dispatch: an older one is reported lost, not run, and its step
    # retried under its platform-retry budget. Each claim kept costs nats-server ~0.5 KB of memory.
    attempt_claim_ttl: float = 25 * 3600.0
    # Run lifecycle events (docs/events.md): how long and how many the notify stream keeps.
    notify_max_age: float = 7 * 24 * 3600.0
    notify_max_msgs: int = 10_000_000
    notify_max_bytes: int = 1024 * 1024 * 1024
    # Scheduler: at most this many attempts of one workflow wait (sent, not started) in one executor
    # queue; its other ready steps wait in the scheduler, so one fan-out never delays other workflows.
    dispatch_window: int = 256
    # Scheduler: each executor queue has a lead lane, which executors serve first, and a bulk lane. A
    # workflow sends an attempt to the lead lane while fewer than this many of its attempts there are
    # waiting or running: another workflow's next step waits behind a fan-out's few, not its window.
    dispatch_lead: int = 4
    # Trigger: how often the backfill feeder looks for free slots when no run-end event woke it sooner
    # (it follows the run lifecycle events of workflows with a running backfill).
    backfill_poll_interval: float = 0.5
    # The asyncio event loop of every service (trigger, scheduler, executor, signal router): "uvloop"
    # (libuv, less CPU per message; the default) or "asyncio" (the standard library's loop). A platform
    # without uvloop falls back to asyncio.
    event_loop: str = "uvloop"
    log_level: str = "info"
    log_format: str = "auto"
    # Prometheus scrape endpoint (GET /metrics) of this process; 0 = none.
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    # Authentication (docs/security.md): this process's nkey seed file, and the users file (public keys,
    # names, roles) the trigger verifies requests against and the executor takes scheduler keys from.
    nats_creds: str = ""
    auth_users: str = ""
    # Run a service without credentials (no signed requests, no signed work items) on a bus that does
    # not require them. Off by default: a service without LEGATO_NATS_CREDS and LEGATO_AUTH_USERS
    # refuses to start unless this is set (LEGATO_INSECURE=1), so nobody runs open by accident.
    insecure: bool = False
    # NATS TLS: CA bundle to verify the server, and this client's certificate and key (mutual TLS).
    nats_tls_ca: str = ""
    nats_tls_cert: str = ""
    nats_tls_key: str = ""
    # Largest API request body the trigger accepts: the largest definition (4 MiB) as a JSON string.
    api_max_request_bytes: int = 6 * 1024 * 1024
    # instance.start answers ``overloaded`` while this many messages or more wait for the scheduler on
    # the workflow's partition (bus/backlog.py); 0: never.
    api_max_backlog: int = 20_000
    # The signal router holds a signal back (it waits in the signal stream) while this many messages
    # or more wait for the scheduler on a partition the signal would start a run on; 0: never.
    router_max_backlog: int = 20_000
    # Testing only, set by the test suite's process launcher and never in production. Apply every
    # consumed message twice (as if its ack was lost and JetStream redelivered it): handlers are idempotent.
    test_deliver_twice: bool = False
    # A file holding the ISO time the trigger's cron loop takes as now (re-read each tick).
    test_cron_clock_file: str = ""
    # A file every service appends each finished span to, as a JSON line (``legato.telemetry.span_file``).
    test_span_file: str = ""

    def __post_init__(self) -> None:
        _check(
            self.partitions >= 1 and self.partitions <= 4096,
            "LEGATO_PARTITIONS",
            "must be 1..4096",
            self.partitions,
        )
        _check(self.grace_period >= 0, "LEGATO_GRACE_PERIOD", "must be >= 0", self.grace_period)
        _check(self.db_pool_min >= 1, "LEGATO_DB_POOL_MIN", "must be >= 1", self.db_pool_min)
        _check(
            self.db_pool_max >= self.db_pool_min,
            "LEGATO_DB_POOL_MAX",
            "must be >= LEGATO_DB_POOL_MIN",
            self.db_pool_max,
        )
        _check(
            self.stream_replicas in (1, 3, 5),
            "LEGATO_STREAM_REPLICAS",
            "must be 1, 3 or 5",
            self.stream_replicas,
        )
        _check(
            60 <= self.notify_max_age <= 366 * 24 * 3600,
            "LEGATO_NOTIFY_MAX_AGE",
            "must be 60..31622400 seconds",
            self.notify_max_age,
        )
        _check(
            self.notify_max_msgs >= 1000, "LEGATO_NOTIFY_MAX_MSGS", "must be >= 1000", self.notify_max_msgs
        )
        _check(
            self.notify_max_bytes >= 1024 * 1024,
            "LEGATO_NOTIFY_MAX_BYTES",
            "must be >= 1048576",
            self.notify_max_bytes,
        )
        _check(
            2 <= self.attempt_claim_ttl <= 31 * 24 * 3600,
            "LEGATO_ATTEMPT_CLAIM_TTL",
            "must be 2..2678400 seconds",
            self.attempt_claim_ttl,
        )
        _check(self.max_deliveries >= 1, "LEGATO_MAX_DELIVERIES", "must be >= 1", self.max_deliveries)
        _check(
            self.backfill_poll_interval > 0,
            "LEGATO_BACKFILL_POLL_INTERVAL",
            "must be > 0",
            self.backfill_poll_interval,
        )
        _check(
            1 <= self.dispatch_window <= 100_000,
            "LEGATO_DISPATCH_WINDOW",
            "must be 1..100000",
            self.dispatch_window,
        )
        _check(
            1 <= self.dispatch_lead <= 100_000,
            "LEGATO_DISPATCH_LEAD",
            "must be 1..100000",
            self.dispatch_lead,
        )
        _check(
            self.event_loop in ("uvloop", "asyncio"),
            "LEGATO_EVENT_LOOP",
            "must be uvloop or asyncio",
            self.event_loop,
        )
        _check(0 <= self.metrics_port <= 65535, "LEGATO_METRICS_PORT", "must be 0..65535", self.metrics_port)
        _check(
            all(
                u.strip().startswith(("nats://", "tls://", "ws://", "wss://"))
                for u in self.nats_url.split(",")
            ),
            "LEGATO_NATS_URL",
            "must start with nats://, tls://, ws:// or wss:// (a comma-separated list for a cluster)",
            self.nats_url,
        )
        _check(
            self.database_url.startswith(("postgresql://", "postgres://")),
            "LEGATO_DATABASE_URL",
            "must start with postgresql://",
            self.database_url,
        )
        _check(
            bool(self.nats_tls_cert) == bool(self.nats_tls_key),
            "LEGATO_NATS_TLS_CERT",
            "and LEGATO_NATS_TLS_KEY must be given together",
            self.nats_tls_cert,
        )
        _check(
            1024 <= self.api_max_request_bytes <= 64 * 1024 * 1024,
            "LEGATO_API_MAX_REQUEST_BYTES",
            "must be 1024..67108864",
            self.api_max_request_bytes,
        )
        _check(
            self.api_max_backlog >= 0,
            "LEGATO_API_MAX_BACKLOG",
            "must be >= 0 (0: no limit)",
            self.api_max_backlog,
        )
        _check(
            self.router_max_backlog >= 0,
            "LEGATO_ROUTER_MAX_BACKLOG",
            "must be >= 0 (0: no limit)",
            self.router_max_backlog,
        )
        ns = self.namespace
        _check(
            ns == "" or (ns.replace("_", "").replace("-", "").isalnum() and ns.isascii()),
            "LEGATO_NAMESPACE",
            "must be letters, digits, '-' or '_'",
            ns,
        )

    def credentials_problem(self) -> str | None:
        """Why a service must not start with these settings (None: it may)."""
        if self.insecure:
            return None
        missing = [
            var
            for var, value in (("LEGATO_NATS_CREDS", self.nats_creds), ("LEGATO_AUTH_USERS", self.auth_users))
            if not value
        ]
        if not missing:
            return None
        return (
            f"{' and '.join(missing)} not set: a service refuses to run without credentials "
            "(`legato dev` makes them; see docs/security.md), or set LEGATO_INSECURE=1 to run "
            "without authentication on a bus that does not require it"
        )

    @property
    def replica(self) -> str:
        """A stable name for this process's replica (leases are keyed by it)."""
        return self.replica_id or f"{socket.gethostname()}-{os.getpid()}"


def _check(ok: bool, var: str, rule: str, value: object) -> None:
    if not ok:
        raise SettingsError(f"{var}: {rule}, got {value!r}")


_FIELDS: dict[str, str] = {name: f"LEGATO_{name.upper()}" for name in Settings.__struct_fields__}


def dev_state_file(state_dir: str | os.PathLike[str]) -> Path:
    """The file ``legato dev`` writes its URLs and credentials to, in its state folder."""
    return Path(state_dir) / "dev.json"


def read_dev_state(state_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The URLs a running (or last) ``legato dev`` wrote; {} when there is none."""
    path = dev_state_file(state_dir)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    use_dev_state: bool = True,
) -> Settings:
    """Build Settings: overrides > environment > ``<state_dir>/dev.json`` > defaults."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    state_dir = (overrides or {}).get("state_dir") or env.get("LEGATO_STATE_DIR") or ".legato"
    if use_dev_state:
        dev = read_dev_state(state_dir)
        for key in ("nats_url", "database_url", "namespace", "partitions", "nats_creds", "auth_users"):
            if key in dev:
                raw[key] = dev[key]
    for name, var in _FIELDS.items():
        if var in env and env[var] != "":
            raw[name] = env[var]
    for name, value in (overrides or {}).items():
        if value is not None:
            if name not in _FIELDS:
                raise SettingsError(f"unknown setting {name!r}")
            raw[name] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(exc, raw)) from None


_KIND = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _explain(exc: msgspec.ValidationError, raw: Mapping[str, Any]) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.partitions`"; name the variable and the value instead.
    text = str(exc)
    if " - at `$." not in text:
        return text
    rule, _, where = text.partition(" - at `$.")
    field = where.rstrip("`").split(".")[0].split("[")[0]
    var = _FIELDS.get(field, field)
    if rule.startswith("Expected `"):
        wanted = rule.split("`")[1]
        return f"{var}: expected {_KIND.get(wanted, wanted)}, got {raw.get(field)!r}"
    return f"{var}: {rule[0].lower()}{rule[1:]}"
