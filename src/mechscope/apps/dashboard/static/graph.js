// Attribution graphs (circuit-tracer JSON) and component circuits, laid out by column (token
// position or head) and row (layer); node radius by influence, edge width by |weight|; click pins.
// Hovering a feature node shows its top examples from the feature database linked to its layer
// (the server matches databases to the graph's transcoders by dictionary sha256), or says why none is.
import { el, fmt, svgEl, visibleToken } from "./util.js";
import { exampleRow } from "./features.js";

const COLOURS = { embedding: "#7f8c8d", logit: "#27ae60", "mlp reconstruction error": "#bdc3c7",
  "attention head": "#2980b9", mlp: "#8e44ad", input: "#7f8c8d", logits: "#27ae60" };

function place(graph) {
  const cols = Math.max(1, ...graph.nodes.map((n) => n.col + 1));
  const rows = Math.max(1, ...graph.nodes.map((n) => n.row + 1));
  const colW = Math.max(60, Math.min(140, 1100 / cols)), rowH = Math.max(26, Math.min(60, 700 / rows));
  const left = 60, top = 20, height = top + rows * rowH + 70;
  const cells = new Map();
  for (const n of graph.nodes) {
    const key = `${n.row},${n.col}`;
    cells.set(key, [...(cells.get(key) || []), n]);
  }
  const at = new Map();
  for (const members of cells.values()) {
    members.sort((a, b) => (b.influence ?? 0) - (a.influence ?? 0));
    members.forEach((n, i) => {
      const spread = (colW * 0.8) / Math.max(1, members.length);
      at.set(n.node_id, { x: left + n.col * colW + colW * 0.1 + spread * (i + 0.5),
        y: height - 70 - n.row * rowH - rowH / 2 });
    });
  }
  return { at, width: left + cols * colW + 20, height, colW, rowH, left };
}

function nodeSummary(n) {
  return [n.node_id, n.feature_type, n.clerp, n.influence === null || n.influence === undefined ? "" : `influence ${fmt(n.influence, 4)}`,
    n.activation === null || n.activation === undefined ? "" : `activation ${fmt(n.activation, 4)}`].filter(Boolean);
}

// Why a feature node has no examples to show, in words.
function missingReason(g, n) {
  const link = (g.dictionaries || []).find((d) => String(d.layer) === String(n.layer));
  if (!link) {
    return `No feature database for layer ${n.layer}: this graph records no transcoder hash for that layer ` +
      "(graphs written by `mechscope graph` record one per layer of a per-layer transcoder set).";
  }
  return `No feature database for layer ${n.layer}'s transcoder (sha256 ${String(link.dictionary_sha256).slice(0, 12)}…) ` +
    "is served or embedded. Run `mechscope features collect` on that transcoder and serve the .db with the graph.";
}

// The card beside the graph: what the hovered node is, and a feature's top examples.
function hoverCard(g, source) {
  const card = el("aside", { id: "node-card", class: "card node-card", "data-state": "empty" },
    [el("p", { class: "muted", text: "Hover a node to see its values and, for a feature, its top examples." })]);
  const cache = new Map();
  let shown = 0;
  async function show(n) {
    const ticket = ++shown;
    const isFeature = n.latent !== undefined;
    const head = [el("h3", { text: isFeature ? `Feature ${n.latent} · layer ${n.layer} · position ${n.ctx_idx}` : n.node_id }),
      el("p", { class: "muted", text: nodeSummary(n).join(" · ") })];
    card.setAttribute("data-node-id", n.node_id);
    card.setAttribute("data-db", n.db || "");
    card.setAttribute("data-latent", isFeature ? n.latent : "");
    if (!isFeature) {
      card.setAttribute("data-state", "node");
      card.replaceChildren(...head);
      return;
    }
    if (!n.db) {
      card.setAttribute("data-state", "none");
      card.replaceChildren(...head, el("p", { class: "missing", text: missingReason(g, n) }));
      return;
    }
    card.setAttribute("data-state", "loading");
    card.replaceChildren(...head, el("p", { class: "muted", text: "loading examples…" }));
    const path = `/api/features/${n.db}/latents/${n.latent}`;
    try {
      if (!cache.has(path)) cache.set(path, source.get(path));
      const d = await cache.get(path);
      if (ticket !== shown) return;
      const expl = d.explanations.length ? d.explanations[0].text : "no explanation yet";
      card.replaceChildren(...head,
        el("p", {}, [el("a", { href: `#/features/${n.db}/${n.latent}`, text: `latent ${n.latent} in ${n.db}` }),
          ` · max ${fmt(d.stats.max_act)} · density ${fmt(d.stats.density, 5)} · ${expl}`]),
        el("div", { class: "hover-examples" }, d.examples.top.map((e) => exampleRow(e, d.stats.max_act))));
      card.setAttribute("data-state", "examples");
    } catch (err) {
      if (ticket !== shown) return;
      card.setAttribute("data-state", "error");
      card.replaceChildren(...head, el("p", { class: "error", text: String(err.message || err) }));
    }
  }
  return { card, show };
}

export async function renderGraph(root, source, id) {
  const g = await source.get(`/api/graph/${id}`);
  const { at, width, height, colW, rowH, left } = place(g);
  root.replaceChildren(el("h1", { text: `${g.kind === "circuit" ? "Circuit" : "Attribution graph"} · ${id}` }),
    el("p", { class: "muted", text: `${g.nodes.length} nodes, ${g.links.length} edges. ` +
      "Hover a node or an edge for its values; click nodes to pin them and their neighbours." }));
  const svg = svgEl("svg", { width, height, id: "graph", "data-pinned": "" });
  const hover = hoverCard(g, source);
  const maxW = Math.max(1e-12, ...g.links.map((l) => Math.abs(l.weight)));
  const maxInf = Math.max(1e-12, ...g.nodes.map((n) => n.influence ?? 0));
  const edges = svgEl("g");
  for (const link of g.links) {
    const a = at.get(link.source), b = at.get(link.target);
    if (!a || !b) continue;
    edges.append(svgEl("line", { class: "edge", x1: a.x, y1: a.y, x2: b.x, y2: b.y,
      stroke: link.weight >= 0 ? "#e67e22" : "#2980b9", "stroke-width": 0.4 + 4 * Math.abs(link.weight) / maxW,
      "stroke-opacity": 0.25 + 0.6 * Math.abs(link.weight) / maxW,
      "data-source": link.source, "data-target": link.target, "data-weight": link.weight },
    [svgEl("title", {}, [`${link.source} → ${link.target}: ${fmt(link.weight, 4)}`])]));
  }
  svg.append(edges);
  const pinned = new Set();
  const redraw = () => {
    svg.setAttribute("data-pinned", [...pinned].join(" "));
    const near = new Set(pinned);
    for (const l of g.links) if (pinned.has(l.source) || pinned.has(l.target)) { near.add(l.source); near.add(l.target); }
    for (const node of svg.querySelectorAll(".node")) {
      node.classList.toggle("pinned", pinned.has(node.dataset.nodeId));
      node.classList.toggle("faded", pinned.size > 0 && !near.has(node.dataset.nodeId));
    }
    for (const edge of svg.querySelectorAll(".edge")) {
      edge.classList.toggle("faded", pinned.size > 0 && !pinned.has(edge.dataset.source) && !pinned.has(edge.dataset.target));
    }
  };
  for (const n of g.nodes) {
    const p = at.get(n.node_id);
    const r = 3 + 9 * Math.sqrt(Math.max(0, n.influence ?? 0) / maxInf);
    const tip = nodeSummary(n).join("\n");
    svg.append(svgEl("circle", { class: "node", cx: p.x, cy: p.y, r, fill: COLOURS[n.feature_type] || "#e67e22",
      "data-node-id": n.node_id, "data-influence": n.influence, "data-layer": n.layer, "data-col": n.col,
      "data-latent": n.latent, "data-db": n.db, tabindex: 0,
      onmouseenter: () => hover.show(n), onfocus: () => hover.show(n),
      onclick: () => { pinned.has(n.node_id) ? pinned.delete(n.node_id) : pinned.add(n.node_id); redraw(); } },
    [svgEl("title", {}, [tip])]));
  }
  (g.col_labels || []).forEach((label, c) => {
    const x = left + c * colW + colW / 2, y = height - 50;
    svg.append(svgEl("text", { x, y, transform: `rotate(30 ${x} ${y})` }, [visibleToken(String(label))]));
  });
  (g.row_labels || []).forEach((label, r) => {
    const y = height - 70 - r * rowH - rowH / 2 + 3;
    svg.append(svgEl("text", { x: 4, y }, [String(label)]));
  });
  root.append(el("div", { class: "graph-box" }, [svg, hover.card]));
}
