// Views placed inside another page (the report): each <div data-mechscope-view="patch|heads|graph"
// data-id="ID"> is rendered from the same source as the app, here the page's embedded JSON.
import { el } from "./util.js";
import { renderPatch } from "./patching.js";
import { renderHeads } from "./heads.js";
import { renderGraph } from "./graph.js";

const VIEWS = { patch: renderPatch, heads: renderHeads, graph: renderGraph };

export async function mountViews(source) {
  for (const box of document.querySelectorAll("[data-mechscope-view]")) {
    const render = VIEWS[box.dataset.mechscopeView];
    try {
      if (!render) throw new Error(`unknown view ${box.dataset.mechscopeView}`);
      await render(box, source, box.dataset.id);
    } catch (err) {
      box.replaceChildren(el("p", { class: "error", text: String(err.message || err) }));
    }
    box.setAttribute("data-ready", "true");
  }
}
