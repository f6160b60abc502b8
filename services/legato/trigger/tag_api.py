"""``tag.set``/``tag.list``: concurrency tags, a limit on how many steps carrying a tag run at once
across workflows; the scheduler hands out the permits (``tag_permit``) and queues waiters
(``tag_waiter``), which a changed limit wakes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import asyncpg

from legato.bus.topology import Topology
from legato.protocol import api
from legato.protocol.api import ApiError
from legato.protocol.replies import TagInfo, TagList
from legato.trigger import registry
from legato.trigger.endpoints import Endpoint, typed

TAG_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MAX_TAG_LIMIT = 100_000


class TagApi:
    """The ``tag.*`` endpoints."""

    def __init__(self, pool: asyncpg.Pool, topology: Topology, *, wake_relay: Callable[[], None]) -> None:
        self.pool = pool
        self.topology = topology
        self.wake_relay = wake_relay

    def endpoints(self) -> dict[str, Endpoint]:
        """This resource's endpoints by ``resource.verb``."""
        return {
            "tag.set": (api.SetTag, typed(self.set, TagInfo)),
            "tag.list": (api.TagRef, typed(self.list, TagList)),
        }

    async def set(self, req: api.SetTag) -> dict[str, Any]:
        if not TAG_NAME.match(req.tag):
            raise ApiError("bad_request", f"tag: must match {TAG_NAME.pattern}, got {req.tag!r}")
        if req.limit is not None and not 0 <= req.limit <= MAX_TAG_LIMIT:
            raise ApiError("bad_request", f"limit: must be 0..{MAX_TAG_LIMIT}, got {req.limit}")
        async with self.pool.acquire() as conn, conn.transaction():
            if req.limit is None:
                await conn.execute("DELETE FROM concurrency_tag WHERE tag = $1", req.tag)
            else:
                await conn.execute(
                    "INSERT INTO concurrency_tag (tag, max_running, updated_by) VALUES ($1, $2, $3) "
                    "ON CONFLICT (tag) DO UPDATE SET max_running = $2, updated_by = $3, updated_at = now()",
                    req.tag,
                    req.limit,
                    req.actor,
                )
            # Steps waiting for this tag may be able to run now: wake their workflows.
            waiting = [
                r["workflow_id"]
                for r in await conn.fetch(
                    "SELECT DISTINCT workflow_id FROM tag_waiter WHERE tag = $1", req.tag
                )
            ]
            for wf in waiting:
                await registry.notify_scheduler(conn, self.topology, wf, f"tag {req.tag} limit changed")
        self.wake_relay()
        if req.limit is None:
            return {"tag": req.tag, "limit": None}
        tags: list[dict[str, Any]] = (await self.list(api.TagRef(tag=req.tag)))["tags"]
        return tags[0]

    async def list(self, req: api.TagRef) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT t.tag, t.max_running, t.updated_by, t.updated_at, "
                "(SELECT count(*) FROM tag_permit p WHERE p.tag = t.tag) AS in_use, "
                "(SELECT count(*) FROM tag_waiter w WHERE w.tag = t.tag) AS waiting "
                "FROM concurrency_tag t WHERE ($1::text IS NULL OR t.tag = $1) ORDER BY t.tag",
                req.tag,
            )
            holders = await conn.fetch(
                "SELECT tag, instance_id, step_id, workflow_id, acquired_at FROM tag_permit "
                "WHERE ($1::text IS NULL OR tag = $1) ORDER BY acquired_at LIMIT 500",
                req.tag,
            )
        held: dict[str, list[dict[str, Any]]] = {}
        for h in holders:
            held.setdefault(h["tag"], []).append(
                {"instance_id": h["instance_id"], "step_id": h["step_id"], "workflow_id": h["workflow_id"]}
            )
        if req.tag is not None and not rows:
            raise ApiError("not_found", f"no limit is set for tag {req.tag!r}")
        return {
            "tags": [
                {
                    "tag": r["tag"],
                    "limit": r["max_running"],
                    "in_use": r["in_use"],
                    "waiting": r["waiting"],
                    "held_by": held.get(r["tag"], [])[:20],
                    "updated_by": r["updated_by"],
                    "updated_at": r["updated_at"].isoformat(),
                }
                for r in rows
            ]
        }
