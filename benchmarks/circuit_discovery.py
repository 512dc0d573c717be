"""Circuit discovery on the default model: timing of EAP / EAP-IG, and the IOI and greater-than findings.

Timing (`--timing`): EAP and EAP-IG (m steps) over every edge of the component graph for N IOI
pairs, each in its own process so its peak resident memory is its own, next to one batched
forward + backward of the plain model over the same pairs (EAP's floor).

Findings (`--findings`): what SmolLM2-135M does on IOI and greater-than (accuracy and metric
first), then EAP-IG circuits, ACDC started from the EAP-IG candidates, path patching, and head
roles (name movers, S-inhibition, induction / duplicate-token heads) next to the head detectors;
writes docs/circuit_discovery_findings_<tasks>.json and figures.

Induction toy (`--induction-toy`): trains the attention-only induction toy, then prints each
method's edge-recovery ROC area against `induction_reference` on `induction_pairs` (24 pairs
per seed, spans of 12); nothing is written.

    python benchmarks/circuit_discovery.py --timing --pairs 100 --steps 5   # writes results/circuit_discovery.json
    python benchmarks/circuit_discovery.py --findings --pairs 12 --steps 3 --acdc-candidates 120
    python benchmarks/circuit_discovery.py --induction-toy --toy-steps 800 --seeds 0,1,2,3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import torch

from common import add_arguments, cell, goal, setup, summarize, write_result

DOCS = Path(__file__).resolve().parent.parent / "docs"


JOBS = ("forward+backward", "eap", "eap-ig")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(job: str, n_pairs: int, steps: int, batch: int, queue: mp.Queue) -> None:
    import mechscope
    from mechscope.circuits.discovery.eap import attribute, batches
    from mechscope.circuits.discovery.graph_run import GraphModel
    from mechscope.circuits.discovery.tasks import task_pairs

    model = mechscope.load_model()
    pairs = task_pairs(model, "ioi", n_pairs, seed=0)
    before = _peak_mb()
    start = time.perf_counter()
    if job == "forward+backward":
        for rows in batches(len(pairs), batch):
            part = pairs.rows(rows)
            with torch.enable_grad():  # gradient with respect to the input embeddings only, as EAP's backward
                embeds = model.hf_model.get_input_embeddings()(part.clean).detach().requires_grad_(True)
                logits = model.hf_model(inputs_embeds=embeds, attention_mask=part.attention_mask).logits
                torch.autograd.grad(part.metric(logits).sum(), embeds)
    else:
        gm = GraphModel(model)
        attribute(gm, pairs, method=job, steps=steps, batch_size=batch)
    queue.put({"job": job, "seconds": time.perf_counter() - start, "peak_rss_mb": _peak_mb(),
               "rss_before_mb": before, "n_pairs": n_pairs, "steps": steps if job == "eap-ig" else None})


def timing(n_pairs: int, steps: int, batch: int, repeats: int = 1) -> dict[str, list[dict]]:
    """Each job's runs, `repeats` rounds of the three jobs in turn, each run in a fresh process."""
    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict]] = {job: [] for job in JOBS}
    for _ in range(repeats):
        for job in JOBS:
            queue = ctx.Queue()
            proc = ctx.Process(target=_timed, args=(job, n_pairs, steps, batch, queue))
            proc.start()
            runs[job].append(queue.get())
            proc.join()
            print(json.dumps(runs[job][-1]))
    return runs


def timing_result(runs: dict[str, list[dict]], n_pairs: int, steps: int, batch: int) -> dict:
    """Timings, goals and the README table of `timing`'s runs."""
    times = {job: summarize([r["seconds"] for r in rows]) for job, rows in runs.items()}
    peak = {job: max(r["peak_rss_mb"] for r in rows) for job, rows in runs.items()}
    base = times["forward+backward"]["median_s"]
    eap, eap_ig = times["eap"]["median_s"], times["eap-ig"]["median_s"]
    for job in JOBS[1:]:
        print(f"{job}: {times[job]['median_s']:.1f} s ({times[job]['median_s'] / base:.1f}x one forward+backward), "
              f"peak {peak[job]:.0f} MB")
    goals = [goal(f"EAP-IG (m={steps}) over every edge, {n_pairs} pairs, seconds", eap_ig, 300, "<=", "s"),
             goal("EAP / one batched forward + backward", eap / base, 3, "<=")]
    labels = {"forward+backward": "plain forward + backward (EAP's floor)", "eap": "EAP, every edge",
              "eap-ig": f"EAP-IG, m = {steps}, every edge"}
    table = {"columns": ["what", "median s", "x forward + backward", "peak resident MB"],
             "rows": [[labels[job], cell(times[job]["median_s"], 1), cell(times[job]["median_s"] / base),
                       f"{peak[job]:,.0f}"] for job in JOBS],
             "caption": f"SmolLM2-135M, {n_pairs} IOI pairs, batches of {batch}, all 123,211 edges of the component "
                        f"graph; each run in its own process (peak memory is its own), "
                        f"{len(runs['eap'])} run(s) each."}
    return {"settings": {"pairs": n_pairs, "steps": steps, "batch": batch}, "timings": times, "goals": goals,
            "table": table, "runs": runs}


# -- findings --------------------------------------------------------------------------------------
def _heads_into(g, scores, dests_of, heads, top):
    """Heads ranked by the summed score of their edges into the destinations `dests_of(head)` of `heads`."""
    total = torch.zeros(g.n_layers, g.n_heads, dtype=torch.float64)
    for layer, head in heads:
        for d in dests_of(layer, head):
            for src_layer in range(layer + 1):
                for h in range(g.n_heads):
                    s = g.head_source(src_layer, h)
                    if bool(g.valid[d, s]):
                        total[src_layer, h] += float(scores[d, s])
    order = total.flatten().argsort(descending=True)[:top]
    return [(int(i) // g.n_heads, int(i) % g.n_heads, float(total.flatten()[i])) for i in order]


def findings(n_pairs: int, steps: int, batch: int, acdc_candidates: int, tasks: tuple[str, ...]) -> dict:
    import mechscope
    from mechscope.circuits.discovery.acdc import acdc
    from mechscope.circuits.discovery.draw import circuit_figure
    from mechscope.circuits.discovery.eap import attribute
    from mechscope.circuits.discovery.evaluate import Evaluator, default_sizes
    from mechscope.circuits.discovery.graph_run import GraphModel
    from mechscope.circuits.discovery.select import circuit_nodes, prune, top_n
    from mechscope.circuits.discovery.tasks import task_pairs
    from mechscope.core.files import figure_png, write_bytes, write_json
    from mechscope.core.provenance import provenance
    from mechscope.methods.heads import detect_heads
    from mechscope.methods.patching.path import path_patch

    model = mechscope.load_model()
    gm = GraphModel(model)
    g = gm.graph
    heads = {(r.layer, r.head): r for r in detect_heads(model, seq_len=30, batch=8)}
    out: dict = {"provenance": provenance(model, seed=0)}
    for task in tasks:
        t0 = time.perf_counter()
        pairs = task_pairs(model, task, n_pairs, seed=0)
        with torch.no_grad():
            clean = torch.cat([pairs.rows(slice(i, i + batch)).metric(model(pairs.clean[i:i + batch],
                               None if pairs.attention_mask is None else pairs.attention_mask[i:i + batch]))
                               for i in range(0, len(pairs), batch)])
        ev = Evaluator(gm, pairs, batch_size=batch)
        rec: dict = {"n_pairs": len(pairs), "metric": pairs.kind, "clean_mean": ev.clean,
                     "corrupted_mean": ev.corrupted, "accuracy": float((clean > 0).double().mean()),
                     "examples": pairs.texts[:2]}
        print(task, json.dumps({k: rec[k] for k in ("clean_mean", "corrupted_mean", "accuracy")}), flush=True)
        scores = attribute(gm, pairs, "eap-ig", steps, batch_size=batch, progress=True)
        scores.save(DOCS / f"circuit_discovery_{task}_scores", out["provenance"], force=True)
        mask = prune(g, top_n(scores, 200))
        evaluation = ev(mask)
        curve = ev.curve(scores, default_sizes(g.n_edges, points=10))
        rec["eap_ig"] = {"steps": steps, "top200_pruned": evaluation.to_dict(), "nodes": circuit_nodes(g, mask),
                         "top_edges": scores.top(25), "curve": [c.to_dict() for c in curve]}
        title = f"{task} on SmolLM2-135M: EAP-IG top-200 (pruned: {int(mask.sum())} edges), " \
                f"faithfulness {evaluation.faithfulness:.2f}"
        write_bytes(DOCS / f"circuit_discovery_{task}.png", figure_png(circuit_figure(scores, mask, title)), force=True)
        direct = sorted(((layer, h, float(scores.scores[g.logits_dest, g.head_source(layer, h)]))
                         for layer in range(g.n_layers) for h in range(g.n_heads)), key=lambda x: -x[2])
        rec["direct_to_logits"] = direct[:8]
        out[task] = rec
        write_json(DOCS / f"circuit_discovery_findings_{'_'.join(tasks)}.json", out, force=True)  # progress so far
        if task == "ioi":
            movers = [(layer, h) for layer, h, v in direct[:4]]
            s_inhib = _heads_into(g, scores.scores, lambda ly, h: [g.qkv_dest(ly, h, "q")], movers, 6)
            s_heads = [(layer, h) for layer, h, _ in s_inhib[:4]]
            dup_ind = _heads_into(g, scores.scores, lambda ly, h: [g.qkv_dest(ly, h, "v"), g.qkv_dest(ly, h, "k")],
                                  s_heads, 6)

            def describe(rows):
                return [{"head": f"{layer}.{h}", "score": v, "detectors": {
                    k: round(getattr(heads[(layer, h)], k), 3) for k in ("prev_token", "duplicate_token", "induction")},
                    "label": heads[(layer, h)].label} for layer, h, v in rows]

            rec["roles"] = {"name_movers": describe(direct[:4]), "s_inhibition": describe(s_inhib),
                            "induction_or_duplicate": describe(dup_ind)}
            texts = pairs.texts
            clean_p, corrupt_p = [r["clean"] for r in texts], [r["corrupt"] for r in texts]
            answer, wrong = [r["answer"] for r in texts], [r["wrong"] for r in texts]
            pp = path_patch(model, clean_p, corrupt_p, answer=answer, wrong=wrong, receivers=["resid"],
                            memory_mb=128)
            flat = pp.scores.flatten()
            rec["path_patching_direct"] = [(f"{int(i) // g.n_heads}.{int(i) % g.n_heads}", float(flat[i]))
                                           for i in flat.abs().argsort(descending=True)[:8]]
            first = min(layer for layer, _ in movers)  # senders strictly before every receiver
            senders = [(layer, h) for layer in range(first) for h in range(g.n_heads)]
            pq = path_patch(model, clean_p, corrupt_p, answer=answer, wrong=wrong, senders=senders, memory_mb=128,
                            receivers=[(layer, h, "q") for layer, h in movers])
            flat = pq.scores.flatten()
            rec["path_patching_into_mover_queries"] = [(f"{senders[int(i)][0]}.{senders[int(i)][1]}", float(flat[i]))
                                                       for i in flat.abs().argsort(descending=True)[:8]]
            print("roles", json.dumps(rec["roles"]), flush=True)
            write_json(DOCS / f"circuit_discovery_findings_{'_'.join(tasks)}.json", out, force=True)
            sub = pairs.rows(slice(0, min(len(pairs), 16)))
            start = top_n(scores, acdc_candidates)
            result = acdc(gm, sub, [0.01, 0.03, 0.1], start_mask=start, progress=True)
            rec["acdc"] = {"n_pairs": len(sub), "candidates": acdc_candidates, "thresholds": result.thresholds,
                           "edge_counts": result.counts, "evaluations": result.evaluations,
                           "faithfulness": [ev(m).faithfulness for m in result.masks],
                           "nodes_at_0.01": circuit_nodes(g, result.masks[0]), "top_edges": result.scores.top(20)}
            write_bytes(DOCS / "circuit_discovery_ioi_acdc.png",
                        figure_png(circuit_figure(result.scores, result.masks[1],
                                                  f"IOI: ACDC at tau=0.03 ({result.counts[1]} edges)")), force=True)
        rec["seconds"] = time.perf_counter() - t0
        out[task] = rec
        write_json(DOCS / f"circuit_discovery_findings_{'_'.join(tasks)}.json", out, force=True)
    return out


def induction_toy(toy_steps: int, seeds: list[int], steps: int) -> dict:
    """ROC areas of every method (and ACDC) on the trained induction toy, per pair seed."""
    import tempfile

    from mechscope.circuits.discovery.acdc import acdc
    from mechscope.circuits.discovery.eap import METHODS, attribute
    from mechscope.circuits.discovery.graph_run import GraphModel
    from mechscope.circuits.discovery.induction import induction_pairs, induction_reference
    from mechscope.circuits.discovery.roc import edge_roc, edges_from_names
    from mechscope.core.loading import load_model
    from mechscope.toys.induction import InductionToyConfig, train_induction_toy

    cfg = InductionToyConfig(steps=toy_steps, eval_every=max(toy_steps // 4, 1))
    with tempfile.TemporaryDirectory() as folder:
        train_induction_toy(cfg, out_dir=Path(folder) / "toy")
        gm = GraphModel(load_model(str(Path(folder) / "toy")))
    reference = edges_from_names(gm.graph, induction_reference(cfg.n_heads))
    out = {}
    for seed in seeds:
        pairs = induction_pairs(n=24, span=12, n_tokens=cfg.n_tokens, seed=seed)
        aucs = {m: edge_roc(gm.graph, attribute(gm, pairs, method=m, steps=steps).scores, reference).auc
                for m in METHODS}
        result = acdc(gm, pairs, thresholds=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
        aucs["acdc"] = edge_roc(gm.graph, result.scores.scores, reference).auc
        out[seed] = aucs
        print(f"seed {seed}: " + "  ".join(f"{m} {a:.3f}" for m, a in aucs.items()), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--findings", action="store_true")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--acdc-candidates", type=int, default=300)
    parser.add_argument("--tasks", default="ioi,greater-than", help="findings for these built-in tasks")
    parser.add_argument("--induction-toy", action="store_true")
    parser.add_argument("--toy-steps", type=int, default=800, help="training steps of the induction toy")
    parser.add_argument("--seeds", default="0", help="pair seeds for --induction-toy, comma-separated")
    add_arguments(parser, repeats=1)
    args = parser.parse_args()
    if args.timing:
        if args.quick:
            args.pairs, args.steps = 4, 2
        repeats = setup(args)
        runs = timing(args.pairs, args.steps, args.batch, repeats)
        write_result("circuit_discovery", args, None, timing_result(runs, args.pairs, args.steps, args.batch))
    if args.findings:
        findings(args.pairs, args.steps, args.batch, args.acdc_candidates, tuple(args.tasks.split(",")))
    if args.induction_toy:
        induction_toy(args.toy_steps, [int(s) for s in args.seeds.split(",")], args.steps)


if __name__ == "__main__":
    main()
