// Run page: the step graph laid out by dagre (vendored), coloured by status and kept live by the
// server-sent events of /events/runs/<id>; a click on a step shows its attempts, outputs, errors, log tail
// and why it waits. Everything shown comes from the server as JSON and is written with textContent.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const NODE_W = 150, NODE_H = 34;
  let data = JSON.parse(document.getElementById("run-data").textContent);
  let selected = null;
  const nodes = new Map(); // step id -> {g, rect}

  function el(tag, attrs, parent) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  function drawGraph() {
    const box = document.getElementById("graph");
    nodes.clear();
    const g = new dagre.graphlib.Graph();
    g.setGraph({ rankdir: "LR", nodesep: 14, ranksep: 40, marginx: 10, marginy: 10 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const n of data.graph.nodes) g.setNode(n.id, { width: NODE_W, height: NODE_H });
    for (const [a, b] of data.graph.edges) g.setEdge(a, b);
    dagre.layout(g);
    const size = g.graph();
    const svg = el("svg", { width: size.width, height: size.height, viewBox: `0 0 ${size.width} ${size.height}` });
    const defs = el("defs", {}, svg);
    const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a949f" }, marker);
    for (const e of g.edges()) {
      const pts = g.edge(e).points;
      el("path", { class: "edge", d: "M" + pts.map((p) => `${p.x},${p.y}`).join(" L") }, svg);
    }
    for (const n of data.graph.nodes) {
      const pos = g.node(n.id);
      const group = el("g", { class: "node", "data-step": n.id, transform: `translate(${pos.x - NODE_W / 2},${pos.y - NODE_H / 2})` }, svg);
      const rect = el("rect", { width: NODE_W, height: NODE_H, class: "st-" + n.status }, group);
      const title = el("title", {}, group);
      title.textContent = `${n.id} (${n.type}): ${n.status}`;
      const text = el("text", { x: NODE_W / 2, y: NODE_H / 2 }, group);
      const name = n.id.length > 20 ? n.id.slice(0, 19) + "…" : n.id;
      text.textContent = name;
      group.addEventListener("click", () => select(n.id));
      nodes.set(n.id, { group, rect, title, text, name, type: n.type });
    }
    box.replaceChildren(svg);
    window.legatoGraphDrawnAt = performance.now(); // ms since navigation start (bench/web.py reads it)
  }

  // foreach: iterations done / total; loop: iteration / max; subworkflow: its child run's status.
  function countOf(step) {
    const p = step && step.progress;
    if (!p || typeof p !== "object") return "";
    if (p.kind === "foreach") return `${(p.succeeded || 0) + (p.failed || 0) + (p.ignored || 0)}/${p.total}`;
    if (p.kind === "loop") return `${p.index}/${p.max}`;
    return "";
  }

  function stepsById() {
    const out = new Map();
    for (const s of data.instance.steps || []) out.set(s.step_id, s);
    return out;
  }

  function update() {
    const inst = data.instance;
    const badge = document.getElementById("run-status");
    badge.textContent = inst.status;
    badge.className = "badge s-" + inst.status;
    const reason = inst.error || (inst.reason && inst.reason.message) || "";
    document.getElementById("run-reason").textContent = reason;
    drawTrace(inst.trace_id);
    const trigger = inst.trigger || {};
    document.getElementById("run-version").textContent = inst.version == null ? "" : String(inst.version);
    document.getElementById("run-trigger").textContent = (trigger.kind || "") + (trigger.by ? " by " + trigger.by : "");
    document.getElementById("run-created").textContent = (inst.created_at || "").replace("T", " ").slice(0, 19);
    const steps = stepsById();
    let redraw = false;
    for (const n of data.graph.nodes) {
      const shown = nodes.get(n.id);
      if (!shown) { redraw = true; continue; }
      const status = (steps.get(n.id) || n).status || "pending";
      shown.group.dataset.status = status;
      shown.rect.setAttribute("class", "st-" + status);
      shown.title.textContent = `${n.id} (${shown.type}): ${status}`;
      const count = countOf(steps.get(n.id));
      shown.text.textContent = count ? `${shown.name} · ${count}` : shown.name;
      shown.group.classList.toggle("selected", n.id === selected);
    }
    if (redraw) { drawGraph(); return update(); }
    const counts = Object.entries(inst.step_counts || {}).map(([k, v]) => `${v} ${k}`).join(", ");
    document.getElementById("step-counts").textContent = counts ? `(${counts})` : "";
    drawTimeline();
    if (selected) select(selected);
  }

  function drawTrace(traceId) {
    const box = document.getElementById("trace");
    if (!traceId || box.dataset.shown === traceId) return;
    box.dataset.shown = traceId;
    const base = box.dataset.jaeger;
    if (base) {
      const a = document.createElement("a");
      a.id = "jaeger";
      a.href = `${base}/trace/${encodeURIComponent(traceId)}`;
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      a.textContent = "trace in Jaeger";
      box.replaceChildren(a);
    } else {
      box.textContent = "trace " + traceId;
    }
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
  }

  function drawTimeline() {
    const body = document.querySelector("#timeline tbody");
    const rows = [];
    for (const t of data.instance.timeline || []) {
      const tr = document.createElement("tr");
      tr.dataset.event = t.event;
      cell(tr, (t.at || "").replace("T", " ").slice(0, 19));
      cell(tr, t.step_id);
      cell(tr, t.event);
      cell(tr, t.actor || (t.details && t.details.by) || "", "actor");
      cell(tr, t.message, "message");
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function section(panel, title, value) {
    if (value == null || value === "" || (typeof value === "object" && Object.keys(value).length === 0)) return;
    const h = document.createElement("h3");
    h.textContent = title;
    const pre = document.createElement("pre");
    pre.textContent = typeof value === "string" ? value : JSON.stringify(value, null, 2);
    panel.append(h, pre);
  }

  function select(stepId) {
    selected = stepId;
    for (const [id, n] of nodes) n.group.classList.toggle("selected", id === stepId);
    const step = stepsById().get(stepId) || { step_id: stepId, status: "pending", attempts: [] };
    const panel = document.getElementById("step-panel");
    panel.hidden = false;
    panel.replaceChildren();
    const h = document.createElement("h2");
    h.textContent = `${stepId}: ${step.status}`;
    h.id = "step-title";
    panel.appendChild(h);
    section(panel, "Waiting / reason", step.reason && (step.reason.message || step.reason));
    section(panel, "Error", step.error);
    section(panel, "Progress (children)", step.progress);
    section(panel, "Params", step.params);
    section(panel, "Outputs", step.outputs);
    section(panel, "Signals", step.signals);
    for (const a of step.attempts || []) {
      section(panel, `Attempt ${a.attempt} — ${a.status}${a.executor ? " on " + a.executor : ""}`, {
        started_at: a.started_at, ended_at: a.ended_at, exit_code: a.exit_code, failure_kind: a.failure_kind, error: a.error,
      });
      section(panel, `Attempt ${a.attempt} log tail`, a.log_tail);
    }
    const type = (nodes.get(stepId) || {}).type;
    if (["foreach", "loop", "subworkflow"].includes(type)) {
      const link = document.createElement("a");
      link.href = `/runs/${encodeURIComponent(data.instance.instance_id)}/children/${encodeURIComponent(stepId)}`;
      link.textContent = "child runs →";
      panel.appendChild(link);
    }
  }

  drawGraph();
  update();
  if (window.EventSource) {
    const source = new EventSource(`/events/runs/${encodeURIComponent(data.instance.instance_id)}`);
    source.addEventListener("run", (ev) => {
      data = JSON.parse(ev.data);
      update();
    });
    // A step's (or the run's, under "") new status from its lifecycle event, ahead of the run's re-read.
    source.addEventListener("steps", (ev) => {
      const news = JSON.parse(ev.data);
      const steps = stepsById();
      for (const [stepId, status] of Object.entries(news)) {
        if (stepId === "") { data.instance.status = status; continue; }
        const step = steps.get(stepId);
        if (step) step.status = status;
        else (data.instance.steps = data.instance.steps || []).push({ step_id: stepId, status, attempts: [] });
      }
      update();
    });
  }
})();
