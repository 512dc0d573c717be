// Prompt view (needs --model): logit lens over layers, the latents firing at each token, and a
// CircuitsVis-like attention view (pick layer and head, hover a query token to see where it attends).
import { el, fmt, heat, visibleToken } from "./util.js";

function lensTable(view, top, id) {
  const table = el("table", { id }, el("tr", {}, [el("th", { text: "layer" }),
    ...view.tokens.map((t, i) => el("th", { "data-pos": i, text: visibleToken(t) }))]));
  view.lens_layers.forEach((layer, r) => {
    table.append(el("tr", { "data-layer": layer }, [el("td", { text: layer }), ...top[r].map(([tok, p]) =>
      el("td", { "data-token": tok, "data-prob": p, title: `${JSON.stringify(tok)} p=${fmt(p, 4)}`,
        style: { background: heat(p) } }, visibleToken(tok)))]));
  });
  return table;
}

function latentTable(view, db) {
  return el("table", { id: "prompt-latents" }, view.tokens.map((t, i) => el("tr", { "data-pos": i }, [
    el("td", { text: visibleToken(t) }),
    el("td", {}, view.latents[i].map((l) => el("a", { href: `#/features/${db}/${l.latent}`, "data-latent": l.latent,
      "data-act": l.act, title: fmt(l.act, 4), style: { marginRight: "0.8em" } }, `#${l.latent} (${fmt(l.act)})`)))])));
}

async function attentionView(box, source, prompt, layer, head) {
  const view = await source.post("/api/model/attention", { prompt, layer, head });
  const tokens = view.tokens.map((t, q) => el("span", { class: "tok", "data-pos": q }, visibleToken(t)));
  const shade = (q) => tokens.forEach((span, k) => {
    const w = q === null ? 0 : view.pattern[q][k];
    span.style.background = heat(w);
    span.title = q === null ? "" : `attention from ${q} to ${k}: ${fmt(w, 4)}`;
    span.dataset.weight = q === null ? "" : String(w);
    span.classList.toggle("max", k === q);
  });
  tokens.forEach((span, q) => span.addEventListener("mouseenter", () => shade(q)));
  box.replaceChildren(el("p", { class: "muted", text: `L${layer}H${head}: hover a token to see where it attends` }),
    el("div", { class: "example", id: "attention", "data-layer": layer, "data-head": head }, tokens));
}

export async function renderPrompt(root, source, params, sources) {
  const dbs = sources.sources.filter((s) => s.kind === "features");
  const input = el("input", { id: "prompt", size: 60, value: params.get("prompt") || "The Eiffel Tower is in the city of" });
  const dbSelect = el("select", { id: "prompt-db" }, [el("option", { value: "", text: "(no dictionary)" }),
    ...dbs.map((d) => el("option", { value: d.id, text: d.id }))]);
  const result = el("div", { id: "prompt-result" });
  const run = async () => {
    result.replaceChildren(el("p", { class: "muted", text: "running…" }));
    const db = dbSelect.value || null;
    try {
      const view = await source.post("/api/model/prompt", { prompt: input.value, db });
      const layer = el("select", { id: "attn-layer" }, [...Array(view.n_layers).keys()].map((l) => el("option", { value: l, text: `layer ${l}` })));
      const head = el("select", { id: "attn-head" }, [...Array(view.n_heads).keys()].map((h) => el("option", { value: h, text: `head ${h}` })));
      layer.value = params.get("layer") || "0";
      head.value = params.get("head") || "0";
      const attn = el("div");
      const showAttn = () => attentionView(attn, source, input.value, Number(layer.value), Number(head.value));
      layer.addEventListener("change", showAttn);
      head.addEventListener("change", showAttn);
      result.replaceChildren(el("h2", { text: "Attention" }), el("div", { class: "controls" }, [layer, head]), attn,
        el("h2", { text: "Logit lens (top token per layer and position)" }), lensTable(view, view.lens_top, "lens"));
      if (view.tuned_top) result.append(el("h2", { text: "Tuned lens" }), lensTable(view, view.tuned_top, "tuned-lens"));
      if (view.latents) result.append(el("h2", { text: `Latents per token (${db})` }), latentTable(view, db));
      await showAttn();
    } catch (err) {
      result.replaceChildren(el("p", { class: "error", text: String(err.message || err) }));
    }
    result.setAttribute("data-done", "true");
  };
  root.replaceChildren(el("h1", { text: "Prompt" }), el("form", { class: "controls", onsubmit: (e) => {
    e.preventDefault(); run(); } }, [input, dbSelect, el("button", { type: "submit", id: "prompt-run", text: "Run" })]), result);
  if (params.get("run")) await run();
}
