// Signal lineage as a graph (signal -> runs it started or unblocked -> signals they published -> …),
// laid out by dagre; each node links to its run or signal. Labels are set with textContent.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 220, H = 34;
  const data = JSON.parse(document.getElementById("lineage-data").textContent);
  const box = document.getElementById("lineage-graph");
  function el(tag, attrs, parent) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 12, ranksep: 50, marginx: 10, marginy: 10 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of data.nodes) g.setNode(n.id, { width: W, height: H });
  for (const [a, b] of data.edges) g.setEdge(a, b);
  dagre.layout(g);
  const size = g.graph();
  const svg = el("svg", { width: size.width, height: size.height, id: "graph-lineage" });
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" }, el("defs", {}, svg));
  el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a949f" }, marker);
  for (const e of g.edges()) {
    el("path", { class: "edge", d: "M" + g.edge(e).points.map((p) => `${p.x},${p.y}`).join(" L") }, svg);
  }
  for (const n of data.nodes) {
    const pos = g.node(n.id);
    const link = el("a", { href: n.href, class: "lineage-node kind-" + n.kind, "data-node": n.id }, svg);
    const group = el("g", { class: "node", transform: `translate(${pos.x - W / 2},${pos.y - H / 2})` }, link);
    el("rect", { width: W, height: H, class: n.kind === "run" ? "st-" + n.status : "st-signal" }, group);
    const text = el("text", { x: W / 2, y: H / 2 }, group);
    text.textContent = n.label.length > 30 ? n.label.slice(0, 29) + "…" : n.label;
    el("title", {}, group).textContent = n.label;
  }
  box.replaceChildren(svg);
})();
