// Router: #/ (sources), #/features/DB[?sort=&order=&offset=&q=], #/features/DB/LATENT, #/patch/ID,
// #/heads/ID, #/graph/ID, and with a model #/prompt and #/steer. The same code runs against the API or an embedded export.
import { el } from "./util.js";
import { makeSource } from "./source.js";
import { renderFeature, renderFeatureList } from "./features.js";
import { renderPatch } from "./patching.js";
import { renderHeads } from "./heads.js";
import { renderGraph } from "./graph.js";
import { renderPrompt } from "./prompt.js";
import { renderSteer } from "./steer.js";
import { mountViews } from "./mount.js";

const source = makeSource();
const LABELS = { features: "Features", patch: "Patching", heads: "Heads", graph: "Graphs & circuits" };

async function renderHome(root) {
  const list = await source.get("/api/sources");
  root.replaceChildren(el("h1", { text: "Sources" }));
  if (list.model) {
    root.append(el("p", { id: "live" }, [`model ${list.model}: `, el("a", { href: "#/prompt", text: "prompt view" }), " · ",
      el("a", { href: "#/steer", text: "steering" })]));
  }
  if (!list.sources.length) root.append(el("p", { class: "muted", text: "No mechscope result files under the served paths." }));
  for (const kind of Object.keys(LABELS)) {
    const items = list.sources.filter((s) => s.kind === kind);
    if (!items.length) continue;
    root.append(el("h2", { text: LABELS[kind] }), el("ul", { id: `sources-${kind}` }, items.map((s) =>
      el("li", { "data-source-id": s.id, "data-kind": s.kind }, [el("a", { href: `#/${kind}/${s.id}`, text: s.id }),
        el("span", { class: "muted", text: `  ${s.name}` + (s.detail && s.detail.d_sae ? ` · ${s.detail.d_sae} latents · ${s.detail.hook_name}` : "") })]))));
  }
}

async function route() {
  const root = document.getElementById("app");
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  root.setAttribute("data-ready", "false");
  try {
    if (parts[0] === "features" && parts.length === 2) await renderFeatureList(root, source, parts[1], params);
    else if (parts[0] === "features" && parts.length === 3) await renderFeature(root, source, parts[1], parts[2]);
    else if (parts[0] === "patch") await renderPatch(root, source, parts[1]);
    else if (parts[0] === "heads") await renderHeads(root, source, parts[1]);
    else if (parts[0] === "graph") await renderGraph(root, source, parts[1]);
    else if (parts[0] === "prompt") await renderPrompt(root, source, params, await source.get("/api/sources"));
    else if (parts[0] === "steer") await renderSteer(root, source, params, await source.get("/api/sources"));
    else await renderHome(root);
  } catch (err) {
    root.replaceChildren(el("p", { class: "error", id: "error", text: String(err.message || err) }));
  }
  root.setAttribute("data-ready", "true");
}

if (document.getElementById("app")) {
  window.addEventListener("hashchange", route);
  route();
} else {
  mountViews(source);  // views embedded in another page (the report)
}
