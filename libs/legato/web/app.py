"""The console's HTTP side: a Starlette app of server-rendered pages, actions and server-sent events.

Every page and action acts as the logged-in identity (``Gateway.client(user.name)``); a role's actions
are checked here (``may_call``, for a clear 403 and hidden buttons) and again by nats-server and the
trigger, which are what actually enforce them. Sessions are signed cookies (HttpOnly, SameSite=Strict,
Secure); every POST carries the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from legato.client import ApiError, LegatoClient
from legato.core.cron import CronSchedule
from legato.core.model import RUN_STRATEGIES
from legato.security.permissions import may_call
from legato.web.config import WebConfig
from legato.web.gateway import Changes, Gateway, bounded_gather, every_workflow
from legato.web.logins import ConsoleUser, Logins, Throttle

HERE = Path(__file__).parent
FLEET_PAGE = 100
STRIP = 12  # runs in a fleet row's strip
RUNS_PAGE = 50
MAX_REASON = 1000
MAX_STREAMS = 200  # concurrent server-sent event streams
REFRESH_HZ = 4  # a run page's stream re-reads the run at most this often
STREAM_SECONDS = 30 * 60  # a stream ends after this; the browser's EventSource reconnects
TERMINAL = ("succeeded", "failed", "timed_out", "stopped", "skipped")
RUN_VERBS = ("stop", "kill", "restart", "unblock", "skip_step")
WORKFLOW_VERBS = ("stop", "kill", "unblock", "pause", "resume")
DEAD_LETTER_VERBS = ("replay", "discard")
BACKFILL_VERBS = ("pause", "resume", "cancel", "retry_failed")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


class SecurityHeaders:
    """Adds a strict Content-Security-Policy (no inline script, nothing from elsewhere), no framing,
    no MIME sniffing and no Referer (a one-click login URL carries a token) to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


class Console:
    """The console's state: configuration, logins, the gateway and the definition cache."""

    def __init__(self, config: WebConfig, gateway: Gateway | None = None) -> None:
        self.config = config
        self.logins = Logins(config.tokens_file, config.users_file, config.keys_dir)
        self.throttle = Throttle()
        self.gateway = gateway or Gateway(config.settings, config.keys_dir)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals["may"] = may_call
        self.templates.env.filters["ago"] = _ago
        self.templates.env.filters["short"] = _short_time
        self.definitions: dict[tuple[str, int], dict[str, Any]] = {}  # versions never change
        self.streams = 0

    # ---------------------------------------------------------------- sessions
    @staticmethod
    def user(request: Request) -> ConsoleUser | None:
        name, role = request.session.get("user"), request.session.get("role")
        return ConsoleUser(name, role) if isinstance(name, str) and isinstance(role, str) else None

    @staticmethod
    def csrf(request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    def render(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        flash = request.session.pop("flash", None)
        return self.templates.TemplateResponse(
            request,
            name,
            {"user": self.user(request), "csrf": self.csrf(request), "flash": flash, **context},
            status_code=status_code,
        )

    async def client(self, user: ConsoleUser) -> LegatoClient:
        return await self.gateway.client(user.name)

    async def definition(self, client: LegatoClient, workflow_id: str, version: int) -> dict[str, Any]:
        key = (workflow_id, version)
        cached = self.definitions.get(key)
        if cached is None:
            got = await client.call("workflow.get", {"workflow_id": workflow_id, "version": version})
            cached = {"definition": got.get("definition") or {}, "source": got.get("source") or ""}
            if len(self.definitions) > 5000:
                self.definitions.clear()
            self.definitions[key] = cached
        return cached


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _ago(text: str | None) -> str:
    when = _parse_time(text)
    if when is None:
        return ""
    secs = (datetime.now(UTC) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(secs) >= size:
            return f"{int(secs // size)}{unit} ago" if secs > 0 else f"in {int(-secs // size)}{unit}"
    return f"{int(secs)}s ago" if secs >= 0 else f"in {int(-secs)}s"


def _short_time(text: str | None) -> str:
    when = _parse_time(text)
    return when.strftime("%Y-%m-%d %H:%M:%S") if when else ""


def workflow_state(wf: dict[str, Any]) -> str:
    """One word (or two) for a fleet row: archived, inactive, paused, blocked by RUN, active."""
    if wf.get("archived_at"):
        return "archived"
    if not wf.get("active"):
        return "inactive"
    if wf.get("paused"):
        return "paused"
    if wf.get("blocked_by"):
        return f"blocked by {wf['blocked_by']}"
    return "active"


def next_cron_fire(definition: dict[str, Any], now: datetime) -> datetime | None:
    """The earliest next fire of the definition's cron triggers (None without one)."""
    fires: list[datetime] = []
    for trig in definition.get("triggers") or []:
        if trig.get("type") == "cron" and trig.get("cron"):
            with contextlib.suppress(ValueError):
                fires.append(CronSchedule.parse(trig["cron"], trig.get("timezone") or "UTC").next_after(now))
    return min(fires) if fires else None


def graph_of(definition: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Nodes (each step with its type and status) and edges (``depends_on``, ``next``) for the run graph."""
    status = {s["step_id"]: s for s in steps}
    nodes, edges = [], []
    for step in definition.get("steps") or []:
        sid = step.get("id")
        seen = status.get(sid, {})
        nodes.append({"id": sid, "type": step.get("type"), "status": seen.get("status", "pending")})
        edges += [[dep, sid] for dep in step.get("depends_on") or []]
        edges += [[sid, nxt] for nxt in step.get("next") or [] if isinstance(nxt, str)]
    known = {n["id"] for n in nodes}
    for sid, seen in status.items():  # dynamic steps not in the definition
        if sid not in known:
            nodes.append({"id": sid, "type": "dynamic", "status": seen.get("status", "pending")})
    return {"nodes": nodes, "edges": [e for e in edges if e[0] in known | status.keys()]}


MAX_LINEAGE_NODES = 500


def lineage_graph(root: dict[str, Any]) -> dict[str, Any]:
    """The ``signal.lineage`` tree as a graph: signal and run nodes, edges signal -> run it started or
    unblocked, run -> signal it published (both ways from a run: ``started_by``/``unblocked_by``)."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[list[str]] = []

    def key(node: dict[str, Any]) -> str | None:
        if "instance_id" in node:
            return f"run:{node['instance_id']}"
        if "name" in node and "id" in node:
            return f"signal:{node['name']}:{node['id']}"
        return None

    def visit(node: dict[str, Any]) -> str | None:
        me = key(node)
        if me is None or len(nodes) >= MAX_LINEAGE_NODES:
            return None
        if me not in nodes:
            if me.startswith("run:"):
                nodes[me] = {
                    "id": me,
                    "kind": "run",
                    "label": f"{node.get('workflow_id', '')} {node['instance_id']}",
                    "status": node.get("status", "pending"),
                    "href": f"/runs/{quote(node['instance_id'])}",
                }
            else:
                nodes[me] = {
                    "id": me,
                    "kind": "signal",
                    "label": f"{node['name']} {node['id']}",
                    "status": "rejected" if node.get("rejected") else "signal",
                    "href": f"/signals?name={quote(node['name'])}&id={quote(node['id'])}",
                }
        for child_key, outward in (
            ("triggered", True),
            ("unblocked", True),
            ("published", True),
            ("started_by", False),
            ("unblocked_by", False),
        ):
            for child in node.get(child_key) or []:
                other = visit(child) if isinstance(child, dict) else None
                if other is not None:
                    edges.append([me, other] if outward else [other, me])
        up = node.get("published_by")
        if isinstance(up, dict):
            other = visit(up)
            if other is not None:
                edges.append([other, me])
        return me

    visit(root)
    unique = [list(e) for e in dict.fromkeys(tuple(e) for e in edges)]
    return {"nodes": list(nodes.values()), "edges": unique}


def create_app(config: WebConfig, gateway: Gateway | None = None) -> Starlette:
    """The console as an ASGI app (uvicorn serves it: ``legato web``)."""
    console = Console(config, gateway)
    Page = Callable[[Request, ConsoleUser], Awaitable[Response]]

    def page(fn: Page) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            user = console.user(request)
            if user is None:
                if request.url.path.startswith("/events/") or request.url.path.endswith(".json"):
                    return PlainTextResponse("login required", status_code=401)
                return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
            try:
                return await fn(request, user)
            except ApiError as exc:
                status = {"not_found": 404, "permission_denied": 403, "forbidden": 403}.get(exc.code, 502)
                return console.render(request, "error.html", status, error=str(exc))
            except ConnectionError as exc:
                return console.render(request, "error.html", 503, error=str(exc))

        return handler

    async def form_with_csrf(request: Request) -> dict[str, str] | Response:
        form = await request.form()
        sent = str(form.get("csrf") or request.headers.get("x-csrf-token") or "")
        wanted = request.session.get("csrf")
        if not isinstance(wanted, str) or not hmac.compare_digest(sent.encode(), wanted.encode()):
            return PlainTextResponse("CSRF token missing or wrong: reload the page and try again", 403)
        return {k: str(v) for k, v in form.items()}

    # ---------------------------------------------------------------- login
    async def login(request: Request) -> Response:
        token = request.query_params.get("token")
        next_url = request.query_params.get("next") or "/"
        name = password = ""
        if request.method == "POST":
            form = await form_with_csrf(request)
            if isinstance(form, Response):
                return form
            token, next_url = form.get("token") or None, form.get("next") or "/"
            name, password = form.get("name", "").strip(), form.get("password", "")
            if token is None and not (name and password):
                return console.render(
                    request, "login.html", 400, error="give a token, or a name and password", next=next_url
                )
        if not next_url.startswith("/") or next_url.startswith("//") or "\\" in next_url:
            next_url = "/"  # only a path of this console: never an open redirect
        if token is not None or (name and password):
            now = time.monotonic()
            if name and console.throttle.blocked(name, now):
                return console.render(
                    request,
                    "login.html",
                    429,
                    error="too many failed logins: wait a few minutes",
                    next=next_url,
                )
            try:
                if token is not None:
                    user = console.logins.check(token)
                else:
                    user = await asyncio.to_thread(console.logins.check_password, name, password)
            except ValueError as exc:
                return console.render(request, "login.html", 500, error=str(exc), next=next_url)
            if user is None:
                if name:
                    console.throttle.failed(name, now)
                why = "unknown token" if token is not None else "wrong name or password"
                return console.render(request, "login.html", 403, error=why, next=next_url)
            request.session.clear()  # a new session id and CSRF token on login (no fixation)
            request.session.update({"user": user.name, "role": user.role, "csrf": secrets.token_urlsafe(32)})
            return RedirectResponse(next_url, status_code=303)
        return console.render(request, "login.html", next=next_url)

    async def logout(request: Request) -> Response:
        form = await form_with_csrf(request)
        if isinstance(form, Response):
            return form
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # ---------------------------------------------------------------- fleet
    async def fleet_rows(request: Request, user: ConsoleUser) -> dict[str, Any]:
        client = await console.client(user)
        q = request.query_params.get("q", "").strip().lower()
        state = request.query_params.get("state", "")
        offset_text = request.query_params.get("offset", "0")
        offset = int(offset_text) if offset_text.isdigit() else 0
        workflows, recent = await asyncio.gather(
            every_workflow(client), client.call("instance.list", {"limit": 1000})
        )
        rows = [
            wf
            for wf in workflows
            if (not q or q in wf["workflow_id"].lower() or q in (wf.get("description") or "").lower())
            and (not state or workflow_state(wf).split()[0] == state)
        ]
        shown = rows[offset : offset + FLEET_PAGE]
        strips: dict[str, list[dict[str, Any]]] = {}
        newest = recent.get("instances", [])
        for run in newest:
            strip = strips.setdefault(run["workflow_id"], [])
            if len(strip) < STRIP:
                strip.append(run)
        if len(newest) >= 1000:  # the install's newest runs do not cover every workflow: ask the others
            missing = [wf["workflow_id"] for wf in shown if wf["workflow_id"] not in strips]
            pages = await bounded_gather(
                [client.call("instance.list", {"workflow_id": wid, "limit": STRIP}) for wid in missing]
            )
            for wid, got in zip(missing, pages, strict=True):
                if isinstance(got, dict):
                    strips[wid] = got.get("instances", [])
        defs = await bounded_gather(
            [console.definition(client, wf["workflow_id"], wf["active_version"]) for wf in shown]
        )
        now = datetime.now(UTC)
        out = []
        for wf, got in zip(shown, defs, strict=True):
            fire = next_cron_fire(got["definition"], now) if isinstance(got, dict) else None
            out.append(
                {
                    **wf,
                    "state": workflow_state(wf),
                    "strip": list(reversed(strips.get(wf["workflow_id"], []))),
                    "next_fire": fire.isoformat() if fire else None,
                }
            )
        return {
            "rows": out,
            "total": len(rows),
            "all": len(workflows),
            "offset": offset,
            "q": q,
            "state": state,
        }

    async def fleet(request: Request, user: ConsoleUser) -> Response:
        data = await fleet_rows(request, user)
        template = "fleet_rows.html" if request.query_params.get("partial") else "fleet.html"
        return console.render(request, template, page_size=FLEET_PAGE, **data)

    # ---------------------------------------------------------------- workflow
    async def workflow(request: Request, user: ConsoleUser) -> Response:
        client = await console.client(user)
        wid = request.path_params["workflow_id"]
        params = request.query_params
        status_filter = params.get("status") or None
        kind = params.get("kind") or ""
        hours = params.get("hours") or ""
        cursor = params.get("cursor") or None
        body: dict[str, Any] = {"workflow_id": wid, "limit": RUNS_PAGE, "status": status_filter}
        if hours.isdigit():
            body["since"] = time.time() - int(hours) * 3600
        else:
            hours = ""
        if cursor and cursor.isdigit():
            body["cursor"] = int(cursor)
        status, runs, backfills = await asyncio.gather(
            client.call("workflow.status", {"workflow_id": wid}),
            client.call("instance.list", body),
            client.call("backfill.list", {"workflow_id": wid, "limit": 20}),
        )
        listed = [
            r for r in runs.get("instances", []) if not kind or (r.get("trigger") or {}).get("kind") == kind
        ]
        diff = None
        a, b = params.get("a"), params.get("b")
        if a and b and a.isdigit() and b.isdigit():
            left, right = await asyncio.gather(
                console.definition(client, wid, int(a)), console.definition(client, wid, int(b))
            )
            diff = "\n".join(
                difflib.unified_diff(
                    left["source"].splitlines(), right["source"].splitlines(), f"v{a}", f"v{b}", lineterm=""
                )
            )
        return console.render(
            request,
            "workflow.html",
            wf=status,
            runs=listed,
            backfills=backfills.get("backfills", []),
            next_cursor=runs.get("next_cursor"),
            filters={"status": status_filter or "", "kind": kind, "hours": hours},
            versions=list(range(status.get("latest_version", 1), 0, -1)),
            diff=diff,
            diff_ab=(a, b),
            strategies=RUN_STRATEGIES,
        )

    async def workflow_action(request: Request) -> Response:
        return await _action(request, "workflow", request.path_params["workflow_id"])

    async def posted_form(request: Request) -> tuple[ConsoleUser, dict[str, str]] | Response:
        """The logged-in user and the form of a POST whose CSRF token is right (else the refusal)."""
        user = console.user(request)
        if user is None:
            return PlainTextResponse("login required", status_code=401)
        form = await form_with_csrf(request)
        if isinstance(form, Response):
            return form
        return user, form

    def role_refusal(user: ConsoleUser, endpoint: str) -> Response | None:
        """The 403 for a user whose role may not call ``endpoint``; None when it may."""
        if may_call(user.role, endpoint):
            return None
        return PlainTextResponse(
            f"{endpoint}: needs role {'operator' if may_call('operator', endpoint) else 'admin'}; "
            f"{user.name} has role {user.role}",
            status_code=403,
        )

    async def acting_user(request: Request, endpoint: str) -> tuple[ConsoleUser, dict[str, str]] | Response:
        """The logged-in user and the form of a POST whose CSRF token is right and whose endpoint the
        user's role may call (else the response that refuses it)."""
        posted = await posted_form(request)
        if isinstance(posted, Response):
            return posted
        return role_refusal(posted[0], endpoint) or posted

    async def done(
        request: Request, back: str, what: str, call: Callable[[], Awaitable[Any]], success: str
    ) -> Response:
        """Run an API call for an action; back to ``back`` with a message saying what happened."""
        try:
            await call()
        except ApiError as exc:
            if exc.code in ("permission_denied", "forbidden"):
                return PlainTextResponse(str(exc), status_code=403)
            request.session["flash"] = f"{what} refused: {exc}"
        except ConnectionError as exc:
            request.session["flash"] = f"{what} not done: {exc}"
        else:
            request.session["flash"] = success
        return RedirectResponse(back, status_code=303)

    async def workflow_strategy(request: Request) -> Response:
        """Set the workflow's run strategy (admin, as ``workflow.set_run_strategy`` needs), with a reason."""
        wid = request.path_params["workflow_id"]
        acting = await acting_user(request, "workflow.set_run_strategy")
        if isinstance(acting, Response):
            return acting
        user, form = acting
        back = "/workflows/" + quote(wid)
        strategy = form.get("run_strategy", "")
        if strategy not in RUN_STRATEGIES:
            return PlainTextResponse(
                f"run_strategy: must be one of {', '.join(RUN_STRATEGIES)}, got {strategy!r}", status_code=400
            )
        limit_text = form.get("max_concurrency", "").strip()
        if limit_text and not limit_text.isdigit():
            request.session["flash"] = (
                f"set strategy: max concurrency must be a whole number, got {limit_text!r}"
            )
            return RedirectResponse(back, status_code=303)
        limit = int(limit_text) if limit_text and strategy == "parallel" else None
        reason = form.get("reason", "").strip()
        if not reason or len(reason) > MAX_REASON:
            request.session["flash"] = f"set strategy: a reason is required (at most {MAX_REASON} characters)"
            return RedirectResponse(back, status_code=303)
        client = await console.client(user)
        shown = strategy + (f" ≤{limit}" if limit is not None else "")
        return await done(
            request,
            back,
            "set strategy",
            lambda: client.set_run_strategy(wid, strategy, max_concurrency=limit, reason=reason),
            f"run strategy {shown} set by {user.name}: {reason}",
        )

    async def backfill_action(request: Request) -> Response:
        """Pause, resume, retry the failed periods of, or cancel (with a reason) one of the workflow's
        backfills (operator)."""
        wid, backfill_id = request.path_params["workflow_id"], request.path_params["backfill_id"]
        back = "/workflows/" + quote(wid)
        if console.user(request) is None:
            return PlainTextResponse("login required", status_code=401)
        form = await request.form()
        verb = str(form.get("verb") or "")
        if verb not in BACKFILL_VERBS:
            return PlainTextResponse(f"unknown backfill action {verb!r}", status_code=400)
        acting = await acting_user(request, f"backfill.{verb}")
        if isinstance(acting, Response):
            return acting
        user, form_fields = acting
        client = await console.client(user)
        what = f"backfill {verb.replace('_', ' ')}"
        if verb == "cancel":
            reason = form_fields.get("reason", "").strip()
            if not reason or len(reason) > MAX_REASON:
                request.session["flash"] = f"{what}: a reason is required (at most {MAX_REASON} characters)"
                return RedirectResponse(back, status_code=303)
            running = form_fields.get("running") == "on"
            return await done(
                request,
                back,
                what,
                lambda: client.cancel_backfill(backfill_id, reason=reason, running=running),
                f"{what} of {backfill_id} by {user.name}"
                + (" (running runs stopped too)" if running else "")
                + f": {reason}",
            )
        return await done(
            request,
            back,
            what,
            lambda: client.backfill_action(verb, backfill_id),
            f"{what} of {backfill_id} by {user.name}",
        )

    # ---------------------------------------------------------------- run
    async def run_data(client: LegatoClient, instance_id: str) -> dict[str, Any]:
        info = await client.get(instance_id, timeline_limit=500)
        info.setdefault("steps", [])
        info.setdefault("timeline", [])
        version = info.get("version")
        if version is None:  # accepted, not yet created by the scheduler: draw the active version
            version = (await client.call("workflow.status", {"workflow_id": info["workflow_id"]}))[
                "active_version"
            ]
        got = await console.definition(client, info["workflow_id"], version)
        return {"instance": info, "graph": graph_of(got["definition"], info.get("steps", []))}

    async def run(request: Request, user: ConsoleUser) -> Response:
        client = await console.client(user)
        data = await run_data(client, request.path_params["instance_id"])
        return console.render(
            request, "run.html", run=data["instance"], data=data, jaeger=config.jaeger_url.rstrip("/")
        )

    async def children(request: Request, user: ConsoleUser) -> Response:
        client = await console.client(user)
        instance_id, step_id = request.path_params["instance_id"], request.path_params["step_id"]
        after = request.query_params.get("after")
        status_filter = request.query_params.get("status") or None
        body: dict[str, Any] = {
            "instance_id": instance_id,
            "step_id": step_id,
            "limit": 100,
            "status": status_filter,
        }
        if after and after.lstrip("-").isdigit():
            body["after"] = int(after)
        got = await client.call("instance.iterations", body)
        return console.render(
            request,
            "children.html",
            instance_id=instance_id,
            step_id=step_id,
            rows=got.get("iterations", []),
            next_after=got.get("next"),
            status=status_filter or "",
        )

    async def run_json(request: Request, user: ConsoleUser) -> Response:
        client = await console.client(user)
        return JSONResponse(await run_data(client, request.path_params["instance_id"]))

    async def run_action(request: Request) -> Response:
        return await _action(request, "instance", request.path_params["instance_id"])

    async def _action(request: Request, kind: str, target: str) -> Response:
        posted = await posted_form(request)
        if isinstance(posted, Response):
            return posted
        user, form = posted
        verb = form.get("verb", "")
        back = {"instance": "/runs/", "workflow": "/workflows/", "dead_letter": "/dead-letters/"}[
            kind
        ] + quote(target)
        verbs = {"instance": RUN_VERBS, "workflow": WORKFLOW_VERBS, "dead_letter": DEAD_LETTER_VERBS}[kind]
        if verb not in verbs:
            return PlainTextResponse(f"unknown action {verb!r}", status_code=400)
        endpoint = f"{kind}.{verb}"
        refused = role_refusal(user, endpoint)
        if refused is not None:
            return refused
        reason = form.get("reason", "").strip()
        if not reason or len(reason) > MAX_REASON:
            request.session["flash"] = f"{verb}: a reason is required (at most {MAX_REASON} characters)"
            return RedirectResponse(back, status_code=303)
        client = await console.client(user)
        try:
            if kind == "dead_letter":
                if not target.isdigit():
                    return PlainTextResponse(f"not a dead letter id: {target!r}", status_code=400)
                await client.call(endpoint, {"id": int(target), "reason": reason})
            elif kind == "instance":
                step = form.get("step_id") or None
                await client.instance_action(verb, target, reason=reason, step_id=step)
            elif verb in ("pause", "resume"):
                await client.call(endpoint, {"workflow_id": target, "reason": reason})
            else:
                await client.workflow_action(verb, target, reason=reason)
        except ApiError as exc:
            if exc.code in ("permission_denied", "forbidden"):
                return PlainTextResponse(str(exc), status_code=403)
            request.session["flash"] = f"{verb} refused: {exc}"
            return RedirectResponse(back, status_code=303)
        except ConnectionError as exc:
            request.session["flash"] = f"{verb} not done: {exc}"
            return RedirectResponse(back, status_code=303)
        request.session["flash"] = f"{verb} requested by {user.name}: {reason}"
        return RedirectResponse(back, status_code=303)

    # ---------------------------------------------------------------- dead letters
    async def dead_letters(request: Request, user: ConsoleUser) -> Response:
        client = await console.client(user)
        body: dict[str, Any] = {"limit": 50, "include_done": bool(request.query_params.get("all"))}
        before = request.query_params.get("before")
        if before and before.isdigit():
            body["before"] = int(before)
        got = await client.call("dead_letter.list", body)
        return console.render(
            request,
            "dead_letters.html",
            rows=got.get("dead_letters", []),
            next_before=got.get("next"),
            show_all=body["include_done"],
        )

    async def dead_letter(request: Request, user: ConsoleUser) -> Response:
        client = await console.client(user)
        ident = request.path_params["dead_letter_id"]
        if not ident.isdigit():
            return console.render(request, "error.html", 404, error=f"not a dead letter id: {ident!r}")
        got = await client.call("dead_letter.get", {"id": int(ident)})
        return console.render(request, "dead_letter.html", dl=got)

    async def dead_letter_action(request: Request) -> Response:
        return await _action(request, "dead_letter", request.path_params["dead_letter_id"])

    # ---------------------------------------------------------------- signals
    async def signals(request: Request, user: ConsoleUser) -> Response:
        client = await console.client(user)
        recent, rejected, pending = await asyncio.gather(
            client.call("signal.list", {"limit": 50}),
            client.call("signal.list", {"rejected": True, "limit": 50}),
            client.call("signal.pending", {"limit": 100}),
        )
        lineage = None
        name, sid = request.query_params.get("name"), request.query_params.get("id")
        run_id = request.query_params.get("instance_id")
        if name and sid:
            lineage = await client.call("signal.lineage", {"name": name, "id": sid})
        elif run_id:
            lineage = await client.call("signal.lineage", {"instance_id": run_id})
        return console.render(
            request,
            "signals.html",
            recent=recent.get("signals", []),
            rejected=rejected.get("signals", []),
            pending=pending,
            lineage=lineage,
            lineage_title=f"{name} {sid}" if name and sid else f"run {run_id}",
            lineage_graph=lineage_graph(lineage.get("signal") or lineage.get("run") or {})
            if lineage
            else None,
            lineage_json=json.dumps(lineage, indent=2, default=str) if lineage else None,
        )

    # ---------------------------------------------------------------- live updates
    def stream(request: Request, produce: Callable[[], AsyncIterator[str]]) -> Response:
        if console.streams >= MAX_STREAMS:
            return PlainTextResponse("too many live streams; try again later", status_code=503)

        async def body() -> AsyncIterator[str]:
            console.streams += 1
            try:
                yield "retry: 2000\n\n"
                async for chunk in produce():
                    yield chunk
            finally:
                console.streams -= 1

        return StreamingResponse(body(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    async def run_events(request: Request, user: ConsoleUser) -> Response:
        client = await console.client(user)
        instance_id = request.path_params["instance_id"]
        first = await run_data(client, instance_id)
        workflow_id = first["instance"]["workflow_id"]

        async def produce() -> AsyncIterator[str]:
            last = ""
            deadline = time.monotonic() + STREAM_SECONDS
            async with Changes(client, workflow_id, instance_id=instance_id) as changes:
                data: dict[str, Any] | None = first
                refreshed = time.monotonic()
                dirty = False
                while time.monotonic() < deadline:
                    if data is not None:
                        text = json.dumps(data, default=str)
                        if text != last:
                            yield f"event: run\ndata: {text}\n\n"
                            last = text
                        else:
                            yield ": idle\n\n"
                        status = data["instance"]
                        active = status["status"] not in TERMINAL or any(
                            s["status"] not in TERMINAL for s in status.get("steps", [])
                        )
                        data = None
                    # Woken by the run's lifecycle events; the tick only covers a missed event. A step's
                    # new status goes to the browser at once; the whole run is re-read at most
                    # REFRESH_HZ times a second (a foreach's thousands of child runs must not make every
                    # open page re-read the run nonstop).
                    due = refreshed + 1 / REFRESH_HZ - time.monotonic()
                    woke = await changes.wait(max(0.02, due) if dirty else (5.0 if active else 30.0))
                    news = changes.take()
                    if news:
                        yield f"event: steps\ndata: {json.dumps(news)}\n\n"
                    dirty = dirty or woke
                    if not woke or (dirty and time.monotonic() - refreshed >= 1 / REFRESH_HZ):
                        await asyncio.sleep(0.02)  # coalesce a burst of changes into one read
                        refreshed = time.monotonic()
                        dirty = False
                        try:
                            data = await run_data(client, instance_id)
                        except (ApiError, ConnectionError) as exc:  # the API is away: say so, try again
                            yield f"event: trouble\ndata: {json.dumps(str(exc))}\n\n"
                            await asyncio.sleep(2.0)

        return stream(request, produce)

    async def fleet_events(request: Request, user: ConsoleUser) -> Response:
        client = await console.client(user)
        workflow_id = request.query_params.get("workflow") or None

        async def produce() -> AsyncIterator[str]:
            deadline = time.monotonic() + STREAM_SECONDS
            async with Changes(client, workflow_id, steps=False) as changes:
                while time.monotonic() < deadline:
                    if await changes.wait(15.0):
                        yield f"event: changed\ndata: {time.time()}\n\n"
                        await asyncio.sleep(1.0)  # at most one refresh a second
                    else:
                        yield ": idle\n\n"

        return stream(request, produce)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await console.gateway.close()

    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", page(fleet)),
        Route("/workflows/{workflow_id}", page(workflow)),
        Route("/workflows/{workflow_id}/action", workflow_action, methods=["POST"]),
        Route("/workflows/{workflow_id}/strategy", workflow_strategy, methods=["POST"]),
        Route("/workflows/{workflow_id}/backfills/{backfill_id}/action", backfill_action, methods=["POST"]),
        Route("/runs/{instance_id}.json", page(run_json)),
        Route("/runs/{instance_id}", page(run)),
        Route("/runs/{instance_id}/action", run_action, methods=["POST"]),
        Route("/runs/{instance_id}/children/{step_id}", page(children)),
        Route("/signals", page(signals)),
        Route("/dead-letters", page(dead_letters)),
        Route("/dead-letters/{dead_letter_id}", page(dead_letter)),
        Route("/dead-letters/{dead_letter_id}/action", dead_letter_action, methods=["POST"]),
        Route("/events/runs/{instance_id}", page(run_events)),
        Route("/events/fleet", page(fleet_events)),
        Route("/healthz", lambda request: PlainTextResponse(f"ok\nlive streams: {console.streams}\n")),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(
            SessionMiddleware,
            secret_key=config.session_secret or secrets.token_urlsafe(32),
            session_cookie="legato_session",
            max_age=int(config.session_hours * 3600),
            same_site="strict",
            https_only=config.secure_cookies,
        ),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.console = console
    return app
