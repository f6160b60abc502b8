"""``instance.start``: a start request becomes a ``StartRun`` in the outbox, through a group commit.

Starts that arrive together share one statement (``run_batcher``). The request id makes a start
idempotent: the same id with the same params and version is the same run (a duplicate), with others a
conflict. Starts accepted and not yet applied by the scheduler are remembered (``accepted``) so that
``instance.get`` can say "pending" instead of "unknown".
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from opentelemetry import trace

from legato.bus.backlog import BacklogProbe
from legato.bus.publisher import OutgoingMessage
from legato.bus.topology import Topology, partition_of
from legato.core import CompiledWorkflow
from legato.core.statuses import InstanceStatus
from legato.protocol import api, encode
from legato.protocol.api import ApiError
from legato.protocol.ids import instance_id_for, new_request_id
from legato.protocol.messages import StartRun, TriggerInfo
from legato.protocol.replies import StartReply
from legato.store.batcher import GroupCommit, fail_whole_batch_unless_content_error
from legato.store.keys import probe
from legato.store.outbox import OutboxRow, outbox_args, outbox_ctes
from legato.telemetry.tracing import inject_headers
from legato.trigger.endpoints import Endpoint
from legato.trigger.run_params import check_run_params
from legato.trigger.workflow_cache import WorkflowCache

ACCEPTED_PRUNE_SECONDS = 60.0
MAX_ACCEPTED = 100_000  # starts remembered in this process until the scheduler has made their runs
START_QUEUE = 4096  # starts waiting for their group commit; more are refused as ``overloaded``


@dataclass
class _PendingStart:
    req: api.StartInstance
    compiled: CompiledWorkflow
    instance_id: str
    trigger_key: str
    params: dict[str, Any]
    headers: dict[str, str]
    request_id: str
    digest: str


class StartApi:
    """``instance.start`` and the batcher that commits starts together."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        topology: Topology,
        cache: WorkflowCache,
        *,
        wake_relay: Callable[[], None],
        relay_committed: Callable[[Sequence[OutboxRow]], None] | None = None,
        start_batch: int = 256,
        backlog: BacklogProbe | None = None,
        max_backlog: int = 0,
        commit_pool: asyncpg.Pool | None = None,
    ) -> None:
        """``backlog``, ``max_backlog``: refuse starts with ``overloaded`` while the workflow's partition
        holds ``max_backlog`` messages or more for the scheduler (0: never; bus/backlog.py).
        ``commit_pool``: where batches of starts are committed (``pool`` when None): one whose sessions
        plan the start statement once (``create_pool(generic_plans=True)``)."""
        self.backlog = backlog
        self.max_backlog = max_backlog
        self.pool = pool
        self.commit_pool = commit_pool or pool
        self.topology = topology
        self.cache = cache
        # Hands a committed batch's outbox rows to the relay (published from memory); None: wake it.
        self.relay_committed = relay_committed or (lambda rows: wake_relay())
        # Group commit: starts that arrive together share one statement. A start whose content
        # breaks the write fails alone; any other error (an outage) fails the whole batch at once.
        self._starts: GroupCommit[_PendingStart, StartReply] = GroupCommit(
            self._apply_starts,
            name="api-starts",
            batch=start_batch,
            queue_size=START_QUEUE,
            batch_error=fail_whole_batch_unless_content_error,
        )
        # Starts this process accepted recently: "pending" until the scheduler has created the run.
        self.accepted: OrderedDict[str, str] = OrderedDict()
        self._pruned_at = 0.0

    def endpoints(self) -> dict[str, Endpoint]:
        """This resource's endpoints by ``resource.verb``."""
        return {"instance.start": (api.StartInstance, self.start)}

    async def _start_target(self, workflow_id: str, version: int | None) -> tuple[int, CompiledWorkflow]:
        """The version a start uses, from a workflow row cached for a second (starts come in bursts; the
        scheduler re-checks activation when it applies the start)."""
        active, active_version = await self.cache.activation(workflow_id)
        if not active:
            raise ApiError(
                "inactive",
                f"workflow {workflow_id!r} is inactive: activate it first",
                {"workflow_id": workflow_id},
            )
        chosen = version or active_version
        return chosen, await self.cache.compiled_version(workflow_id, chosen)

    async def start(self, req: api.StartInstance) -> StartReply:
        if req.version is not None and req.version < 1:
            raise ApiError(
                "bad_request", f"version: must be >= 1, got {req.version}", {"version": req.version}
            )
        if req.request_id is not None and not 1 <= len(req.request_id) <= 200:
            raise ApiError("bad_request", f"request_id: must be 1..200 characters, got {len(req.request_id)}")
        version, compiled = await self._start_target(req.workflow_id, req.version)
        request_id = req.request_id or new_request_id()
        trigger_key = f"api:{request_id}"
        instance_id = instance_id_for(req.workflow_id, trigger_key)
        refusal = self._overload(req.workflow_id)
        # A retry of a start already accepted (its reply was lost) gets its run id, even now: it adds
        # nothing for the scheduler to apply. Only a new start is refused.
        if refusal is not None and not (
            req.request_id is not None and await self._accepted_before(instance_id, refusal)
        ):
            raise refusal
        # Searchable in a tracing backend: the request span names the run it started.
        trace.get_current_span().set_attribute("legato.instance_id", instance_id)
        # Checked here so a bad start gets a precise error now instead of a failed run later.
        check_run_params(
            compiled,
            req.params,
            workflow_id=req.workflow_id,
            version=version,
            instance_id=instance_id,
            trigger_kind="api",
            now=datetime.now(UTC),
        )
        pending = _PendingStart(
            req=req,
            compiled=compiled,
            instance_id=instance_id,
            trigger_key=trigger_key,
            params=dict(req.params),
            headers=inject_headers({}),
            request_id=request_id,
            digest=request_digest(req.params, req.version),
        )
        return await self._starts.submit(pending)

    def _overload(self, workflow_id: str) -> ApiError | None:
        """Why a new start is refused now (``overloaded``: the client retries later) rather than queued
        without bound, or None: while the scheduler has ``max_backlog`` messages or more to apply on the
        workflow's partition, or while the group commit already holds ``START_QUEUE`` starts (the
        database is slower than the arrivals)."""
        if self.backlog is not None and self.max_backlog > 0:
            partition = partition_of(workflow_id, self.backlog.partitions)
            waiting = self.backlog.of(partition)
            if waiting >= self.max_backlog:
                return ApiError(
                    "overloaded",
                    f"workflow {workflow_id!r}: the scheduler has {waiting} messages to apply on its "
                    f"partition {partition}, at or over the limit of {self.max_backlog} "
                    "(LEGATO_API_MAX_BACKLOG): retry later",
                    {
                        "workflow_id": workflow_id,
                        "partition": partition,
                        "backlog": waiting,
                        "limit": self.max_backlog,
                    },
                )
        if self._starts.qsize() >= START_QUEUE:
            return ApiError(
                "overloaded",
                f"workflow {workflow_id!r}: {START_QUEUE} starts already wait for the database: retry later",
                {"workflow_id": workflow_id, "queued": START_QUEUE},
            )
        return None

    async def _accepted_before(self, instance_id: str, refusal: ApiError) -> bool:
        """Whether this start was accepted before (by this process, or any: from Postgres). While the
        database itself is the bottleneck (the start queue is full) only this process's memory is
        asked, so that retries add no query to it."""
        if instance_id in self.accepted:
            return True
        if "queued" in refusal.details:
            return False
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM accepted_start WHERE instance_id = $1) "
                "OR EXISTS (SELECT 1 FROM workflow_instance WHERE id = $1)",
                instance_id,
            )
        )

    async def run_batcher(self) -> None:
        """Commit queued starts in batches until cancelled."""
        await self._starts.run()

    async def _apply_starts(self, batch: list[_PendingStart]) -> list[StartReply | Exception]:
        """One batch of starts: one statement (``_commit_starts``), then remember what it
        accepted and hand its StartRun messages to the relay (committed: published from memory)."""
        out, rows = await self._commit_starts(batch)
        for p, res in zip(batch, out, strict=True):
            if not isinstance(res, Exception):
                self.accepted[p.instance_id] = p.req.workflow_id
        while len(self.accepted) > MAX_ACCEPTED:
            self.accepted.popitem(last=False)
        if rows:
            self.relay_committed(rows)
        return out

    async def _commit_starts(
        self, batch: list[_PendingStart]
    ) -> tuple[list[StartReply | Exception], list[OutboxRow]]:
        now = time.time()
        # Each request id once (a repeat in the same batch is answered from the first, below), with the
        # StartRun it would send if it is new.
        firsts = list({p.instance_id: p for p in reversed(batch)}.values())[::-1]
        msgs = [self._start_run(p, now) for p in firsts]
        async with self.commit_pool.acquire() as conn:
            if now - self._pruned_at > ACCEPTED_PRUNE_SECONDS:
                # Long since applied by the scheduler (or visible as a run): no need to remember them.
                # First: if it fails, the batch fails with nothing of it written, and is tried again.
                self._pruned_at = now
                await conn.execute("DELETE FROM accepted_start WHERE accepted_at < now() - interval '1 hour'")
            # One statement, one round trip, its own transaction: it reads which request ids are known
            # (a run, or a start accepted and not applied yet), records the others as accepted and
            # writes their StartRun into the outbox, together or not at all, durable before any reply.
            # A start another replica records meanwhile is skipped by ON CONFLICT (no StartRun from
            # here) and answered as a duplicate; the StartRun's message id and the scheduler's one run
            # per trigger key stay the second line.
            records = await conn.fetch(
                _START_BATCH,
                *outbox_args(msgs),
                [p.instance_id for p in firsts],
                [p.req.workflow_id for p in firsts],
                [p.digest for p in firsts],
            )
        existing: dict[str, str] = {}
        digests: dict[str, str | None] = {}
        run_versions: dict[str, int] = {}
        written: dict[str, int] = {}  # request id -> its StartRun's outbox id: accepted by this batch
        for r in records:
            if r["outbox_id"] is not None:
                written[r["id"]] = r["outbox_id"]
            elif r["is_run"]:
                existing[r["id"]] = r["status"]
                digests[r["id"]] = r["request_digest"]
                if r["request_digest"] is None:  # accepted long ago (pruned): compare with the run
                    run_versions[r["id"]] = r["version"]
                    digests[r["id"]] = request_digest(r["run_params"] or {}, None)
        for r in records:  # accepted starts the scheduler has not made runs of yet
            if r["outbox_id"] is None and not r["is_run"] and r["id"] not in existing:
                existing[r["id"]] = InstanceStatus.PENDING
                digests[r["id"]] = r["request_digest"]
        rows = [
            (written[p.instance_id], m) for p, m in zip(firsts, msgs, strict=True) if p.instance_id in written
        ]
        out: list[StartReply | Exception] = []
        for p in batch:
            if written.pop(p.instance_id, None) is not None:  # the first of its id in the batch, and new
                existing[p.instance_id] = InstanceStatus.PENDING
                digests[p.instance_id] = p.digest
                out.append(_reply(p, InstanceStatus.PENDING, duplicate=False))
            elif p.instance_id not in existing:
                # Recorded by another replica between this statement's snapshot and its insert: the
                # same run (its id is the request id's), whose request cannot be compared.
                existing[p.instance_id] = InstanceStatus.PENDING
                digests[p.instance_id] = p.digest
                out.append(_reply(p, InstanceStatus.PENDING, duplicate=True))
            elif not _same_request(p, digests.get(p.instance_id), run_versions.get(p.instance_id)):
                out.append(_conflict(p))
            else:
                out.append(_reply(p, InstanceStatus(existing[p.instance_id]), duplicate=True))
        return out, rows

    def _start_run(self, p: _PendingStart, now: float) -> OutgoingMessage:
        start = StartRun(
            workflow_id=p.req.workflow_id,
            trigger_key=p.trigger_key,
            instance_id=p.instance_id,
            trigger=TriggerInfo(kind="api", by=p.req.actor),
            params=p.params,
            version=p.req.version,
            requested_at=now,
        )
        return OutgoingMessage(
            self.topology.trigger_subject(p.req.workflow_id),
            encode(start),
            msg_id=f"start:{p.instance_id}",
            headers=p.headers,
        )


def _read_starts(ids: str) -> str:
    """The runs and the accepted starts of the ids ``ids`` (an SQL array expression), the runs first:
    one index probe per id and table, whatever plan the plan cache holds (``legato.store.keys``)."""
    return (
        "SELECT true AS is_run, i.id, i.status, i.run_params, i.version, a.request_digest "
        f"FROM {probe('workflow_instance', 'id', ids, 'id, status, run_params, version')} AS i "
        "LEFT JOIN LATERAL (SELECT request_digest FROM accepted_start WHERE instance_id = i.id LIMIT 1) AS a ON true "
        "UNION ALL "
        "SELECT false, s.instance_id, NULL, NULL, NULL, s.request_digest "
        f"FROM {probe('accepted_start', 'instance_id', ids, 'instance_id, request_digest')} AS s "
        "ORDER BY 1 DESC"
    )


# A batch of starts ($1-$5: a StartRun per request id, $6-$8: the ids, workflows and request digests):
# the known ids' runs and accepted starts (``outbox_id`` NULL), and the new ones' outbox ids. Only ids
# neither known nor recorded meanwhile (ON CONFLICT) get their accepted start and their StartRun.
_START_BATCH = (
    f"WITH known AS MATERIALIZED ({_read_starts('$6::text[]')}),"
    " req AS (SELECT * FROM unnest($6::text[], $7::text[], $8::text[]) WITH ORDINALITY"
    " AS r(instance_id, workflow_id, digest, n)),"
    " accepted AS ("
    " INSERT INTO accepted_start (instance_id, workflow_id, request_digest)"
    " SELECT instance_id, workflow_id, digest FROM req WHERE instance_id NOT IN (SELECT id FROM known)"
    " ON CONFLICT DO NOTHING RETURNING instance_id),"
    f" {outbox_ctes(1, 'WHERE u.n IN (SELECT req.n FROM req JOIN accepted USING (instance_id))')}"
    " SELECT is_run, id, status, run_params, version, request_digest, NULL::bigint AS outbox_id FROM known"
    " UNION ALL"
    " SELECT NULL, req.instance_id, NULL, NULL, NULL, NULL, outbox_v.id FROM outbox_v JOIN req USING (n)"
)


def request_digest(params: dict[str, Any], version: int | None) -> str:
    """What makes two start requests "the same request" for one request_id: params and pinned version."""
    canonical = msgspec.json.encode({"params": params, "version": version}, order="sorted")
    return hashlib.sha256(canonical).hexdigest()


def _same_request(p: _PendingStart, digest: str | None, run_version: int | None) -> bool:
    if digest is None or digest == p.digest:
        return True
    if run_version is not None:
        # A run applied after its accepted_start row was pruned: compare params, and a pinned version.
        same_params = digest == request_digest(p.params, None)
        return same_params and (p.req.version is None or p.req.version == run_version)
    return False


def _reply(p: _PendingStart, status: InstanceStatus, *, duplicate: bool) -> StartReply:
    return StartReply(
        instance_id=p.instance_id, workflow_id=p.req.workflow_id, status=status, duplicate=duplicate
    )


def _conflict(p: _PendingStart) -> ApiError:
    return ApiError(
        "conflict",
        f"request_id {p.request_id!r} was already used for a different start of {p.req.workflow_id} "
        f"(run {p.instance_id}): the same key must carry the same params and version; use a new request_id",
        {"request_id": p.request_id, "instance_id": p.instance_id, "workflow_id": p.req.workflow_id},
    )
