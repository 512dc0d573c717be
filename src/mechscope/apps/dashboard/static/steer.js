// Steering (needs --model): a latent of a feature database, a coefficient and a prompt; the steered and
// unsteered greedy continuations side by side, from the same seed.
import { el } from "./util.js";

function column(title, id, g) {
  return el("div", { class: "card", id, "data-token-ids": g.token_ids.join(",") },
    [el("h2", { text: title }), el("p", { class: "example", text: g.text })]);
}

export async function renderSteer(root, source, params, sources) {
  const dbs = sources.sources.filter((s) => s.kind === "features");
  const field = (id, value, size = 6) => el("input", { id, value, size });
  const prompt = field("steer-prompt", params.get("prompt") || "I went to the", 40);
  const db = el("select", { id: "steer-db" }, dbs.map((d) => el("option", { value: d.id, text: d.id })));
  const latent = field("steer-latent", params.get("latent") || "0");
  const coef = field("steer-coef", params.get("coef") || "8");
  const tokens = field("steer-tokens", params.get("tokens") || "20", 3);
  const out = el("div", { id: "steer-result" });
  const run = async () => {
    out.replaceChildren(el("p", { class: "muted", text: "generating…" }));
    try {
      const r = await source.post("/api/model/steer", { prompt: prompt.value, db: db.value,
        latent: Number(latent.value), coefficient: Number(coef.value), max_new_tokens: Number(tokens.value), seed: 0 });
      out.replaceChildren(el("p", { class: "muted", text: `adding ${r.coefficient} × latent ${r.latent} at ${r.hook_name}; greedy, seed 0` }),
        el("div", { class: "cols" }, [column("unsteered", "unsteered", r.unsteered), column("steered", "steered", r.steered)]));
    } catch (err) {
      out.replaceChildren(el("p", { class: "error", text: String(err.message || err) }));
    }
    out.setAttribute("data-done", "true");
  };
  root.replaceChildren(el("h1", { text: "Steering" }), el("form", { class: "controls", onsubmit: (e) => {
    e.preventDefault(); run(); } }, ["prompt", prompt, "features", db, "latent", latent, "coefficient", coef,
    "tokens", tokens, el("button", { type: "submit", id: "steer-run", text: "Generate" })]), out);
  if (params.get("run")) await run();
}
