"""Signals: a step waiting for its ``wait_for_signals`` and publishing its ``publish_signals``."""

from __future__ import annotations

from typing import Any

import msgspec

from legato.bus.publisher import OutgoingMessage
from legato.core import ParamError, to_json_value
from legato.core.reasons import WaitingForSignals
from legato.protocol import encode
from legato.protocol.messages import SignalWaitRegistered, SignalWaitSatisfied
from legato.scheduler import run_spans
from legato.scheduler.engine.base import EngineBase
from legato.scheduler.state import InstanceState, StepState, now_utc
from legato.sel import SelError
from legato.telemetry.tracing import inject_headers

_encode_json = msgspec.json.Encoder().encode


def _json(value: Any) -> bytes:
    return _encode_json(value)


class SignalWaits(EngineBase):
    """Signals: a step waiting for its ``wait_for_signals`` and publishing its ``publish_signals``."""

    def signals_ready(self, inst: InstanceState, st: StepState) -> bool:
        """True once every ``wait_for_signals`` entry has its signal; else registers the waits."""
        compiled = self.graph(inst)
        step = compiled.step(st.step_id)
        names = [w.name for w in step.wait_for_signals]
        got = st.signals or {}
        if all(n in got for n in names):
            return True
        if st.status == "waiting" and isinstance(st.reason, WaitingForSignals):
            return False  # registered before; the router answers with SignalWaitSatisfied
        try:
            waits = compiled.resolve_signal_waits(st.step_id, self.env(inst))
        except (ParamError, SelError) as exc:
            self.fail_step_without_attempt(inst, st.step_id, f"wait_for_signals: {exc}")
            return False
        for index, wait in enumerate(waits):
            if wait.name in got:
                continue
            wait_id = f"{inst.id}:{st.step_id}:{index}"
            match = {k: {"op": p.op, "value": to_json_value(p.value)} for k, p in wait.match.items()}
            self.uow.outbox.append(
                OutgoingMessage(
                    self.topology.signal_wait_subject,
                    encode(
                        SignalWaitRegistered(
                            wait_id=wait_id,
                            workflow_id=inst.workflow_id,
                            instance_id=inst.id,
                            step_id=st.step_id,
                            name=wait.name,
                            match=match,
                        )
                    ),
                    msg_id=f"waitreg:{wait_id}",
                    headers=inject_headers({}),
                )
            )
        st.status = "waiting"
        st.waiting_since = now_utc()
        missing = [n for n in names if n not in got]
        st.reason = WaitingForSignals(
            signals=names, missing=missing, message="waiting for signals " + ", ".join(missing)
        )
        self.uow.touch_step(st)
        run_spans.waiting(self.uow, inst, now_utc(), st.reason, st.step_id)
        self.note(
            inst,
            "step_waiting",
            f"step {st.step_id} waits for signals {', '.join(names)}",
            step_id=st.step_id,
        )
        return False

    def on_signal_wait_satisfied(self, msg: SignalWaitSatisfied) -> None:
        inst = self.state.instances.get(msg.instance_id)
        if inst is None or inst.status != "running":
            return
        st = inst.steps.get(msg.step_id)
        if st is None or st.status != "waiting":
            return
        got = dict(st.signals or {})
        if msg.name in got:
            return  # the same wait answered twice
        got[msg.name] = {**msg.fields, "_id": msg.signal_id}
        st.signals = got
        self.uow.touch_step(st)
        self.note(
            inst,
            "step_signal_received",
            f"step {st.step_id} received signal {msg.name} ({msg.signal_id})",
            step_id=st.step_id,
            details={"signal": msg.name, "signal_id": msg.signal_id},
        )
        st.status = "queued"  # leave "waiting for signals"; dispatch decides what comes next
        st.reason = None
        self.dispatch(inst, st.step_id, retry_of=st)

    def publish_signals(self, inst: InstanceState, st: StepState, attempt_id: str) -> bool:
        """Emit the step's ``publish_signals`` once per successful attempt; False if they cannot be built."""
        compiled = self.graph(inst)
        if not compiled.step(st.step_id).publish_signals:
            return True
        try:
            published = compiled.resolve_published_signals(st.step_id, self.env(inst, st.signals))
        except (ParamError, SelError) as exc:
            st.status = "failed"
            st.error = f"publish_signals: {exc}"
            st.ended_at = now_utc()
            self.uow.touch_step(st)
            self.note(inst, "step_failed", f"step {st.step_id} failed: {st.error}", step_id=st.step_id)
            self.after_step_failure(inst, st)
            return False
        for index, sig in enumerate(published):
            headers = inject_headers(
                {
                    "Legato-Publisher-Workflow": inst.workflow_id,
                    "Legato-Publisher-Instance": inst.id,
                    "Legato-Publisher-Step": st.step_id,
                }
            )
            self.uow.outbox.append(
                OutgoingMessage(
                    self.topology.signal_subject(sig.name),
                    _json(sig.params),
                    msg_id=f"pub:{attempt_id}:{index}",
                    headers=headers,
                )
            )
            self.note(
                inst,
                "signal_published",
                f"step {st.step_id} published signal {sig.name}",
                step_id=st.step_id,
                details={"signal": sig.name, "id": f"pub:{attempt_id}:{index}"},
            )
        return True
