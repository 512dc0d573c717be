// Feature list (server-side paging, sorts, full-text search) and the page of one latent.
import { el, fmt, heat, svgEl, visibleToken } from "./util.js";
import { latentsPath } from "./source.js";

const PAGE = 50;
const SORTS = [["latent", "latent"], ["density", "density"], ["max_act", "max act"], ["score", "score"]];

export async function renderFeatureList(root, source, db, params) {
  const sort = params.get("sort") || "latent";
  const order = params.get("order") || (sort === "latent" ? "asc" : "desc");
  const offset = Number(params.get("offset") || 0);
  const query = params.get("q") || "";
  root.replaceChildren(el("h1", { text: `Features · ${db}` }));
  const box = el("input", { type: "search", placeholder: "search explanations and top tokens", value: query,
    id: "search", size: 40 });
  const form = el("form", { class: "controls", onsubmit: (e) => {
    e.preventDefault();
    location.hash = `#/features/${db}?q=${encodeURIComponent(box.value)}`;
  } }, [box, el("button", { type: "submit", text: "Search" })]);
  root.append(form);
  const note = source.note(db);
  if (note) root.append(el("p", { class: "cap-note", id: "export-cap", text: note }));
  if (query) {
    const result = await source.get(`/api/features/${db}/search?q=${encodeURIComponent(query)}&limit=${PAGE}`);
    root.append(el("p", { class: "muted", text: `${result.hits.length} matches for “${query}”` }));
    const table = el("table", { id: "hits" }, el("tr", {}, ["latent", "explanations", "top tokens", "score"]
      .map((h) => el("th", { text: h }))));
    for (const hit of result.hits) {
      table.append(el("tr", { "data-latent": hit.latent, "data-score": hit.score }, [
        el("td", {}, el("a", { href: `#/features/${db}/${hit.latent}`, text: hit.latent })),
        el("td", { text: hit.explanations }), el("td", { text: hit.top_tokens }),
        el("td", { class: "num", text: fmt(hit.score) })]));
    }
    root.append(table);
    return;
  }
  const page = await source.get(latentsPath(db, sort, order, offset, PAGE));
  const head = el("tr", {}, SORTS.map(([key, label]) => {
    const next = key === sort && order === "desc" ? "asc" : "desc";
    return el("th", {}, el("a", { href: `#/features/${db}?sort=${key}&order=${next}`,
      class: key === sort ? "active" : "", text: label + (key === sort ? (order === "asc" ? " ▲" : " ▼") : "") }));
  }).concat([el("th", { text: "explanation" })]));
  const table = el("table", { id: "latents", "data-total": page.total, "data-offset": page.offset }, head);
  for (const row of page.rows) {
    table.append(el("tr", { "data-latent": row.latent, "data-density": row.density, "data-max-act": row.max_act,
      "data-score": row.score }, [
      el("td", {}, el("a", { href: `#/features/${db}/${row.latent}`, text: row.latent })),
      el("td", { class: "num", text: fmt(row.density, 5) }), el("td", { class: "num", text: fmt(row.max_act) }),
      el("td", { class: "num", text: fmt(row.score) }), el("td", { text: row.explanation || "" })]));
  }
  const last = Math.max(0, Math.floor((page.total - 1) / PAGE) * PAGE);
  const link = (label, to) => el("a", { href: `#/features/${db}?sort=${sort}&order=${order}&offset=${to}`,
    text: label, style: { marginRight: "1em" } });
  const pager = el("p", { class: "controls" }, [
    link("« first", 0), link("‹ prev", Math.max(0, offset - PAGE)),
    el("span", { text: `${page.offset + 1}–${page.offset + page.rows.length} of ${page.total}` }),
    link("next ›", Math.min(last, offset + PAGE)), link("last »", last)]);
  root.append(pager, table);
}

export function exampleRow(example, maxAct) {
  const spans = example.text.map((text, i) => {
    const act = example.acts[i];
    return el("span", { class: "tok" + (i === example.center && example.kind !== "random" ? " max" : ""), "data-act": act,
      "data-token-id": example.tokens[i], title: `${JSON.stringify(text)}  ${fmt(act, 4)}`,
      style: { background: heat(maxAct > 0 ? act / maxAct : 0) } }, visibleToken(text));
  });
  return el("div", { class: "example", "data-kind": example.kind, "data-rank": example.rank,
    "data-act": example.act, "data-interval": example.interval },
    [el("span", { class: "act", text: fmt(example.act) }), ...spans]);
}

function histogram(counts, edges) {
  const w = 420, h = 110, n = counts.length, top = Math.max(1, ...counts);
  const svg = svgEl("svg", { width: w, height: h + 18, class: "hist", "data-bins": n });
  counts.forEach((count, i) => {
    const bh = (count / top) * h;
    const label = edges.length > i + 1 ? `10^[${fmt(edges[i], 2)}, ${fmt(edges[i + 1], 2)}): ${count}` : `${count}`;
    svg.append(svgEl("rect", { x: (i * w) / n, y: h - bh, width: Math.max(1, w / n - 1), height: bh,
      fill: "#e67e22", "data-bin": i, "data-count": count }, [svgEl("title", {}, [label])]));
  });
  if (edges.length) {
    svg.append(svgEl("text", { x: 0, y: h + 14 }, [`10^${fmt(edges[0], 1)}`]));
    svg.append(svgEl("text", { x: w - 40, y: h + 14 }, [`10^${fmt(edges[edges.length - 1], 1)}`]));
  }
  return svg;
}

function tokenList(items, cls) {
  return el("ul", { class: "plain " + cls }, items.map((t) => el("li", { "data-token-id": t.token_id,
    "data-value": t.value }, `${fmt(t.value)}  ${JSON.stringify(t.text)}`)));
}

function neighbourList(db, items, kind) {
  return el("ul", { class: "plain neighbours", "data-kind": kind }, items.map((n) => el("li", {
    "data-other": n.other, "data-value": n.value }, [el("a", { href: `#/features/${db}/${n.other}`,
    text: `#${n.other}` }), `  ${fmt(n.value)}` + (n.jaccard !== null && n.jaccard !== undefined ? ` (J ${fmt(n.jaccard)})` : "")])));
}

export async function renderFeature(root, source, db, latent) {
  const d = await source.get(`/api/features/${db}/latents/${latent}`);
  const s = d.stats;
  root.replaceChildren(
    el("h1", { text: `Latent ${d.latent} · ${db}`, id: "latent", "data-latent": d.latent }),
    el("p", { id: "stats", "data-density": s.density, "data-max-act": s.max_act, "data-n-fired": s.n_fired },
      `density ${fmt(s.density, 6)} · max ${fmt(s.max_act)} · mean ${fmt(s.mean_act)} · fired on ${s.n_fired} tokens`));
  const expl = el("div", { class: "card", id: "explanations" }, [el("h2", { text: "Explanation" })]);
  if (!d.explanations.length) expl.append(el("p", { class: "muted", text: "no explanation yet" }));
  for (const e of d.explanations) {
    expl.append(el("p", { "data-explanation-id": e.id, "data-explanation": e.text }, [el("b", { text: e.text }),
      el("span", { class: "muted", text: `  (${e.explainer})` })]));
    expl.append(el("ul", { class: "plain" }, Object.entries(e.scores).map(([method, value]) =>
      el("li", { "data-score-method": method, "data-score": value }, `${method}: ${fmt(value)}`))));
  }
  root.append(expl);
  const maxAct = s.max_act;
  const cols = el("div", { class: "cols" }, [
    el("div", {}, [el("h2", { text: "Activation histogram (log10)" }), histogram(d.hist, d.hist_edges)]),
    el("div", {}, [el("h2", { text: "Logit effects" }), el("div", { class: "cols" }, [
      el("div", {}, [el("b", { text: "promotes" }), tokenList(d.logits_positive, "logits-positive")]),
      el("div", {}, [el("b", { text: "suppresses" }), tokenList(d.logits_negative, "logits-negative")])])]),
    el("div", {}, [el("h2", { text: "Neighbours" }), el("b", { text: "decoder cosine" }),
      neighbourList(db, d.decoder_cosine, "decoder_cosine"), el("b", { text: "co-occurrence" }),
      neighbourList(db, d.cooccurrence, "cooccurrence")])]);
  root.append(cols);
  root.append(el("h2", { text: "Top examples" }), el("div", { id: "top" }, d.examples.top.map((e) => exampleRow(e, maxAct))));
  const groups = new Map();
  for (const e of d.examples.interval) groups.set(e.interval, [...(groups.get(e.interval) || []), e]);
  const intervals = el("div", { id: "interval" });
  for (const [interval, items] of [...groups.entries()].sort((a, b) => b[0] - a[0])) {
    intervals.append(el("p", { class: "muted", text: `interval ${interval} (${fmt(items[0].act)} – ${fmt(items[items.length - 1].act)})` }),
      ...items.map((e) => exampleRow(e, maxAct)));
  }
  root.append(el("h2", { text: "Quantile-interval examples" }), intervals);
  root.append(el("h2", { text: "Random non-activating examples" }),
    el("div", { id: "random" }, d.examples.random.slice(0, 5).map((e) => exampleRow(e, maxAct))));
}
