"""Handling one delivered work item: decide whether to run it, run it, report it, and only then ack.

The decision, in order:
1. this process already has a result for the attempt (its publish or ack failed) -> publish it again;
2. the attempt is running here right now (redelivered while running) -> wait for it, same result;
3. the attempt is claimed durably (``claims.py``: a create-only JetStream KV entry per attempt id,
   written before any step starts, shared by every executor and surviving restarts, kept for the
   bucket's TTL); a work item older than the claims' horizon is not claimed, only looked up, and is
   reported ``platform_error`` without running when no claim is found (a copy that ran may have had its
   claim expire):
   - claimed before, with its result kept -> publish that result again (never run twice);
   - claimed before, no result, and this is a redelivery -> the executor that had it was lost (crash,
     kill -9, cut connection): report ``platform_error`` and do NOT run it again; the scheduler
     retries it as a new attempt;
   - claimed before, no result, first delivery of this copy -> another copy of the item (an outbox
     republish after JetStream's duplicate window) whose own delivery reports it: acked, not run;
   - claimed now -> go on (a redelivery nobody had claimed never started anywhere, so it may run);
4. a cancel for it arrived earlier -> ``cancelled`` without running;
5. otherwise run it: ``AttemptStarted`` if it is still running after ``started_delay``, then
   ``AttemptFinished`` (``succeeded``, ``failed``, ``timed_out`` or ``cancelled``); the result is kept
   in the claim while it is published, both before the ack.

Results go to ``WorkItem.reply_subject`` with ``Nats-Msg-Id`` = attempt id, so a republish is a
duplicate. A result that cannot be published (NATS unreachable, the events stream without a leader) is
retried with a bounded backoff until it lands or the executor shuts down, while the consumer loop keeps
heartbeating the work item (``in_progress``): the item is never given back, so no other executor can
take it for lost while this one is alive and holds its result. If the handler is cancelled (shutdown past its grace period) nothing is published and the
message is not acked: it is redelivered and reported as lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, TypeVar

from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from legato.bus.consumer import Delivery, Retry
from legato.bus.publisher import OutgoingMessage, Publisher
from legato.executor.capture import CapturedOutput
from legato.executor.claims import AttemptClaims, ClaimsUnavailable
from legato.executor.contact import NatsContact
from legato.executor.lease import FenceLease
from legato.executor.recent_attempts import RecentCancels, RecentResults
from legato.executor.step_runner import StepContext, StepFailed, StepFenced, StepResult, StepRunner
from legato.protocol.messages import AttemptFinished, AttemptStarted, Outcome, WorkItem, encode
from legato.telemetry import bind_context, consume_span, get_logger, get_tracer, inject_headers, metrics

log = get_logger("legato.executor")

# Result publish retries: 0.2 s doubling to 5 s between tries, until published or shut down.
RESULT_RETRY_FIRST = 0.2
RESULT_RETRY_MAX = 5.0
# Room left in a NATS message for headers (traceparent, Nats-Msg-Id) next to the result payload.
HEADER_ALLOWANCE = 4096

# How often a running step's wait checks this executor's contact with NATS (the fence).
FENCE_CHECK = 0.1


T = TypeVar("T")


class RunningAttempt:
    """An attempt executing in this process: how to cancel it, and its result once encoded."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.cancel_requested = False
        self.cancel_reason = ""
        # Done once a cancel request came: what the step's wait watches besides the step itself.
        self.cancelled: asyncio.Future[None] = loop.create_future()
        self.result: asyncio.Future[bytes] = loop.create_future()

    def request_cancel(self, reason: str) -> bool:
        """Ask the running step to stop; False if that was asked already."""
        if self.cancel_requested:
            return False
        self.cancel_requested = True
        self.cancel_reason = reason
        self.cancelled.set_result(None)
        return True


class AttemptProcessor:
    """The consumer loop's handler for ``WorkItem`` deliveries, and the target of cancel requests."""

    def __init__(
        self,
        publisher: Publisher,
        runners: Mapping[str, StepRunner],
        *,
        executor_id: str,
        kill_grace: float = 2.0,
        started_delay: float = 0.25,
        max_result_bytes: int = 1024 * 1024,
        results: RecentResults | None = None,
        cancels: RecentCancels | None = None,
        claims: AttemptClaims | None = None,
        contact: NatsContact | None = None,
        fence_after: float = 0.0,
        lease: FenceLease | None = None,
    ) -> None:
        self.publisher = publisher
        self.runners = runners
        self.executor_id = executor_id
        self.kill_grace = kill_grace
        self.started_delay = started_delay
        self.max_result_bytes = max_result_bytes
        self.results = results or RecentResults()
        self.cancels = cancels or RecentCancels()
        # Durable claims and results per attempt (JetStream KV); None: this process's memory only.
        self.claims = claims
        # Steps are stopped after fence_after seconds without contact with NATS (0: never).
        self.contact = contact
        self.fence_after = fence_after
        # Enforced by every step's guard process, even while this process is frozen.
        self.lease = lease
        # executed, each outcome, lost, expired, republished, cancelled_before_start
        self.stats: Counter[str] = Counter()
        self._running: dict[str, RunningAttempt] = {}

    @property
    def running(self) -> int:
        return len(self._running)

    def running_ids(self) -> list[str]:
        """The attempts executing here right now (for the liveness heartbeat)."""
        return list(self._running)

    def cancel(self, attempt_id: str, reason: str) -> None:
        """A cancel request: stop the attempt if it runs here, and remember it in case it comes later."""
        self.cancels.add(attempt_id, reason)
        running = self._running.get(attempt_id)
        if running is not None and running.request_cancel(reason):
            log.info("attempt_cancel_requested", attempt_id=attempt_id, reason=reason)

    async def handle(self, delivery: Delivery[WorkItem]) -> None:
        item = delivery.message
        with bind_context(
            workflow_id=item.workflow_id,
            instance_id=item.instance_id,
            step_id=item.step_id,
            attempt=item.attempt,
            attempt_id=item.attempt_id,
        ):
            stored = self.results.get(item.attempt_id)
            if stored is not None:
                log.info("attempt_result_republished", deliveries=delivery.num_delivered)
                self.stats["republished"] += 1
                await self._publish_result(item, stored)
                return
            running = self._running.get(item.attempt_id)
            if running is not None:
                log.info("attempt_redelivered_while_running", deliveries=delivery.num_delivered)
                await self._publish_result(item, await _result_of(running))
                return
            # Registered before anything is awaited: a copy delivered meanwhile waits for this one.
            running = RunningAttempt()
            self._running[item.attempt_id] = running
            try:
                if self.claims is None or await self._claimed(item, delivery, running):
                    await self._decide(item, delivery, running)
            finally:
                if self._running.get(item.attempt_id) is running:
                    del self._running[item.attempt_id]
                if not running.result.done():
                    running.result.cancel()

    async def _claimed(self, item: WorkItem, delivery: Delivery[WorkItem], running: RunningAttempt) -> bool:
        """Claim the attempt durably; False when another copy holds it (then settled here)."""
        assert self.claims is not None
        try:
            age = time.time() - item.dispatched_at if item.dispatched_at > 0 else 0.0
            horizon = await self.claims.horizon()
            if age <= horizon:
                held = await self.claims.claim(item.attempt_id, self.executor_id)
            else:
                # Older than the claims are kept for: a copy that ran may have lost its claim already,
                # so this one is never run. A claim still there is acted on as below.
                held = await self.claims.get(item.attempt_id)
                if held is None:
                    log.warning("attempt_expired_not_run", age=round(age, 1), horizon=horizon)
                    self.stats["expired"] += 1
                    await self._finish(item, self._expired(item, age, horizon), running)
                    return False
        except ClaimsUnavailable as exc:
            raise Retry(delay=2.0, reason=str(exc)) from None
        if held is None:
            return True
        if held.result is not None:
            log.info("attempt_kept_result_republished", deliveries=delivery.num_delivered, by=held.executor)
            self.stats["republished"] += 1
            running.result.set_result(held.result)
            await self._publish_result(item, held.result)
            return False
        if delivery.num_delivered > 1:
            self._report_lost(item, delivery)
            await self._finish(item, self._lost(item, delivery), running)
            return False
        # A second copy of a work item whose attempt started elsewhere (an outbox republish after the
        # duplicate window): its own delivery reports it. Never run twice; acked with a record of it.
        log.warning("attempt_duplicate_not_run", claimed_by=held.executor, claimed_at=held.claimed_at)
        self.stats["duplicate_not_run"] += 1
        return False

    async def _decide(self, item: WorkItem, delivery: Delivery[WorkItem], running: RunningAttempt) -> None:
        reason = self.cancels.reason_for(item.attempt_id)
        if reason is not None:
            log.info("attempt_cancelled_before_start", reason=reason)
            self.stats["cancelled_before_start"] += 1
            error = f"cancelled before it started: {reason}" if reason else "cancelled before it started"
            await self._finish(item, self._finished(item, "cancelled", error=error), running)
            return
        if delivery.num_delivered > 1 and self.claims is None:
            # Without durable claims a redelivery cannot tell whether the step started elsewhere.
            self._report_lost(item, delivery)
            await self._finish(item, self._lost(item, delivery), running)
            return
        if delivery.num_delivered > 1:
            log.info("attempt_redelivered_never_started", deliveries=delivery.num_delivered)
        await self._execute(item, running, delivery.headers)

    def _report_lost(self, item: WorkItem, delivery: Delivery[WorkItem]) -> None:
        log.warning("attempt_lost", deliveries=delivery.num_delivered)
        self.stats["lost"] += 1

    def _expired(self, item: WorkItem, age: float, horizon: float) -> AttemptFinished:
        error = (
            f"attempt not run: its work item was dispatched {age:.0f} s ago, longer than the {horizon:.0f} s "
            "an attempt may wait (LEGATO_ATTEMPT_CLAIM_TTL less its clock margin)"
        )
        return self._finished(item, "platform_error", error=error)

    def _lost(self, item: WorkItem, delivery: Delivery[WorkItem]) -> AttemptFinished:
        error = (
            f"attempt lost: delivered {delivery.num_delivered} times "
            "(executor crashed or lost its connection)"
        )
        return self._finished(item, "platform_error", error=error)

    async def _execute(
        self, item: WorkItem, running: RunningAttempt, headers: Mapping[str, str] | None = None
    ) -> None:
        self.stats["executed"] += 1
        # The WorkItem's traceparent names the scheduler's step.attempt span: the execution is its
        # direct child (the consumer's "process" span beside it is only about the delivery). Without
        # headers, a child of the current (the delivery's) span.
        attributes: dict[str, AttributeValue] = {
            "legato.workflow_id": item.workflow_id,
            "legato.instance_id": item.instance_id,
            "legato.step_id": item.step_id,
            "legato.attempt": item.attempt,
            "legato.attempt_id": item.attempt_id,
            "legato.step_type": item.step_type,
        }
        name = f"execute {item.step_type}"
        with (
            consume_span(name, headers, kind=SpanKind.INTERNAL, attributes=attributes)
            if headers
            else get_tracer().start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes)
        ) as span:
            log.info("attempt_started", step_type=item.step_type, timeout=item.timeout)
            finished = await self._run_step(item, running)
            span.set_attribute("legato.outcome", finished.outcome)
            if finished.outcome != "succeeded":
                span.set_status(Status(StatusCode.ERROR, finished.outcome))
            log.info(
                "attempt_finished",
                outcome=finished.outcome,
                error=(finished.error or "")[:500] or None,
                seconds=round(finished.finished_at - finished.started_at, 3),
            )
            self.stats[finished.outcome] += 1
            metrics().step_duration.record(
                max(0.0, finished.finished_at - finished.started_at),
                step_type=item.step_type,
                outcome=finished.outcome,
            )
            await self._finish(item, finished, running)

    async def _run_step(self, item: WorkItem, running: RunningAttempt) -> AttemptFinished:
        started_at = time.time()
        runner = self.runners.get(item.step_type)
        if runner is None:
            known = ", ".join(sorted(self.runners))
            return self._finished(
                item,
                "failed",
                started_at=started_at,
                error=f"unknown step type {item.step_type!r}; this executor runs: {known}",
            )
        ctx = StepContext(item=item, output=CapturedOutput(), kill_grace=self.kill_grace, lease=self.lease)
        step = asyncio.create_task(runner.run(ctx), name=f"step:{item.attempt_id}")
        # The step's one task; the cancel request is a future, the fence a check between waits, the
        # announcement a timer: a fast step costs no other task (four before, with their cancellations).
        loop = asyncio.get_running_loop()
        announce: list[asyncio.Task[None]] = []
        announcing = loop.call_later(
            self.started_delay,
            lambda: announce.append(asyncio.create_task(self._announce_started(item, started_at))),
        )
        timeout = item.timeout if item.timeout is not None and item.timeout > 0 else None
        try:
            done, fenced = await self._wait_step(step, running, timeout)
        finally:
            # Also on shutdown: the step's processes are stopped before the cancellation goes on.
            announcing.cancel()
            await _stop(step)
            if announce:
                await self._settle_announcement(announce[0])
        log_tail = ctx.output.log_tail()
        if step in done and step.cancelled():
            # The runner cancelled itself (nothing here asked it to): a failure, not a shutdown.
            return self._finished(
                item,
                "failed",
                started_at=started_at,
                error="the step was cancelled from inside",
                log_tail=log_tail,
            )
        if step in done:
            try:
                result: StepResult = step.result()
            except StepFenced as exc:
                # Already settled as lost by the scheduler if it was silent for long: this late report
                # then changes nothing; otherwise the step's platform retry policy applies.
                log.warning("attempt_fenced_by_guard", why=exc.why)
                self.stats["fenced"] += 1
                return self._finished(
                    item,
                    "platform_error",
                    started_at=started_at,
                    error=f"fenced: {exc.why}",
                    log_tail=log_tail,
                )
            except StepFailed as exc:
                return self._finished(
                    item,
                    "failed",
                    started_at=started_at,
                    error=exc.error,
                    exit_code=exc.exit_code,
                    outputs=exc.outputs,
                    log_tail=log_tail,
                )
            except Exception as exc:
                log.error("step_runner_crashed", step_type=item.step_type, error=repr(exc), exc_info=True)
                return self._finished(
                    item,
                    "failed",
                    started_at=started_at,
                    error=f"executor error in the {item.step_type} runner: {type(exc).__name__}: {exc}",
                    log_tail=log_tail,
                )
            return self._finished(
                item,
                "succeeded",
                started_at=started_at,
                outputs=result.outputs,
                exit_code=result.exit_code,
                log_tail=log_tail,
            )
        if fenced:
            silent = self.contact.silent_for() if self.contact is not None else self.fence_after
            error = (
                f"fenced: executor lost contact with NATS for {silent:.1f} s, so the scheduler could "
                "retry the attempt elsewhere"
            )
            log.warning("attempt_fenced", silent_for=round(silent, 1))
            self.stats["fenced"] += 1
            return self._finished(
                item, "platform_error", started_at=started_at, error=error, log_tail=log_tail
            )
        if running.cancel_requested:
            reason = running.cancel_reason
            error = f"cancelled: {reason}" if reason else "cancelled"
            return self._finished(item, "cancelled", started_at=started_at, error=error, log_tail=log_tail)
        return self._finished(
            item, "timed_out", started_at=started_at, error=f"timed out after {timeout:g}s", log_tail=log_tail
        )

    async def _wait_step(
        self, step: asyncio.Task[StepResult], running: RunningAttempt, timeout: float | None
    ) -> tuple[set[asyncio.Future[Any]], bool]:
        """Wait until the step ends, a cancel request comes, ``timeout`` passes, or this executor has
        been out of touch with NATS for ``fence_after`` seconds (checked every ``FENCE_CHECK``);
        returns what ended and whether the fence did."""
        loop = asyncio.get_running_loop()
        fencing = self.contact is not None and self.fence_after > 0
        deadline = None if timeout is None else loop.time() + timeout
        waiters: set[asyncio.Future[Any]] = {step, running.cancelled}
        while True:
            wait = None if deadline is None else max(0.0, deadline - loop.time())
            if fencing:
                wait = FENCE_CHECK if wait is None else min(wait, FENCE_CHECK)
            done, _ = await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if done:
                return done, False
            if deadline is not None and loop.time() >= deadline:
                return done, False
            if fencing and self.contact is not None and self.contact.silent_for() >= self.fence_after:
                return done, True

    async def _announce_started(self, item: WorkItem, started_at: float) -> None:
        # Only attempts still running after started_delay are announced: a fast step costs one message.
        started = AttemptStarted(
            attempt_id=item.attempt_id,
            workflow_id=item.workflow_id,
            instance_id=item.instance_id,
            step_id=item.step_id,
            executor=self.executor_id,
            started_at=started_at,
        )
        try:
            await self.publisher.publish(
                OutgoingMessage(
                    item.reply_subject,
                    encode(started),
                    msg_id=f"{item.attempt_id}:started",
                    headers=inject_headers(),
                )
            )
        except Exception as exc:
            # Only informational: the result that follows is what counts.
            log.warning("attempt_started_publish_failed", error=repr(exc))

    async def _settle_announcement(self, announce: asyncio.Task[None]) -> None:
        current = asyncio.current_task()
        shutting_down = current is not None and current.cancelling() > 0
        if not shutting_down:
            # Already publishing: let it land so AttemptStarted precedes AttemptFinished on the stream.
            await asyncio.wait({announce})
        await _stop(announce)

    def _finished(
        self,
        item: WorkItem,
        outcome: Outcome,
        *,
        started_at: float = 0.0,
        error: str | None = None,
        exit_code: int | None = None,
        outputs: Mapping[str, object] | None = None,
        log_tail: str | None = None,
    ) -> AttemptFinished:
        now = time.time()
        return AttemptFinished(
            attempt_id=item.attempt_id,
            workflow_id=item.workflow_id,
            instance_id=item.instance_id,
            step_id=item.step_id,
            outcome=outcome,
            executor=self.executor_id,
            started_at=started_at or now,
            finished_at=now,
            outputs=dict(outputs or {}),
            error=error,
            exit_code=exit_code,
            log_tail=log_tail,
        )

    def _encode(self, finished: AttemptFinished) -> bytes:
        payload = encode(finished)
        if len(payload) <= self.max_result_bytes:
            return payload
        # Too big for one NATS message: report that instead of failing to report anything.
        log.warning("attempt_result_too_large", size=len(payload), limit=self.max_result_bytes)
        return encode(
            AttemptFinished(
                attempt_id=finished.attempt_id,
                workflow_id=finished.workflow_id,
                instance_id=finished.instance_id,
                step_id=finished.step_id,
                outcome="failed",
                executor=finished.executor,
                started_at=finished.started_at,
                finished_at=finished.finished_at,
                error=(
                    f"result too large to report ({len(payload)} bytes, limit {self.max_result_bytes}); "
                    f"outputs dropped (was {finished.outcome}: {(finished.error or '')[:1000]})"
                ),
                exit_code=finished.exit_code,
                log_tail=(finished.log_tail or "")[-2048:] or None,
            )
        )

    async def _finish(
        self, item: WorkItem, finished: AttemptFinished, running: RunningAttempt | None = None
    ) -> None:
        payload = self._encode(finished)
        # Remembered before publishing: a redelivery after a failed publish or ack gets the same result.
        self.results.put(item.attempt_id, payload)
        if running is not None:
            running.result.set_result(payload)
        await self._publish_result(item, payload, keep=True)

    async def _publish_result(self, item: WorkItem, payload: bytes, *, keep: bool = False) -> None:
        """Publish until it lands; only shutdown (cancellation) stops it, leaving the item unacked.

        ``keep``: if the first publish fails, the result is kept in the attempt's claim (when this
        executor has claims) while the publish is retried, so a copy of the item delivered elsewhere
        meanwhile (this executor died or lost its connection) republishes it instead of reporting the
        attempt lost. A result that landed at once needs no keeping: it is durable on the events
        stream, a later copy of the item finds the attempt claimed and does not run it, and the
        scheduler applies one result per attempt (a "lost" report under the same message id is dropped
        by JetStream within its duplicate window, and ignored by the scheduler after it). The one round
        trip between the step's end and its first durable record is the same either way: the publish
        instead of the keeping."""
        msg = OutgoingMessage(item.reply_subject, payload, msg_id=item.attempt_id, headers=inject_headers())
        failures = 0
        keeping: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    await self.publisher.publish(msg)
                except Exception as exc:
                    failures += 1
                    self.stats["result_publish_failures"] += 1
                    if failures <= 3 or failures % 20 == 0:
                        log.warning("attempt_result_publish_failed", tries=failures, error=repr(exc))
                    if keep and keeping is None and self.claims is not None:
                        keeping = asyncio.create_task(
                            self.claims.keep_result(item.attempt_id, self.executor_id, payload)
                        )
                    await asyncio.sleep(min(RESULT_RETRY_FIRST * 2 ** min(failures - 1, 8), RESULT_RETRY_MAX))
                    continue
                if failures:
                    log.info("attempt_result_published", tries=failures + 1)
                break
        except BaseException:
            if keeping is not None:
                await _stop(keeping)
            raise
        if keeping is not None:
            await keeping


async def _result_of(running: RunningAttempt) -> bytes:
    await asyncio.wait({running.result})
    if running.result.cancelled():
        raise Retry(delay=1.0, reason="the running copy of this attempt ended without a result")
    return running.result.result()


async def _stop(task: asyncio.Task[T]) -> None:
    """Cancel a child task and wait until it has really finished (its cleanup included)."""
    if task.done():
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
