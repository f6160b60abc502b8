"""The ``signal.*`` API: send a signal, list stored (and rejected) signals, inspect partial joins, follow
lineage across workflows, declare signal schemas. Registered beside the other endpoints by ``api.py``."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from legato.bus.publisher import OutgoingMessage, Publisher, PublishError
from legato.bus.streams import SIGNAL_MAX_MSG_SIZE
from legato.bus.topology import Topology
from legato.core.reader import SIGNAL_NAME, SIGNAL_NAME_RULE
from legato.core.signals import schema_problem
from legato.protocol import api
from legato.protocol.api import ApiError
from legato.protocol.ids import new_request_id
from legato.protocol.replies import Lineage, PendingSignalList, SignalPage, SignalSchemaSet, SignalSent
from legato.telemetry import get_logger
from legato.telemetry.tracing import inject_headers
from legato.trigger.endpoints import Endpoint, typed
from legato.trigger.instances import iso
from legato.trigger.replies import fit, reply_budget, truncated

log = get_logger("legato.trigger")

MAX_LINEAGE_NODES = 500
SIGNAL_COLUMNS = (
    "seq, name, id, params, raw, publisher, publisher_workflow, publisher_instance, publisher_step, "
    "published_at, received_at, rejected, error"
)


def signal_summary(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "name": r["name"],
        "id": r["id"],
        "seq": r["seq"],
        "params": truncated(r["params"]),
        "publisher": r["publisher"],
        "publisher_instance": r["publisher_instance"],
        "publisher_step": r["publisher_step"],
        "published_at": iso(r["published_at"]),
        "received_at": iso(r["received_at"]),
        "rejected": r["rejected"],
        "error": truncated(r["error"], 4096),
        **({"raw": truncated(r["raw"])} if r["rejected"] else {}),
    }


def check_signal_name(name: str) -> None:
    if not SIGNAL_NAME.fullmatch(name):
        raise ApiError("bad_request", f"name: a signal name is {SIGNAL_NAME_RULE}, got {name!r}")


class SignalApi:
    """Handlers of ``signal.send|list|pending|lineage|set_schema``."""

    def __init__(self, publisher: Publisher, pool: asyncpg.Pool, topology: Topology) -> None:
        self.pool = pool
        self.topology = topology
        self.publisher = publisher

    def endpoints(self) -> dict[str, Endpoint]:
        return {
            "signal.send": (api.SendSignal, typed(self.send, SignalSent)),
            "signal.list": (api.ListSignals, typed(self.list_signals, SignalPage)),
            "signal.pending": (api.PendingSignals, typed(self.pending, PendingSignalList)),
            "signal.lineage": (api.SignalLineage, typed(self.lineage, Lineage)),
            "signal.set_schema": (api.SetSignalSchema, typed(self.set_schema, SignalSchemaSet)),
        }

    async def send(self, req: api.SendSignal) -> dict[str, Any]:
        check_signal_name(req.name)
        sig_id = req.id or new_request_id()
        headers = inject_headers({"Legato-Publisher": req.actor or "api"})
        body = msgspec.json.encode(req.params)
        if len(body) > SIGNAL_MAX_MSG_SIZE:
            raise ApiError(
                "request_too_large",
                f"signal {req.name}: params are {len(body)} bytes encoded, the limit is "
                f"{SIGNAL_MAX_MSG_SIZE} (the signal stream's maximum message size)",
                {"bytes": len(body), "limit": SIGNAL_MAX_MSG_SIZE},
            )
        try:
            ack = await self.publisher.publish(
                OutgoingMessage(self.topology.signal_subject(req.name), body, msg_id=sig_id, headers=headers)
            )
        except PublishError as exc:
            raise ApiError("unavailable", f"signal {req.name} not stored by JetStream: {exc}") from None
        assert ack is not None
        return {"name": req.name, "id": sig_id, "stream_seq": ack.seq, "duplicate": bool(ack.duplicate)}

    async def list_signals(self, req: api.ListSignals) -> dict[str, Any]:
        limit = max(1, min(req.limit, 1000))
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {SIGNAL_COLUMNS} FROM signal WHERE ($1::text IS NULL OR name = $1) "
                "AND (NOT $2 OR rejected) AND ($3::bigint IS NULL OR seq < $3) ORDER BY seq DESC LIMIT $4",
                req.name,
                req.rejected,
                req.before,
                limit + 1,
            )
        page = fit(rows[:limit], reply_budget(self.publisher.nc), signal_summary)
        more = len(page) < len(rows)
        return {"signals": page, "next": page[-1]["seq"] if more and page else None}

    async def pending(self, req: api.PendingSignals) -> dict[str, Any]:
        limit = max(1, min(req.limit, 1000))
        async with self.pool.acquire() as conn:
            triggers = await conn.fetch(
                "SELECT t.workflow_id, t.trigger_id, t.version, t.active, v.definition->'triggers' AS defs "
                "FROM signal_trigger t JOIN workflow_version v "
                "ON v.workflow_id = t.workflow_id AND v.version = t.version "
                "WHERE ($1::text IS NULL OR t.workflow_id = $1) ORDER BY t.workflow_id, t.trigger_id",
                req.workflow_id,
            )
            out = []
            for t in triggers:
                spec = next((d for d in t["defs"] or [] if d.get("id") == t["trigger_id"]), None)
                legs = [leg["name"] for leg in (spec or {}).get("signals", [])]
                if len(legs) < 2:
                    continue  # one-signal triggers fire at once: nothing is ever partial
                rows = await conn.fetch(
                    "SELECT tuple_key, join_values, members, first_at, expires_at, expires_at < now() AS expired, "
                    "count(*) OVER () AS total FROM signal_join "
                    "WHERE workflow_id = $1 AND trigger_id = $2 AND fired_at IS NULL "
                    "ORDER BY first_at LIMIT $3",
                    t["workflow_id"],
                    t["trigger_id"],
                    limit,
                )
                out.append(
                    {
                        "workflow_id": t["workflow_id"],
                        "trigger_id": t["trigger_id"],
                        "active": t["active"],
                        "signals": legs,
                        "join": (spec or {}).get("join", []),
                        "total": rows[0]["total"] if rows else 0,
                        "tuples": [
                            {
                                "tuple_key": r["tuple_key"],
                                "join_values": r["join_values"],
                                "arrived": [
                                    {"leg": leg, "id": m["id"], "at": m["at"]}
                                    for leg, m in r["members"].items()
                                    if leg in legs
                                ],
                                "missing": [leg for leg in legs if leg not in r["members"]],
                                "first_at": iso(r["first_at"]),
                                "expires_at": iso(r["expires_at"]),
                                "expired": r["expired"],
                            }
                            for r in rows
                        ],
                    }
                )
            waits = await conn.fetch(
                "SELECT instance_id, workflow_id, step_id, name, match, created_at FROM signal_wait "
                "WHERE satisfied_at IS NULL AND NOT cancelled AND ($1::text IS NULL OR workflow_id = $1) "
                "ORDER BY created_at LIMIT $2",
                req.workflow_id,
                limit,
            )
        return {
            "triggers": out,
            "steps": [
                {
                    "workflow_id": w["workflow_id"],
                    "instance_id": w["instance_id"],
                    "step_id": w["step_id"],
                    "signal": w["name"],
                    "match": w["match"],
                    "since": iso(w["created_at"]),
                }
                for w in waits
            ],
        }

    async def set_schema(self, req: api.SetSignalSchema) -> dict[str, Any]:
        check_signal_name(req.name)
        async with self.pool.acquire() as conn:
            if req.schema is None:
                await conn.execute("DELETE FROM signal_schema WHERE name = $1", req.name)
                return {"name": req.name, "schema": None}
            problem = schema_problem(req.schema)
            if problem is not None:
                raise ApiError("bad_request", f"signal {req.name}: {problem}")
            await conn.execute(
                "INSERT INTO signal_schema (name, schema, updated_by) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET schema = EXCLUDED.schema, updated_by = EXCLUDED.updated_by, "
                "updated_at = now()",
                req.name,
                req.schema,
                req.actor,
            )
        return {"name": req.name, "schema": req.schema}

    # ------------------------------------------------------------------ lineage

    async def lineage(self, req: api.SignalLineage) -> dict[str, Any]:
        depth = max(0, min(req.depth, 20))
        async with self.pool.acquire() as conn:
            walk = _LineageWalk(conn)
            if req.instance_id:
                run = await walk.run(req.instance_id, depth, upstream=True)
                if run is None:
                    raise ApiError("not_found", f"unknown run {req.instance_id!r}")
                return {"run": run}
            if not (req.name and req.id):
                raise ApiError("bad_request", "lineage: give a signal (name and id) or a run (instance_id)")
            node = await walk.signal(req.name, req.id, depth)
            if node is None:
                raise ApiError("not_found", f"no stored signal {req.name} with id {req.id!r}")
            return {"signal": node}


class _LineageWalk:
    """Follows signals -> runs they started or unblocked -> signals those runs published, both ways."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.nodes = 0

    def _budget(self) -> bool:
        self.nodes += 1
        return self.nodes <= MAX_LINEAGE_NODES

    async def signal(self, name: str, sig_id: str, depth: int) -> dict[str, Any] | None:
        row = await self.conn.fetchrow(
            f"SELECT {SIGNAL_COLUMNS} FROM signal WHERE name = $1 AND id = $2", name, sig_id
        )
        if row is None:
            return None
        node = signal_summary(row)
        if depth <= 0 or not self._budget():
            return node
        triggered = await self.conn.fetch(
            "SELECT f.instance_id, f.workflow_id, f.trigger_id, f.error FROM signal_trigger_fire f "
            "WHERE f.signals @> $1::jsonb ORDER BY f.fired_at",
            [{"name": name, "id": sig_id}],
        )
        node["triggered"] = []
        for f in triggered:
            run = await self.run(f["instance_id"], depth - 1, upstream=False)
            node["triggered"].append(
                {
                    "trigger_id": f["trigger_id"],
                    "error": f["error"],
                    **(
                        run
                        or {
                            "instance_id": f["instance_id"],
                            "workflow_id": f["workflow_id"],
                            "status": "pending",
                        }
                    ),
                }
            )
        unblocked = await self.conn.fetch(
            "SELECT instance_id, step_id FROM signal_wait WHERE name = $1 AND satisfied_by = $2 ORDER BY satisfied_at",
            name,
            sig_id,
        )
        node["unblocked"] = []
        for w in unblocked:
            run = await self.run(w["instance_id"], depth - 1, upstream=False)
            node["unblocked"].append({"step_id": w["step_id"], **(run or {"instance_id": w["instance_id"]})})
        return node

    async def run(self, instance_id: str, depth: int, *, upstream: bool) -> dict[str, Any] | None:
        inst = await self.conn.fetchrow(
            "SELECT id, workflow_id, status FROM workflow_instance WHERE id = $1", instance_id
        )
        if inst is None:
            return None
        node: dict[str, Any] = {
            "instance_id": inst["id"],
            "workflow_id": inst["workflow_id"],
            "status": inst["status"],
        }
        if upstream:
            fire = await self.conn.fetchrow(
                "SELECT trigger_id, signals FROM signal_trigger_fire WHERE instance_id = $1", instance_id
            )
            node["started_by"] = [
                await self._upstream_signal(s["name"], s["id"], depth)
                for s in (fire["signals"] if fire else [])
            ]
            waits = await self.conn.fetch(
                "SELECT step_id, name, satisfied_by FROM signal_wait WHERE instance_id = $1 "
                "AND satisfied_by IS NOT NULL ORDER BY satisfied_at",
                instance_id,
            )
            node["unblocked_by"] = [
                {"step_id": w["step_id"], **await self._upstream_signal(w["name"], w["satisfied_by"], depth)}
                for w in waits
            ]
        published = await self.conn.fetch(
            "SELECT name, id FROM signal WHERE publisher_instance = $1 ORDER BY seq", instance_id
        )
        node["published"] = []
        for p in published:
            if depth > 0 and self._budget():
                child = await self.signal(p["name"], p["id"], depth)
            else:
                child = {"name": p["name"], "id": p["id"]}
            node["published"].append(child)
        return node

    async def _upstream_signal(self, name: str, sig_id: str, depth: int) -> dict[str, Any]:
        row = await self.conn.fetchrow(
            f"SELECT {SIGNAL_COLUMNS} FROM signal WHERE name = $1 AND id = $2", name, sig_id
        )
        if row is None:
            return {"name": name, "id": sig_id}
        node = signal_summary(row)
        publisher = row["publisher_instance"]
        if publisher and depth > 0 and self._budget():
            inst = await self.conn.fetchrow(
                "SELECT id, workflow_id, status FROM workflow_instance WHERE id = $1", publisher
            )
            if inst is not None:
                up: dict[str, Any] = {
                    "instance_id": inst["id"],
                    "workflow_id": inst["workflow_id"],
                    "status": inst["status"],
                }
                fire = await self.conn.fetchrow(
                    "SELECT signals FROM signal_trigger_fire WHERE instance_id = $1", publisher
                )
                up["started_by"] = [
                    await self._upstream_signal(s["name"], s["id"], depth - 1)
                    for s in (fire["signals"] if fire else [])
                ]
                node["published_by"] = up
        return node
