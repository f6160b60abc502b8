"""A hypothesis strategy of valid workflows built with legato.flow, using every step type and option."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from legato import flow

# Text that stays plain text wherever it lands (no `${`, which would make it a template).
SAFE_TEXT = st.text(st.characters(blacklist_characters="$", blacklist_categories=("Cs",)), max_size=12)
FREE_TEXT = st.text(max_size=20)  # descriptions: anything, control characters included
LOWER = "abcdefghijklmnopqrstuvwxyz"


def word(first: str, rest: str, size: int) -> st.SearchStrategy[str]:
    return st.builds(str.__add__, st.sampled_from(first), st.text(st.sampled_from(rest), max_size=size))


NAME = word(LOWER, LOWER + "0123456789_-", 8)
IDENT = word(LOWER + "_", LOWER + "0123456789_", 8).filter(lambda n: not n.startswith("__"))
SIGNAL = st.builds(
    lambda a, b: a + b, word(LOWER, LOWER + "0123456789_", 6), st.sampled_from(["", ".v1", ".done"])
)
DURATION = st.one_of(
    st.sampled_from(["1s", "90s", "10m", "1h30m", "2h", "1d", "250ms"]),
    st.integers(1, 86400),
    st.sampled_from([0.5, 1.25, 3600.0]),
    st.integers(1, 3600).map(lambda s: timedelta(seconds=s)),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**9), 10**9) | st.floats(-1e9, 1e9) | SAFE_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(IDENT, inner, max_size=3),
    max_leaves=6,
)
# Values of params and signal fields: literals, templates and expressions over the param `n`.
VALUE = st.one_of(
    JSON, st.just("${params.n}"), st.just("n is ${params.n + 1}"), st.just(flow.Expr("params.n * 2"))
)
OPTIONAL = st.none


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def params(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {"n": flow.Param(type="int", default=draw(st.integers(0, 100)))}
    kinds: dict[str, st.SearchStrategy[Any]] = {
        "string": SAFE_TEXT,
        "int": st.integers(-(10**6), 10**6),
        "float": st.floats(-1e6, 1e6),
        "bool": st.booleans(),
        "date": st.dates().map(str),
        "datetime": st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
        "duration": st.integers(0, 10**6),
        "list": st.lists(st.integers() | SAFE_TEXT, max_size=3),
        "map": st.dictionaries(IDENT, st.integers() | SAFE_TEXT, max_size=3),
        "secret": NAME,
    }
    # Not the names foreach steps bind (``as``): a param they would shadow is refused by validation.
    free = IDENT.filter(lambda n: n not in ("n", "item", "day", "x", "row"))
    for name in draw(st.lists(free, max_size=4, unique=True)):
        kind = draw(st.sampled_from(sorted(kinds)))
        shape = draw(st.sampled_from(["default", "shorthand", "expr", "required", "fixed", "values"]))
        default = draw(kinds[kind])
        description = draw(maybe(FREE_TEXT))
        if shape == "shorthand" and kind in ("string", "int", "float", "bool", "list", "map"):
            out[name] = default
        elif shape == "expr" and kind == "int":
            out[name] = flow.Param(type="int", expr="params.n + 1", description=description)
        elif shape == "required":
            out[name] = flow.Param(type=kind, required=True, description=description)
        elif shape == "fixed":
            out[name] = flow.Param(type=kind, default=default, mode="fixed")
        elif shape == "values" and kind in ("string", "int"):
            out[name] = flow.Param(type=kind, default=default, values=[default, draw(kinds[kind])])
        else:
            out[name] = flow.Param(type=kind, default=default, description=description)
    return out


@st.composite
def cron(draw: st.DrawFn, trigger_id: str) -> flow.Cron:
    catch_up = draw(maybe(st.sampled_from(["all", "latest", "none"])))
    start = draw(maybe(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1))))
    end = None
    if start is not None and draw(st.booleans()):
        end = start + timedelta(days=draw(st.integers(1, 400)))
    return flow.Cron(
        draw(st.sampled_from(["0 2 * * *", "*/5 * * * *", "@daily", "30 6 * * MON-FRI", "0 0 1 JAN *"])),
        id=trigger_id if draw(st.booleans()) else None,
        timezone=draw(maybe(st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo"]))),
        params=draw(maybe(st.fixed_dictionaries({"n": st.just("${hour(trigger.fire_time)}")}))),
        catch_up=catch_up,
        max_catch_up=draw(st.integers(1, 10_000))
        if catch_up in (None, "all") and draw(st.booleans())
        else None,
        start=start.date() if start is not None and end is None and draw(st.booleans()) else start,
        end=end,
        jitter=draw(maybe(st.sampled_from(["0s", "30s", "2m", 59.5, "1h"]))),
    )


def match(templates: bool) -> st.SearchStrategy[dict[str, Any]]:
    scalar = st.integers(-100, 100) | SAFE_TEXT | st.booleans() | st.none()
    if templates:
        scalar = scalar | st.just("${params.n}")
    predicate = st.one_of(
        scalar,
        st.builds(lambda op, v: {op: v}, st.sampled_from(["=", "!="]), scalar),
        st.builds(lambda op, v: {op: v}, st.sampled_from([">", ">=", "<", "<="]), st.integers() | SAFE_TEXT),
        st.lists(scalar, min_size=1, max_size=3).map(lambda vs: {"in": vs}),
    )
    return st.dictionaries(IDENT, predicate, max_size=3)


@st.composite
def signals(draw: st.DrawFn, trigger_id: str) -> flow.Signals:
    names = draw(st.lists(SIGNAL, min_size=1, max_size=3, unique=True))
    join = draw(st.lists(st.sampled_from(["date", "region"]), min_size=1, max_size=2, unique=True))
    legs: list[Any] = []
    for name in names:
        predicates = {k: v for k, v in draw(match(templates=False)).items() if k not in join}
        if not predicates and draw(st.booleans()):
            legs.append(name)
        else:
            legs.append(flow.Signal(name, predicates or None, draw(maybe(st.just("signal.date != ''")))))
    return flow.Signals(
        *legs,
        id=trigger_id if draw(st.booleans()) else None,
        join=join if len(names) > 1 or draw(st.booleans()) else None,
        expiry=draw(maybe(st.sampled_from(["1h", "3d", 7 * 86400, 600]))),
        since=draw(maybe(st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()))),
        params=draw(maybe(st.just({"n": "${len(trigger.id)}"}))),
    )


@st.composite
def retry(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(st.integers(0, 99))
    backoff: Any = None
    kind = draw(st.sampled_from(["none", "exponential", "fixed"]))
    if kind == "fixed":
        backoff = flow.Backoff(type="fixed", initial=draw(maybe(st.sampled_from(["1s", 30, "5m"]))))
    elif kind == "exponential":
        initial = draw(st.sampled_from([1, 2.5, 10]))
        backoff = flow.Backoff(
            type=draw(maybe(st.just("exponential"))),
            initial=initial,
            max=draw(maybe(st.sampled_from([60, "10m", "1h"]))),
            multiplier=draw(maybe(st.sampled_from([1.0, 1.5, 2, 3]))),
        )
    return flow.Retry(
        error=draw(maybe(st.integers(0, 99))),
        platform=draw(maybe(st.integers(0, 99))),
        timeout=draw(maybe(st.integers(0, 99))),
        backoff=backoff,
    )


class Ids:
    """Unique step ids across the whole definition."""

    def __init__(self) -> None:
        self.count = 0

    def next(self) -> str:
        self.count += 1
        return f"s{self.count}"


@st.composite
def common(draw: st.DrawFn, step_id: str, earlier: list[str], dynamic: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["description"] = draw(FREE_TEXT)
    if draw(st.booleans()):
        out["params"] = draw(st.dictionaries(IDENT.filter(lambda n: n != "n"), VALUE, max_size=3))
    if earlier and draw(st.booleans()):
        key = draw(st.sampled_from(["after", "depends_on"]))
        out[key] = draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=2, unique=True))
    if not dynamic and draw(st.booleans()):
        out["retry"] = draw(retry())
    if draw(st.booleans()):
        out["timeout"] = draw(DURATION)
    if draw(st.booleans()):
        out["on_failure"] = draw(st.sampled_from(["fail", "ignore", "finish_others_then_fail"]))
    if draw(st.booleans()):
        out["queue"] = draw(NAME)
    if draw(st.booleans()):
        out["concurrency_tags"] = draw(st.lists(NAME, max_size=2, unique=True))
    if draw(st.booleans()):
        waits = draw(st.lists(SIGNAL, max_size=2, unique=True))
        out["wait_for_signals"] = [
            w if draw(st.booleans()) else flow.Signal(w, draw(match(templates=True))) for w in waits
        ]
    if draw(st.booleans()):
        names = draw(st.lists(SIGNAL, max_size=2, unique=True))
        out["publish_signals"] = [
            p if draw(st.booleans()) else flow.Publish(p, {"date": "${params.n}", "k": draw(JSON)})
            for p in names
        ]
    if draw(st.booleans()):
        out["outputs"] = draw(st.lists(IDENT, max_size=3, unique=True))
    return out


COMMAND = st.text(st.sampled_from("abc xyz-_.,:=0123456789"), min_size=1, max_size=20).map(
    lambda t: "echo " + t
)


@st.composite
def leaf(draw: st.DrawFn, step_id: str, options: dict[str, Any]) -> Any:
    kind = draw(
        st.sampled_from(
            [
                "noop",
                "sleep",
                "shell",
                "python",
                "http",
                "sql",
                "notebook",
                "container",
                "plugin",
                "subworkflow",
            ]
        )
    )
    if kind == "noop":
        return flow.Noop(step_id, **options)
    if kind == "sleep":
        return flow.Sleep(step_id, draw(DURATION | st.just("${params.n}") | st.just(0)), **options)
    if kind == "shell":
        return flow.Shell(
            step_id,
            draw(COMMAND | st.just("echo ${params.n} \"${params.n}\" '${params.n}'")),
            env=draw(
                maybe(
                    st.dictionaries(
                        word("ABCXYZ_", "ABCXYZ0123456789_", 6),
                        COMMAND | st.just("${params.n}"),
                        max_size=2,
                    )
                )
            ),
            artifacts=draw(
                maybe(
                    st.lists(
                        st.sampled_from(["out.csv", "reports/*.html", "a/b/c.txt"]), max_size=2, unique=True
                    )
                )
            ),
            **options,
        )
    if kind == "python":
        return flow.Python(
            step_id, draw(st.sampled_from(["pkg.mod:run", "tasks:load", "a.b.c:d_e"])), **options
        )
    if kind == "http":
        return flow.Http(
            step_id,
            draw(st.sampled_from(["https://example.com/x", "http://localhost:8080/h?n=${params.n}"])),
            method=draw(maybe(st.sampled_from(["GET", "POST", "put", "DELETE", "HEAD", "OPTIONS", "PATCH"]))),
            headers=draw(
                maybe(st.dictionaries(st.sampled_from(["X-A", "Authorization"]), SAFE_TEXT, max_size=2))
            ),
            body=draw(JSON),
            success_status=draw(maybe(st.lists(st.integers(100, 599), max_size=3) | st.integers(200, 299))),
            **options,
        )
    if kind == "sql":
        statements = draw(
            st.lists(
                st.sampled_from(["select 1", "select $1::int", "update t set a = $1"]), min_size=1, max_size=3
            )
        )
        one = draw(st.booleans())
        shape: dict[str, Any] = (
            {"sql": statements[0], "args": draw(maybe(st.just(["${params.n}"])))}
            if one
            else {
                "statements": [
                    s if draw(st.booleans()) else flow.Statement(s, draw(maybe(st.lists(JSON, max_size=2))))
                    for s in statements
                ]
            }
        )
        return flow.Sql(
            step_id,
            draw(st.sampled_from(["warehouse", "pg-main"])),
            transaction=draw(maybe(st.booleans())),
            result=draw(maybe(st.sampled_from(["none", "first", "rows"]))),
            max_rows=draw(maybe(st.integers(1, 10_000))),
            **shape,
            **options,
        )
    if kind == "notebook":
        return flow.Notebook(
            step_id,
            "notebooks/report.ipynb",
            kernel=draw(maybe(st.sampled_from(["python3", "ir"]))),
            **options,
        )
    if kind == "container":
        mounts = draw(st.lists(st.sampled_from(["/data", "/cache", "/opt/x y"]), max_size=2, unique=True))
        return flow.Container(
            step_id,
            draw(st.sampled_from(["alpine:3.20", "ghcr.io/org/tool@sha256:" + "a" * 64, "busybox"])),
            command=draw(maybe(st.lists(COMMAND | st.just("${params.n}") | st.integers(0, 9), max_size=3))),
            env=draw(maybe(st.dictionaries(word("ABCXYZ_", "ABCXYZ0123456789_", 6), COMMAND, max_size=2))),
            mounts=[flow.Mount(m, "/mnt" + m, draw(maybe(st.booleans()))) for m in mounts] or None,
            workdir=draw(maybe(st.sampled_from(["/work", "/mnt/data"]))),
            pull=draw(maybe(st.sampled_from(["missing", "never", "always"]))),
            artifacts=draw(
                maybe(st.lists(st.sampled_from(["out.csv", "logs/*.txt"]), max_size=2, unique=True))
            ),
            **options,
        )
    if kind == "plugin":  # examples/plugin's word_count, installed by `make install`
        return flow.Step("word_count", step_id, text=draw(SAFE_TEXT | st.just("${params.n}")), **options)
    return flow.Subworkflow(step_id, draw(workflow_ref()), **options)


@st.composite
def workflow_ref(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from(["child", "etl.load", "x-1"]))
    if draw(st.booleans()):
        return name
    return flow.WorkflowRef(
        name,
        version=draw(maybe(st.sampled_from(["active", 1, 7]))),
        params=draw(maybe(st.dictionaries(IDENT, VALUE, max_size=2))),
        apply_run_strategy=draw(maybe(st.booleans())),
    )


@st.composite
def body(draw: st.DrawFn, ids: Ids, depth: int) -> list[Any]:
    out: list[Any] = []
    for _ in range(draw(st.integers(1, 4 if depth == 0 else 2))):
        step_id = ids.next()
        earlier = [s.id for s in out]
        dynamic = depth < 2 and draw(st.integers(0, 5)) == 0
        options = draw(common(step_id, earlier, dynamic))
        if not dynamic:
            out.append(draw(leaf(step_id, options)))
        elif draw(st.booleans()):
            sub = draw(st.booleans())
            out.append(
                flow.Foreach(
                    step_id,
                    draw(
                        st.sampled_from(
                            [
                                "range(params.n % 5)",
                                "[1, 2, 3]",
                                "date_range(date('2026-01-01'), date('2026-01-03'))",
                            ]
                        )
                    ),
                    as_=draw(
                        maybe(st.sampled_from(["item", "day"]))
                        if depth == 0
                        else st.sampled_from(["x", "row"])
                    ),
                    concurrency=draw(maybe(st.integers(1, 10_000))),
                    iteration_on_failure=draw(
                        maybe(st.sampled_from(["fail", "ignore", "finish_others_then_fail"]))
                    ),
                    steps=None if sub else draw(body(ids, depth + 1)),
                    subworkflow=draw(workflow_ref()) if sub else None,
                    **options,
                )
            )
        else:
            out.append(
                flow.Loop(
                    step_id,
                    while_=draw(st.sampled_from(["iteration.index < 3", "params.n > iteration.index"])),
                    max_iterations=draw(st.integers(1, 10_000)),
                    steps=draw(body(ids, depth + 1)),
                    **options,
                )
            )
    # edges forward with `next`, sometimes conditional
    for i, step in enumerate(out[:-1]):
        if draw(st.integers(0, 3)) == 0:
            target = out[draw(st.integers(i + 1, len(out) - 1))].id
            when = draw(maybe(st.just("params.n > 1")))
            edges = [target if when is None and draw(st.booleans()) else flow.Next(target, when)]
            object.__setattr__(step, "next", edges)
    return out


@st.composite
def workflows(draw: st.DrawFn) -> flow.Workflow:
    """A valid workflow using a random selection of every option the definition model has."""
    strategy = draw(
        st.sampled_from(
            [
                None,
                flow.Sequential(),
                flow.StrictSequential(),
                flow.FirstOnly(),
                flow.LastOnly(),
                flow.SerialLatestOnly(),
            ]
        )
        | st.builds(flow.Parallel, maybe(st.integers(0, 1000)))
        | st.sampled_from(["sequential", "last_only", {"type": "parallel", "max_concurrency": 3}])
    )
    trigger_ids = draw(st.lists(NAME, max_size=3, unique=True))
    triggers = [draw(cron(t) if draw(st.booleans()) else signals(t)) for t in trigger_ids]
    wf = flow.Workflow(
        draw(word(LOWER + "0123456789", LOWER + "0123456789_.-", 20)),
        description=draw(maybe(FREE_TEXT)),
        owner=draw(maybe(NAME)),
        tags=draw(maybe(st.lists(NAME, max_size=3, unique=True))),
        criticality=draw(maybe(st.sampled_from(["critical", "high", "medium", "low"]))),
        run_strategy=strategy,
        step_concurrency=draw(maybe(st.integers(1, 1000))),
        timeout=draw(maybe(DURATION)),
        params=draw(params()),
        triggers=triggers,
    )
    return wf.step(*draw(body(Ids(), 0)))
