// Head detector scores as a layer x head grid, one grid per detector, labelled heads outlined.
import { el, fmt, heat, svgEl } from "./util.js";

const SKIP = new Set(["layer", "head", "label", "labels"]);

export async function renderHeads(root, source, id) {
  const t = await source.get(`/api/heads/${id}`);
  root.replaceChildren(el("h1", { text: `Heads · ${id}` }));
  const detectors = Object.keys(t.heads[0]).filter((k) => !SKIP.has(k) && typeof t.heads[0][k] === "number");
  const byKey = new Map(t.heads.map((h) => [`${h.layer},${h.head}`, h]));
  const cell = 22, left = 40, top = 24;
  for (const detector of detectors) {
    const values = t.heads.map((h) => h[detector]);
    const lo = Math.min(...values), hi = Math.max(...values);
    const svg = svgEl("svg", { width: left + cell * t.n_heads + 10, height: top + cell * t.n_layers + 10,
      class: "heads", "data-detector": detector });
    for (let h = 0; h < t.n_heads; h++) svg.append(svgEl("text", { x: left + h * cell + 6, y: top - 6 }, [String(h)]));
    for (let l = 0; l < t.n_layers; l++) {
      svg.append(svgEl("text", { x: left - 6, y: top + l * cell + 15, "text-anchor": "end" }, [String(l)]));
      for (let h = 0; h < t.n_heads; h++) {
        const row = byKey.get(`${l},${h}`);
        if (!row) continue;
        const v = row[detector];
        const label = row.label || (row.labels || []).join(" ") || "";
        svg.append(svgEl("rect", { class: "head", onclick: () => { location.hash = `#/prompt?layer=${l}&head=${h}&run=1`; }, x: left + h * cell, y: top + l * cell, width: cell - 1,
          height: cell - 1, fill: heat(hi > lo ? (v - lo) / (hi - lo) : 0), stroke: label ? "#333" : "none",
          "data-layer": l, "data-head": h, "data-value": v, "data-label": label },
        [svgEl("title", {}, [`L${l}H${h} ${detector} ${fmt(v, 4)}${label ? "  · " + label : ""}`])]));
      }
    }
    root.append(el("div", { class: "card" }, [el("h2", { text: detector }), svg]));
  }
}
