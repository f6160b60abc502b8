"""Which SQL statements a bench phase ran, by session kind, from the embedded Postgres's log.

``profile.py --statements`` starts Postgres with ``STATEMENT_LOG`` (every statement logged with its
duration and the session's application name), brackets a phase with two marker statements and counts
what ran between them: how many times each statement ran per run of the phase, and its total server
time. Logging every statement costs Postgres CPU, so the phase's CPU figures are not comparable then.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Settings of the embedded Postgres that log every statement, its duration and its session's name.
# Bind parameters are not logged (``log_parameter_max_length``): only statements' text.
STATEMENT_LOG = {
    "log_min_duration_statement": "0",
    "log_line_prefix": "%m [%a] ",
    "log_parameter_max_length": "0",
}
MARK = "legato-bench-mark"

_ENTRY = re.compile(
    r"^\S+ \S+ \S+ \[(?P<app>.*)\] LOG:  duration: (?P<ms>[\d.]+) ms  "
    r"(?:statement|execute [^:]*): (?P<sql>.*)$"
)


def mark_sql(label: str) -> str:
    """The marker statement of a phase's edge (``label``: a fixed word of the bench's, never input)."""
    if not re.fullmatch(r"[a-z0-9-]+", label):
        raise ValueError(f"marker label {label!r}: lowercase letters, digits and dashes only")
    return f"SELECT '{MARK} {label}'"


@dataclass
class Tally:
    count: int = 0
    ms: float = 0.0


def statements_between(
    lines: Iterable[str], start: str, end: str, width: int = 90
) -> dict[tuple[str, str], Tally]:
    """Statements logged after the marker ``start`` and before ``end``, by (session kind, the statement's
    first ``width`` characters, whitespace collapsed). The session kind is the application name's first
    word (a scheduler's sessions carry its incarnation after it)."""
    entries: list[list[str]] = []  # [app, ms, sql]
    for line in lines:
        m = _ENTRY.match(line)
        if m:
            entries.append([m["app"], m["ms"], m["sql"]])
        elif entries and line.startswith(("\t", " ")):
            entries[-1][2] += " " + line.strip()
    out: dict[tuple[str, str], Tally] = {}
    inside = False
    for app, ms, sql in entries:
        text = " ".join(sql.split())
        if text == mark_sql(start):
            inside = True
            continue
        if text == mark_sql(end):
            break
        if inside:
            key = ((app.split() or ["?"])[0], text[:width])
            tally = out.setdefault(key, Tally())
            tally.count += 1
            tally.ms += float(ms)
    return out


def report(tallies: dict[tuple[str, str], Tally], runs: int, top: int = 20) -> None:
    """Print the ``top`` most frequent statements, per run of the phase."""
    total = sum(t.count for t in tallies.values())
    print(f"  SQL statements: {total / max(runs, 1):.1f} per run ({total} for {runs} runs); most frequent:")
    print(f"  {'per run':>8} {'ms/run':>7}  session            statement")
    for (app, sql), t in sorted(tallies.items(), key=lambda kv: -kv[1].count)[:top]:
        print(f"  {t.count / max(runs, 1):8.2f} {t.ms / max(runs, 1):7.3f}  {app:18} {sql}")
