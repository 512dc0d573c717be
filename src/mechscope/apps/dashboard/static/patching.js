// Patching heatmaps from `mechscope patch --json`: one panel per 2-D slice, axis labels from the result.
import { diverging, el, fmt, svgEl, visibleToken } from "./util.js";

function panels(result) {
  const { scores, by, labels } = result;
  if (by.length === 1) return [{ title: null, rows: [""], cols: labels[0], data: [scores], rowAxis: "", colAxis: by[0], prefix: [] }];
  if (by.length === 2) return [{ title: null, rows: labels[0], cols: labels[1], data: scores, rowAxis: by[0], colAxis: by[1], prefix: [] }];
  return labels[0].map((label, i) => ({ title: `${by[0]} ${label}`, rows: labels[1], cols: labels[2], data: scores[i],
    rowAxis: by[1], colAxis: by[2], prefix: [i] }));
}

function heatmap(panel, limit) {
  const cell = 22, left = 70, top = 20, bottom = 90;
  const w = left + cell * panel.cols.length + 10, h = top + cell * panel.rows.length + bottom;
  const svg = svgEl("svg", { width: w, height: h, class: "heatmap" });
  panel.rows.forEach((rowLabel, r) => {
    svg.append(svgEl("text", { x: left - 4, y: top + r * cell + cell * 0.65, "text-anchor": "end" }, [String(rowLabel)]));
    panel.cols.forEach((colLabel, c) => {
      const value = panel.data[r][c];
      const tip = `${panel.rowAxis} ${rowLabel}, ${panel.colAxis} ${JSON.stringify(colLabel)}: ${value === null ? "n/a" : fmt(value, 4)}`;
      svg.append(svgEl("rect", { class: "cell", x: left + c * cell, y: top + r * cell, width: cell - 1, height: cell - 1,
        fill: value === null ? "#ccc" : diverging(value, limit), "data-index": [...panel.prefix, r, c].join(","),
        "data-row": r, "data-col": c, "data-score": value }, [svgEl("title", {}, [tip])]));
    });
  });
  panel.cols.forEach((colLabel, c) => {
    const x = left + c * cell + cell * 0.6, y = top + panel.rows.length * cell + 6;
    svg.append(svgEl("text", { x, y, transform: `rotate(60 ${x} ${y})`, class: "col-label" },
      [visibleToken(String(colLabel))]));
  });
  svg.append(svgEl("text", { x: 2, y: 12 }, [`${panel.rowAxis} ↓  ${panel.colAxis} →`]));
  return svg;
}

export function renderHeatmapInto(root, result) {
  const flat = [result.scores].flat(Infinity).filter((x) => x !== null);
  const limit = Math.max(1e-12, ...flat.map((x) => Math.abs(x)));
  for (const panel of panels(result)) {
    if (panel.title) root.append(el("h2", { text: panel.title }));
    root.append(heatmap(panel, limit));
  }
}

export async function renderPatch(root, source, id) {
  const r = await source.get(`/api/patch/${id}`);
  root.replaceChildren(el("h1", { text: `Patching · ${id}` }),
    el("p", { class: "muted", id: "patch-info", "data-site": r.site, "data-by": r.by.join(",") },
      `${r.method} patching of ${r.site} (${r.mode}); clean ${fmt(r.clean)}, corrupt ${fmt(r.corrupt)}; ` +
      "colour: normalized recovery, red positive, blue negative"));
  renderHeatmapInto(root, r);
}
