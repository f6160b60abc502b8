"""A start's params, checked before anything is accepted: the API's starts and a backfill's runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from legato.core import CompiledWorkflow, InstanceInfo, ParamError
from legato.protocol.api import ApiError
from legato.sel import SelError


def check_run_params(
    compiled: CompiledWorkflow,
    params: dict[str, Any],
    *,
    workflow_id: str,
    version: int,
    instance_id: str,
    trigger_kind: str,
    now: datetime,
) -> None:
    """Resolve ``params`` as the run would; ``invalid_params`` naming each bad param otherwise."""
    try:
        compiled.resolve_run_params(
            params,
            instance=InstanceInfo(
                id=instance_id,
                workflow_id=workflow_id,
                version=version,
                start_time=now,
                trigger={"kind": trigger_kind},
            ),
        )
    except ParamError as exc:
        raise ApiError(
            "invalid_params",
            f"params for {workflow_id}: {exc}",
            {"errors": [{"path": i.path, "message": i.message} for i in exc.errors]},
        ) from None
    except SelError as exc:
        raise ApiError("invalid_params", f"params for {workflow_id}: {exc}") from None
