"""Which HTTP statuses an http step accepts: a definition without success_status compiles to an empty
list, which means any 2xx (it once failed every such step with "HTTP 200")."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from legato.core import compile_workflow, parse_definition
from legato.core.compiled import EvalEnv
from legato.executor.capture import CapturedOutput
from legato.executor.runners.http import HttpRunner
from legato.executor.step_runner import StepContext, StepFailed
from legato.protocol.messages import JSONValue, WorkItem


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = int(self.path.strip("/"))
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def compiled_config(url: str, extra: str = "") -> dict[str, JSONValue]:
    defn = parse_definition(f"id: h\nsteps:\n  - {{id: get, type: http, url: '{url}'{extra}}}\n")
    resolved = compile_workflow(defn).resolve_step("get", EvalEnv(params={}))
    return resolved.config


async def call(config: dict[str, JSONValue]) -> int:
    item = WorkItem(
        attempt_id="a",
        workflow_id="h",
        instance_id="i",
        step_id="get",
        attempt=1,
        step_type="http",
        config=config,
        reply_subject="r",
    )
    with ThreadPoolExecutor(1) as pool:
        result = await HttpRunner(pool).run(StepContext(item=item, output=CapturedOutput(), kill_grace=1.0))
    status = result.outputs["status"]
    assert isinstance(status, int)
    return status


async def test_without_success_status_any_2xx_succeeds(base_url: str) -> None:
    assert await call(compiled_config(f"{base_url}/200")) == 200
    assert await call(compiled_config(f"{base_url}/204")) == 204
    with pytest.raises(StepFailed, match="HTTP 404"):
        await call(compiled_config(f"{base_url}/404"))


async def test_success_status_lists_the_accepted_codes(base_url: str) -> None:
    assert await call(compiled_config(f"{base_url}/404", ", success_status: [404]")) == 404
    with pytest.raises(StepFailed, match="HTTP 200"):
        await call(compiled_config(f"{base_url}/200", ", success_status: [201]"))
