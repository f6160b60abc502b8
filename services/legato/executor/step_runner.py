"""What every step runner gets and gives back: the attempt's context, a result, or a named failure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import msgspec

from legato.executor.capture import CapturedOutput
from legato.executor.lease import FenceLease
from legato.protocol.messages import JSONValue, WorkItem

ERROR_LIMIT = 8 * 1024  # characters of error text carried in a result


class StepFailed(Exception):
    """The step failed for a reason its runner can name (bad config, exit code, HTTP status, exception)."""

    def __init__(
        self,
        error: str,
        *,
        exit_code: int | None = None,
        outputs: Mapping[str, JSONValue] | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error[-ERROR_LIMIT:] if len(error) > ERROR_LIMIT else error
        self.exit_code = exit_code
        self.outputs = dict(outputs or {})


class StepFenced(Exception):
    """The step's guard killed it: the executor's fence lease expired (frozen, or cut off from NATS)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class StepResult:
    """A step that succeeded: its outputs (JSON values) and, for processes, the exit code."""

    outputs: dict[str, JSONValue] = field(default_factory=dict)
    exit_code: int | None = None


@dataclass
class StepContext:
    """One attempt as a runner sees it."""

    item: WorkItem
    # What the step's processes printed so far; read for the log tail even when the step is cut short.
    output: CapturedOutput
    # Seconds between SIGTERM and SIGKILL when a step's process group is stopped.
    kill_grace: float
    # The executor's fence lease, enforced by each step process's guard (None: no lease, tests).
    lease: FenceLease | None = None


class StepRunner(Protocol):
    """Runs one kind of step. Returns on success, raises ``StepFailed`` on a failure it can name.

    A runner must be cancellable at any await: cancellation means timeout, cancel request or shutdown,
    and the runner stops everything it started (processes, requests) before re-raising.
    """

    step_type: str

    async def run(self, ctx: StepContext) -> StepResult: ...


C = TypeVar("C", bound=msgspec.Struct)


def parse_config(config: Mapping[str, JSONValue], kind: type[C]) -> C:
    """Decode a step's ``config`` into its typed form; a bad one fails the step naming the field."""
    try:
        return msgspec.convert(dict(config), kind)
    except msgspec.ValidationError as exc:
        raise StepFailed(f"invalid step config: {explain_validation(exc, 'config')}") from None


def explain_validation(exc: msgspec.ValidationError, root: str) -> str:
    """msgspec says "Expected `float`, got `str` - at `$.duration`"; say "config.duration: expected …"."""
    text = str(exc)
    rule, sep, where = text.partition(" - at `$")
    path = root + where.rstrip("`") if sep else root
    return f"{path}: {rule[:1].lower()}{rule[1:]}"
