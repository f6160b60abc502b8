"""Each role's NATS subject permissions, enforced by nats-server, and the API endpoints each role may call.

Subjects are listed bare (``legato.work.>``) and with one namespace token in front (``*.legato.work.>``):
a namespace lets several installs (or test cases) share a server; it is not a security boundary.
JetStream's API subjects are granted per verb (create/info/fetch), not per stream, because stream names
carry the namespace; no role but ``root`` may delete or purge a stream or delete a consumer, and the
executor may not create or change streams.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from legato.security.keyring import Identity

VIEWER_ENDPOINTS = (
    "workflow.get",
    "workflow.list",
    "workflow.status",
    "workflow.validate",
    "tag.list",
    "instance.get",
    "instance.list",
    "instance.iterations",
    "signal.list",
    "signal.pending",
    "signal.lineage",
    "dead_letter.list",
    "dead_letter.get",
    "backfill.list",
    "backfill.show",
)
OPERATOR_ENDPOINTS = (
    "instance.start",
    "instance.stop",
    "instance.kill",
    "instance.restart",
    "instance.unblock",
    "instance.skip_step",
    "workflow.stop",
    "workflow.kill",
    "workflow.unblock",
    "signal.send",
    "dead_letter.replay",
    "workflow.pause",
    "workflow.resume",
    "backfill.start",
    "backfill.pause",
    "backfill.resume",
    "backfill.cancel",
    "backfill.retry_failed",
)
# Everything else (push, activate, deactivate, set_run_strategy, tag.set, signal.set_schema,
# workflow.archive/delete, dead_letter.discard, and any endpoint added later) needs admin: a new endpoint is closed until someone opens it here.
RANK = {"viewer": 1, "operator": 2, "admin": 3, "root": 3}


def required_role(endpoint: str) -> str:
    """The least role that may call an API endpoint (admin for any endpoint not listed)."""
    if endpoint in VIEWER_ENDPOINTS:
        return "viewer"
    if endpoint in OPERATOR_ENDPOINTS:
        return "operator"
    return "admin"


def may_call(role: str, endpoint: str) -> bool:
    """Whether ``role`` may call ``endpoint``."""
    return RANK.get(role, 0) >= RANK[required_role(endpoint)]


def _ns(subjects: Iterable[str]) -> list[str]:
    out: list[str] = []
    for s in subjects:
        out += [s, f"*.{s}"] if s.startswith("legato.") else [s]
    return out


# JetStream API subjects, per verb. Every service may read stream info, create its durable consumers,
# fetch from them, ack, and read single messages; no role but root may delete or purge a stream or a
# consumer, and only the trigger and the signal router may list a stream's consumers (JS_LIST_CONSUMERS).
JS_CONSUME = [
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.>",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.MSG.GET.>",
    "$JS.API.CONSUMER.CREATE.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.>",
    "$JS.API.CONSUMER.INFO.>",
    "$JS.API.CONSUMER.MSG.NEXT.>",
    "$JS.ACK.>",
]
# Creating and changing streams (and the attempts bucket): the stateful services only. An executor,
# which runs other people's code, cannot shrink, re-subject or re-purpose a stream.
JS_PROVISION = ["$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>"]
JS_SERVICE = [*JS_CONSUME, *JS_PROVISION]
INBOX = "_INBOX.>"
# The backlog probe (bus/backlog.py: the API sheds starts and the router holds signals back on it)
# reads every partition's trigger consumer in one request: what CONSUMER.INFO.> already shows of each
# consumer, for all of a stream's at once. Read-only.
JS_LIST_CONSUMERS = ["$JS.API.CONSUMER.LIST.*"]
# Reading run lifecycle events (docs/events.md): the notify stream has one name in every namespace
# (Topology.notify_stream), so these grants name it and no other stream: a reader may create consumers
# on it, fetch from and ack them, and delete its own ephemeral ones; nothing on the work, trigger,
# event or signal streams. Events also reach plain subscribers of legato.notify.> (wait, wait_all).
NOTIFY_STREAM = "LEGATO_NOTIFY"
JS_NOTIFY_READ = [
    "$JS.API.INFO",
    f"$JS.API.STREAM.INFO.{NOTIFY_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{NOTIFY_STREAM}.>",
    f"$JS.API.CONSUMER.DURABLE.CREATE.{NOTIFY_STREAM}.>",
    f"$JS.API.CONSUMER.INFO.{NOTIFY_STREAM}.>",
    f"$JS.API.CONSUMER.DELETE.{NOTIFY_STREAM}.>",
    f"$JS.API.CONSUMER.MSG.NEXT.{NOTIFY_STREAM}.>",
    f"$JS.ACK.{NOTIFY_STREAM}.>",
]
# The executor's attempt claims (bucket LEGATO_ATTEMPTS, namespaced): a KV put/create is a publish on
# $KV.<bucket>.<key>, a get a direct get. A bucket name carries the namespace inside its only token, so
# no subject wildcard can name it alone: only the executor is given KV subjects at all.
KV_ATTEMPTS = ["$KV.>", "$JS.API.DIRECT.GET.>"]


def api_subjects(role: str) -> list[str]:
    """The API subjects nats-server lets ``role`` publish requests to."""
    if role in ("admin", "root"):
        return ["legato.api.>"]
    names = VIEWER_ENDPOINTS + (OPERATOR_ENDPOINTS if role == "operator" else ())
    return [f"legato.api.{n}" for n in names]


# What each service's outbox relay may publish (the outbox table is shared: a relay must not pick rows
# its NATS permissions refuse, e.g. the trigger relaying the scheduler's work items). None = all.
RELAY_KINDS: dict[str, tuple[str, ...] | None] = {
    # Not "notify": the cron's skipped-run events are relayed by the scheduler's relay with the
    # scheduler's own, so one relay publishes all lifecycle events, in commit order.
    "trigger": ("trigger", "signal"),
    "scheduler": None,
    "signal_router": ("trigger", "event"),
    "executor": ("event",),
}


def relay_kinds(service: str) -> tuple[str, ...] | None:
    """The outbox kinds a service's relay publishes (None: all)."""
    return RELAY_KINDS.get(service.replace("-", "_"))


def role_permissions(role: str, public_key: str | None = None) -> dict[str, dict[str, list[str]]]:
    """nats-server ``permissions`` for one role; with ``public_key``, the identity may subscribe only to
    its own inbox (``_INBOX.<public key>.>``, the prefix its client uses), so nobody reads another's
    replies, and only the trigger (which answers the API) may publish to other identities' inboxes."""
    if role == "root":
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    pub: list[str]
    sub: list[str]
    deny_pub: list[str] = []
    if role == "trigger":
        pub = [
            *_ns(["legato.trigger.>", "legato.signal.>"]),
            *JS_SERVICE,
            *JS_LIST_CONSUMERS,
            INBOX,
            "$SRV.>",
        ]
        # Run lifecycle events wake the backfill feeder when a backfilled workflow's run ends.
        sub = [*_ns(["legato.api.>", "legato.notify.run.>"]), INBOX, "$SRV.>"]
    elif role == "scheduler":
        pub = [
            *_ns(
                [
                    "legato.work.>",
                    "legato.trigger.>",
                    "legato.event.>",
                    "legato.signal.>",
                    "legato.control.>",
                    "legato.notify.>",
                ]
            ),
            *JS_SERVICE,
            INBOX,
        ]
        # Executors' liveness (scheduler/liveness.py).
        sub = [*_ns(["legato.control.heartbeat"]), INBOX]
    elif role == "executor":
        # Results go to the events stream, liveness to the schedulers, its dead letters to the stateful
        # services, attempt claims to its KV bucket; nothing else: no work, no API, no triggers, no signals.
        pub = [
            *_ns(["legato.event.>", "legato.control.heartbeat", "legato.deadletter.executor"]),
            *JS_CONSUME,
            *KV_ATTEMPTS,
            INBOX,
        ]
        sub = [*_ns(["legato.control.cancel.*"]), INBOX]
    elif role == "signal_router":
        pub = [*_ns(["legato.trigger.>", "legato.event.>"]), *JS_SERVICE, *JS_LIST_CONSUMERS, INBOX]
        sub = [INBOX]
    elif role == "publisher":
        pub = _ns(["legato.signal.>"])
        deny_pub = _ns(["legato.signal._legato.>"])
        sub = [INBOX]
    elif role in ("viewer", "operator", "admin"):
        pub = [*_ns(api_subjects(role)), *JS_NOTIFY_READ]
        sub = [*_ns(["legato.notify.>"]), INBOX]
    else:
        raise ValueError(f"unknown role {role!r}")
    if public_key is not None:
        own = f"_INBOX.{public_key}.>"
        sub = [own if s == INBOX else s for s in sub]
        if role != "trigger":
            pub = [own if p == INBOX else p for p in pub]
    perms: dict[str, dict[str, list[str]]] = {"publish": {"allow": pub}, "subscribe": {"allow": sub}}
    if deny_pub:
        perms["publish"]["deny"] = deny_pub
    return perms


def authorization_block(users: Iterable[Identity]) -> str:
    """nats-server config: every identity as an nkey user with its role's permissions (JSON is valid
    nats-server config syntax, so values are quoted exactly)."""
    entries = [{"nkey": u.public_key, "permissions": role_permissions(u.role, u.public_key)} for u in users]
    return "authorization " + json.dumps({"users": entries}, indent=2)
