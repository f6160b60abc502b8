"""The step graph of one body: edges from ``depends_on`` and ``next``, cycles, order, ancestry.

An edge a→b exists when b lists a in ``depends_on`` or a lists b in ``next`` (the latter may carry
a ``when``). The graph must be acyclic; loops are explicit ``loop`` steps.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from legato.core.errors import DefinitionIssue
from legato.core.model import Step
from legato.core.reader import at


@dataclass(slots=True)
class RawEdge:
    """An edge before its condition is compiled: ``when`` is SEL source; ``path`` locates it."""

    source: str
    target: str
    when: str | None
    path: str | None
    """Where the ``when`` sits (``steps[0].next[1].when``), None without one."""


@dataclass(slots=True)
class StepGraph:
    """Nodes in definition order, edges, and (when acyclic) a stable topological order and ancestry."""

    ids: list[str]
    positions: dict[str, int]
    """Step id -> index in the body's ``steps`` list (first occurrence)."""
    edges: list[RawEdge]
    predecessors: dict[str, list[RawEdge]] = field(default_factory=dict)
    successors: dict[str, list[RawEdge]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    ancestors: dict[str, int] = field(default_factory=dict)
    """Step id -> bitmask of its ancestors (bit = index in ``ids``)."""
    acyclic: bool = True

    bits: dict[str, int] = field(default_factory=dict)
    """Step id -> its bit in the ancestor masks (its index in ``ids``)."""

    def upstream(self, step_id: str) -> list[str]:
        """Ids of the ancestors of ``step_id``, in definition order."""
        mask = self.ancestors.get(step_id, 0)
        out = []
        while mask:
            low = mask & -mask
            out.append(self.ids[low.bit_length() - 1])
            mask ^= low
        return out

    def is_upstream(self, ancestor: str, step_id: str) -> bool:
        bit = self.bits.get(ancestor)
        return bit is not None and bool(self.ancestors.get(step_id, 0) >> bit & 1)


def build_graph(steps: Sequence[Step], path: str, issues: list[DefinitionIssue]) -> StepGraph:
    """Build and check one body's graph; problems are appended to ``issues``."""
    positions: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step.id in positions:
            issues.append(
                DefinitionIssue(
                    at(at(path, i), "id"),
                    f"duplicate step id {step.id!r} (also {at(path, positions[step.id])})",
                )
            )
        else:
            positions[step.id] = i
    ids = list(positions)
    edges: dict[tuple[str, str], RawEdge] = {}
    listed_in_next: set[tuple[str, str]] = set()
    first_steps = [steps[i] for i in positions.values()]
    for step in first_steps:
        step_path = at(path, positions[step.id])
        for j, dep in enumerate(step.depends_on):
            if dep not in positions:
                issues.append(DefinitionIssue(at(at(step_path, "depends_on"), j), f"unknown step {dep!r}"))
                continue
            edges.setdefault((dep, step.id), RawEdge(dep, step.id, None, None))
    for step in first_steps:
        step_path = at(path, positions[step.id])
        for j, transition in enumerate(step.next):
            t_path = at(at(step_path, "next"), j)
            if transition.step not in positions:
                issues.append(DefinitionIssue(at(t_path, "step"), f"unknown step {transition.step!r}"))
                continue
            key = (step.id, transition.step)
            if key in listed_in_next:
                issues.append(DefinitionIssue(t_path, f"step {transition.step!r} is listed twice in next"))
                continue
            listed_in_next.add(key)
            # a next entry refines a depends_on edge between the same two steps with its condition
            when_path = at(t_path, "when") if transition.when is not None else None
            edges[key] = RawEdge(step.id, transition.step, transition.when, when_path)
    graph = StepGraph(ids=ids, positions=positions, edges=list(edges.values()))
    graph.bits = {sid: i for i, sid in enumerate(ids)}
    for sid in ids:
        graph.predecessors[sid] = []
        graph.successors[sid] = []
    for edge in graph.edges:
        graph.predecessors[edge.target].append(edge)
        graph.successors[edge.source].append(edge)
    _order(graph, path, issues)
    return graph


def _order(graph: StepGraph, path: str, issues: list[DefinitionIssue]) -> None:
    """Kahn's algorithm, definition order breaking ties; leftovers are cycles (reported) or behind them."""
    pending = {sid: len(graph.predecessors[sid]) for sid in graph.ids}
    ready = [(graph.positions[sid], sid) for sid in graph.ids if pending[sid] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, sid = heapq.heappop(ready)
        order.append(sid)
        for edge in graph.successors[sid]:
            pending[edge.target] -= 1
            if pending[edge.target] == 0:
                heapq.heappush(ready, (graph.positions[edge.target], edge.target))
    graph.order = order
    bit = {sid: 1 << i for sid, i in graph.bits.items()}
    for sid in order:
        mask = 0
        for edge in graph.predecessors[sid]:
            mask |= graph.ancestors.get(edge.source, 0) | bit[edge.source]
        graph.ancestors[sid] = mask
    if len(order) == len(graph.ids):
        return
    graph.acyclic = False
    placed = set(order)
    stuck = [sid for sid in graph.ids if sid not in placed]
    in_cycle: set[str] = set()
    for component, cycle in _cycles(graph, stuck):
        in_cycle.update(component)
        first = min(cycle, key=graph.positions.__getitem__)
        turn = cycle.index(first)
        loop = cycle[turn:] + cycle[:turn] + [first]
        issues.append(
            DefinitionIssue(
                at(path, graph.positions[first]),
                f"dependency cycle: {' -> '.join(loop)} (the graph must be acyclic; repeat work with a loop step)",
            )
        )
    for sid in stuck:
        if sid not in in_cycle:
            issues.append(
                DefinitionIssue(
                    at(path, graph.positions[sid]),
                    f"step {sid!r} is unreachable from any root step: it depends on a dependency cycle",
                )
            )


def _cycles(graph: StepGraph, nodes: list[str]) -> list[tuple[list[str], list[str]]]:
    """Each cyclic strongly connected component among ``nodes`` (Tarjan, iterative), with one cycle in it."""
    allowed = set(nodes)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            successors = [e.target for e in graph.successors[node] if e.target in allowed]
            if child < len(successors):
                work.append((node, child + 1))
                nxt = successors[child]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                self_loop = any(e.target == node for e in graph.successors[node])
                if len(component) > 1 or self_loop:
                    components.append(component)
    return [(c, _cycle_path(graph, set(c))) for c in components]


def _cycle_path(graph: StepGraph, component: set[str]) -> list[str]:
    """The shortest cycle through the component's first step (in definition order), by BFS."""
    start = min(component, key=graph.positions.__getitem__)
    parent: dict[str, str] = {}
    queue = [start]
    for node in queue:
        for edge in graph.successors[node]:
            nxt = edge.target
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                path.reverse()
                return path
            if nxt in component and nxt not in parent and nxt != start:
                parent[nxt] = node
                queue.append(nxt)
    return [start]
