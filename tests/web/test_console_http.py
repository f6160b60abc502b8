"""The console's HTTP contract against a real ``legato web`` and stack: login, cookie flags, security
headers, CSRF and role checks on actions, no asset from elsewhere."""

from __future__ import annotations

import asyncio
import http.client as http_client
import re
from pathlib import Path

import asyncpg

from legato.config.settings import Settings
from legato.security.keyring import Keyring
from legato.web.logins import set_password
from tests.e2e.test_dead_letters import dead_letters, trigger_subject
from tests.support.stack import running_stack, wait_for
from tests.web.support import http, running_console, session_cookie

QUEUE = """
id: web-http
run_strategy: {type: sequential}
steps:
  - {id: long, type: shell, command: "sleep 120"}
"""


XSS = """
id: web-xss
description: "<script>alert(1)</script>"
steps:
  - {id: a, type: noop}
"""


def sse_first_event(url: str, cookie: str) -> str:
    """Open a server-sent events stream, read up to its first event, and hang up."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http_client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=15)
    try:
        conn.request("GET", parts.path, headers={"Cookie": cookie, "Accept": "text/event-stream"})
        res = conn.getresponse()
        assert res.status == 200 and res.getheader("content-type", "").startswith("text/event-stream")
        lines: list[str] = []
        while True:
            line = res.readline().decode()
            if line.startswith("event:") or lines:
                lines.append(line)
                if line == "\n":
                    return "".join(lines)
    finally:
        conn.close()


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


async def test_login_sessions_csrf_and_roles(settings: Settings, keyring: Keyring, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.push(QUEUE)
        await client.push(XSS)
        run = await client.start("web-http")
        await wait_for(client, run.instance_id, statuses=("running",))
        with running_console(settings, keyring, tmp_path) as console:
            base = console.url
            # Nothing without a session: pages redirect to the login, data and streams say 401.
            status, headers, _ = http(f"{base}/runs/{run.instance_id}")
            assert status == 303 and headers["location"][0].startswith("/login")
            assert http(f"{base}/events/runs/{run.instance_id}")[0] == 401
            assert http(f"{base}/runs/{run.instance_id}.json")[0] == 401
            # A wrong token logs nobody in.
            status, headers, page = http(f"{base}/login?token=not-a-token")
            assert status == 403 and "unknown token" in page
            assert not any(
                c.startswith("legato_session=") and "user" in c for c in headers.get("set-cookie", [])
            )
            # The one-click token: a session cookie that scripts cannot read, sent only over TLS (or to
            # localhost) and never on cross-site requests; and strict headers on every response.
            status, headers, _ = http(console.login_url("viewer"))
            assert status == 303 and headers["location"] == ["/"]
            flags = headers["set-cookie"][-1].lower()
            assert "httponly" in flags and "secure" in flags and "samesite=strict" in flags
            csp = headers["content-security-policy"][0]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert headers["referrer-policy"] == ["no-referrer"]
            viewer = session_cookie(headers)
            status, _, page = http(f"{base}/runs/{run.instance_id}", cookie=viewer)
            assert status == 200 and run.instance_id in page
            assert "btn-stop" not in page  # no buttons for a viewer…
            form = {"csrf": csrf_of(page), "verb": "stop", "reason": "forged"}
            status, _, body = http(f"{base}/runs/{run.instance_id}/action", cookie=viewer, form=form)
            assert status == 403 and "needs role operator" in body  # …and the server refuses too
            # An operator: no CSRF token, no action; with it, the stop is done as "operator".
            _, headers, _ = http(console.login_url("operator"))
            operator = session_cookie(headers)
            status, _, page = http(f"{base}/runs/{run.instance_id}", cookie=operator)
            assert "btn-stop" in page
            form = {"verb": "stop", "reason": "no token"}
            assert http(f"{base}/runs/{run.instance_id}/action", cookie=operator, form=form)[0] == 403
            form["csrf"] = csrf_of(page) + "x"
            assert http(f"{base}/runs/{run.instance_id}/action", cookie=operator, form=form)[0] == 403
            assert (await client.get(run.instance_id))["status"] == "running"
            form = {"csrf": csrf_of(page), "verb": "stop", "reason": ""}
            status, headers, _ = http(f"{base}/runs/{run.instance_id}/action", cookie=operator, form=form)
            assert status == 303  # an empty reason is refused with a message, nothing done
            assert (await client.get(run.instance_id))["status"] == "running"
            form["reason"] = "maintenance window"
            status, _, _ = http(f"{base}/runs/{run.instance_id}/action", cookie=operator, form=form)
            assert status == 303
            done = await wait_for(client, run.instance_id)
            assert done["status"] == "stopped" and done["reason"] == {
                "by": "operator",
                "why": "maintenance window",
                "code": "operator",
                "action": "stop",
            }
            # What a workflow's author wrote is shown as text, never as markup.
            page = http(f"{base}/", cookie=operator)[2]
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
            # After login, only a path of this console: no open redirect.
            for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example/"):
                status, headers, _ = http(f"{console.login_url('viewer')}&next={evil}")
                assert status == 303 and headers["location"] == ["/"], evil
            # A live stream sends the run at once, and ends (with its subscriptions) when the browser leaves.
            for _ in range(3):
                first_event = sse_first_event(f"{base}/events/runs/{run.instance_id}", operator)
                assert first_event.startswith("event: run") and run.instance_id in first_event
            for _ in range(100):
                if "live streams: 0" in http(f"{base}/healthz")[2]:
                    break
                await asyncio.sleep(0.1)
            assert "live streams: 0" in http(f"{base}/healthz")[2]
            # Every asset is served by the console itself (air-gapped): no URL elsewhere in a page.
            for path in ("/", "/workflows/web-http", f"/runs/{run.instance_id}", "/signals"):
                status, _, page = http(base + path, cookie=operator)
                assert status == 200, path
                assert not re.search(r'(src|href)="(https?:)?//', page), path
            status, headers, js = http(f"{base}/static/dagre.min.js")
            assert status == 200 and "dagre" in js
            # A name and password log in too; five wrong ones lock the name out for a while.
            set_password(tmp_path / "web-tokens.json", "viewer", "a long viewer passphrase")
            _, headers, login_page = http(f"{base}/login")
            anon = session_cookie(headers)
            form = {"csrf": csrf_of(login_page), "name": "viewer", "password": "a long viewer passphrase"}
            status, headers, _ = http(f"{base}/login", cookie=anon, form=form)
            assert status == 303 and ">viewer<" in http(f"{base}/", cookie=session_cookie(headers))[2]
            for _ in range(5):
                status, _, _ = http(f"{base}/login", cookie=anon, form={**form, "password": "wrong guess!!"})
                assert status == 403
            assert http(f"{base}/login", cookie=anon, form=form)[0] == 429  # even the right one, for now
            # Logging out needs the CSRF token too, and ends the session.
            assert http(f"{base}/logout", cookie=operator, form={})[0] == 403
            status, headers, _ = http(f"{base}/logout", cookie=operator, form={"csrf": csrf_of(page)})
            assert status == 303
            assert http(f"{base}/", cookie=session_cookie(headers))[0] == 303


async def test_dead_letters_are_listed_inspected_and_replayed_by_an_operator(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.nc.jetstream().publish(
            trigger_subject(settings, "nothing"), b"\xff not json", headers={"Nats-Msg-Id": "web-garbage-1"}
        )
        (row,) = await dead_letters(client, 1)
        with running_console(settings, keyring, tmp_path) as console:
            _, headers, _ = http(console.login_url("viewer"))
            viewer = session_cookie(headers)
            status, _, page = http(f"{console.url}/dead-letters", cookie=viewer)
            assert status == 200 and f'href="/dead-letters/{row["id"]}"' in page
            status, _, page = http(f"{console.url}/dead-letters/{row['id']}", cookie=viewer)
            assert status == 200 and row["subject"] in page and "btn-replay" not in page
            form = {"csrf": csrf_of(page), "verb": "replay", "reason": "forged"}
            assert http(f"{console.url}/dead-letters/{row['id']}/action", cookie=viewer, form=form)[0] == 403
            _, headers, _ = http(console.login_url("operator"))
            operator = session_cookie(headers)
            status, _, page = http(f"{console.url}/dead-letters/{row['id']}", cookie=operator)
            assert "btn-replay" in page and "btn-discard" not in page  # discarding needs admin
            form = {"csrf": csrf_of(page), "verb": "replay", "reason": "decoder fixed"}
            assert (
                http(f"{console.url}/dead-letters/{row['id']}/action", cookie=operator, form=form)[0] == 303
            )
            shown = await client.call("dead_letter.get", {"id": row["id"]})
            assert shown["replayed_by"] == "operator"


FAILING = """
id: web-restart
run_strategy: {type: parallel, max_concurrency: 5}
steps:
  - {id: a, type: noop}
  - {id: b, type: shell, command: "exit 3", depends_on: [a]}
"""


async def test_an_operator_restarts_a_failed_run_from_a_step(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.push(FAILING)
        run = await client.start("web-restart")
        assert (await wait_for(client, run.instance_id))["status"] == "failed"
        with running_console(settings, keyring, tmp_path) as console:
            _, headers, _ = http(console.login_url("operator"))
            operator = session_cookie(headers)
            status, _, page = http(f"{console.url}/runs/{run.instance_id}", cookie=operator)
            assert status == 200 and 'class="action action-restart"' in page and '<option value="b">' in page
            form = {
                "csrf": csrf_of(page),
                "verb": "restart",
                "step_id": "b",
                "reason": "retry b after the fix",
            }
            status, acted, _ = http(
                f"{console.url}/runs/{run.instance_id}/action", cookie=operator, form=form
            )
            assert status == 303 and acted["location"] == [f"/runs/{run.instance_id}"]
            for _ in range(200):
                info = await client.get(run.instance_id)
                if info["run_number"] == 2 and info["status"] == "failed":
                    break
                await asyncio.sleep(0.1)
            assert info["run_number"] == 2, info
            restarted = [t for t in info["timeline"] if t["actor"] == "operator"]
            assert restarted and "retry b after the fix" in str(restarted[0]), info["timeline"]
            # the flash message (kept in the session cookie the action set) says what was done, as whom
            page = http(f"{console.url}/runs/{run.instance_id}", cookie=session_cookie(acted))[2]
            assert "restart requested by operator: retry b after the fix" in page
            # workflow-wide: pause with a reason (recorded under the operator), then resume
            page = http(f"{console.url}/workflows/web-restart", cookie=operator)[2]
            form = {"csrf": csrf_of(page), "verb": "pause", "reason": "warehouse maintenance"}
            assert http(f"{console.url}/workflows/web-restart/action", cookie=operator, form=form)[0] == 303
            status_now = await client.call("workflow.status", {"workflow_id": "web-restart"})
            assert status_now["paused"] and status_now["pause"]["by"] == "operator"
            assert status_now["pause"]["reason"] == "warehouse maintenance"
            assert (
                "paused by operator: warehouse maintenance"
                in http(f"{console.url}/workflows/web-restart", cookie=operator)[2]
            )
            form = {"csrf": csrf_of(page), "verb": "resume", "reason": "done"}
            assert http(f"{console.url}/workflows/web-restart/action", cookie=operator, form=form)[0] == 303
            assert not (await client.call("workflow.status", {"workflow_id": "web-restart"}))["paused"]


STRATEGY = """
id: web-strategy
run_strategy: {type: sequential}
steps:
  - {id: a, type: noop}
"""


async def test_an_admin_sets_the_run_strategy_with_a_reason_and_others_cannot(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.push(STRATEGY)
        with running_console(settings, keyring, tmp_path) as console:
            url = f"{console.url}/workflows/web-strategy"
            form = {"run_strategy": "parallel", "max_concurrency": "7", "reason": "forged"}
            # workflow.set_run_strategy needs admin: a viewer and an operator get no form, and a forged
            # POST (with a right CSRF token) is refused.
            for role in ("viewer", "operator"):
                _, headers, _ = http(console.login_url(role))
                cookie = session_cookie(headers)
                status, _, page = http(url, cookie=cookie)
                assert status == 200 and "action-strategy" not in page and "btn-strategy" not in page, role
                sent = {**form, "csrf": csrf_of(page)}
                status, _, body = http(f"{url}/strategy", cookie=cookie, form=sent)
                assert status == 403 and "needs role admin" in body, (role, body)
            assert (await client.call("workflow.status", {"workflow_id": "web-strategy"}))[
                "run_strategy"
            ] == "sequential"
            _, headers, _ = http(console.login_url("admin"))
            admin = session_cookie(headers)
            page = http(url, cookie=admin)[2]
            assert 'class="action action-strategy"' in page and "<option selected>sequential</option>" in page
            # No CSRF token, no change; no reason, no change (a message says why).
            assert http(f"{url}/strategy", cookie=admin, form={**form, "reason": "x"})[0] == 403
            sent = {**form, "csrf": csrf_of(page), "reason": "  "}
            status, acted, _ = http(f"{url}/strategy", cookie=admin, form=sent)
            assert status == 303
            assert "a reason is required" in http(url, cookie=session_cookie(acted))[2]
            status, _, body = http(f"{url}/strategy", cookie=admin, form={**sent, "run_strategy": "fastest"})
            assert status == 400 and "run_strategy: must be one of" in body
            assert (await client.call("workflow.status", {"workflow_id": "web-strategy"}))[
                "strategy_source"
            ] == "definition"
            sent["reason"] = "month-end burst"
            status, acted, _ = http(f"{url}/strategy", cookie=admin, form=sent)
            assert status == 303 and acted["location"] == ["/workflows/web-strategy"]
            now = await client.call("workflow.status", {"workflow_id": "web-strategy"})
            assert (now["run_strategy"], now["max_concurrency"], now["strategy_source"]) == (
                "parallel",
                7,
                "api",
            )
            assert now["strategy_change"]["by"] == "admin"
            assert now["strategy_change"]["reason"] == "month-end burst"
            # The page shows the new strategy and who set it and why; the audit trail has it too.
            page = http(url, cookie=session_cookie(acted))[2]
            assert "parallel ≤7" in page and "set by admin: month-end burst" in page
            assert "run strategy parallel ≤7 set by admin: month-end burst" in page  # the flash
            conn = await asyncpg.connect(settings.database_url)
            try:
                audit = await conn.fetch(
                    "SELECT actor, reason, result FROM operator_action WHERE workflow_id = 'web-strategy' "
                    "AND action = 'set_run_strategy'"
                )
            finally:
                await conn.close()
            assert [(a["actor"], a["reason"]) for a in audit] == [("admin", "month-end burst")]
            assert "parallel (max_concurrency 7), was sequential" in audit[0]["result"]
            # A retried request (same request_id, as the client sends on a lost reply) is recorded once.
            again = {
                "workflow_id": "web-strategy",
                "run_strategy": "parallel",
                "max_concurrency": 8,
                "reason": "retried",
                "request_id": "web-strategy-retry-1",
            }
            for _ in range(2):
                got = await client.call("workflow.set_run_strategy", again)
                assert got["max_concurrency"] == 8 and got["strategy_change"]["reason"] == "retried"
            conn = await asyncpg.connect(settings.database_url)
            try:
                reasons = await conn.fetch(
                    "SELECT reason FROM operator_action WHERE workflow_id = 'web-strategy' "
                    "AND action = 'set_run_strategy' ORDER BY created_at"
                )
            finally:
                await conn.close()
            assert [r["reason"] for r in reasons] == ["month-end burst", "retried"]
            # Activating a version applies the definition's strategy again, and forgets who overrode it.
            await client.activate("web-strategy")
            now = await client.call("workflow.status", {"workflow_id": "web-strategy"})
            assert now["run_strategy"] == "sequential" and now.get("strategy_change") is None


BACKFILLED = """
id: web-backfill
run_strategy: {type: parallel, max_concurrency: 20}
params:
  day: {type: string}
steps:
  - {id: work, type: shell, command: "sleep 1"}
"""


async def test_an_operator_pauses_resumes_and_cancels_a_backfill(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.push(BACKFILLED)
        started = await client.call(
            "backfill.start",
            {
                "workflow_id": "web-backfill",
                "start": "2026-01-01",
                "end": "2026-03-01",
                "params": {"day": "${backfill.period_start}"},
                "concurrency": 1,
            },
        )
        bf = started["backfill_id"]

        async def backfill_status() -> str:
            status: str = (await client.call("backfill.show", {"backfill_id": bf}))["status"]
            return status

        with running_console(settings, keyring, tmp_path) as console:
            url = f"{console.url}/workflows/web-backfill"
            action = f"{url}/backfills/{bf}/action"
            assert http(action, form={"verb": "pause"})[0] == 401
            assert http(f"{url}/strategy", form={"run_strategy": "parallel"})[0] == 401
            _, headers, _ = http(console.login_url("viewer"))
            viewer = session_cookie(headers)
            page = http(url, cookie=viewer)[2]
            assert f'data-backfill="{bf}"' in page and "btn-backfill-pause" not in page
            forged = {"csrf": csrf_of(page), "verb": "pause"}
            status, _, body = http(action, cookie=viewer, form=forged)
            assert status == 403 and "needs role operator" in body
            assert await backfill_status() == "running"
            _, headers, _ = http(console.login_url("operator"))
            operator = session_cookie(headers)
            page = http(url, cookie=operator)[2]
            assert "btn-backfill-pause" in page and "btn-backfill-resume" not in page
            assert "btn-backfill-cancel" in page
            csrf = csrf_of(page)
            assert http(action, cookie=operator, form={"verb": "pause"})[0] == 403  # no CSRF token
            assert http(action, cookie=operator, form={"csrf": csrf, "verb": "explode"})[0] == 400
            status, acted, _ = http(action, cookie=operator, form={"csrf": csrf, "verb": "pause"})
            assert status == 303 and acted["location"] == ["/workflows/web-backfill"]
            assert await backfill_status() == "paused"
            page = http(url, cookie=session_cookie(acted))[2]
            assert f"backfill pause of {bf} by operator" in page
            assert "btn-backfill-resume" in page and "btn-backfill-pause" not in page
            assert http(action, cookie=operator, form={"csrf": csrf, "verb": "resume"})[0] == 303
            assert await backfill_status() == "running"
            # Cancelling needs a reason; with one it is done as the operator, and the list says so.
            status, acted, _ = http(action, cookie=operator, form={"csrf": csrf, "verb": "cancel"})
            assert status == 303 and "a reason is required" in http(url, cookie=session_cookie(acted))[2]
            assert await backfill_status() == "running"
            form = {"csrf": csrf, "verb": "cancel", "reason": "wrong range", "running": "on"}
            status, acted, _ = http(action, cookie=operator, form=form)
            assert status == 303
            shown = await client.call("backfill.show", {"backfill_id": bf})
            assert (shown["status"], shown["cancelled_by"], shown["cancel_reason"]) == (
                "cancelled",
                "operator",
                "wrong range",
            )
            page = http(url, cookie=session_cookie(acted))[2]
            assert "cancelled by operator: wrong range" in page and "btn-backfill-cancel" not in page
            # A backfill that cannot do what is asked: refused with the API's message, not an error page.
            status, acted, _ = http(action, cookie=operator, form={"csrf": csrf, "verb": "resume"})
            assert status == 303
            assert "backfill resume refused" in http(url, cookie=session_cookie(acted))[2]
