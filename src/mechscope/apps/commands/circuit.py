"""`mechscope circuit`: find a circuit of attention heads and MLPs for a task (EAP, EAP-IG, ACDC).

Example:
    $ mechscope circuit --task ioi --method eap-ig --steps 5 --top-n 200 --json c.json --png c.png
    $ mechscope circuit --task pairs.jsonl --method acdc --thresholds 0.01,0.03 --scores acdc_scores
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from mechscope.apps.commands.common import add_model_option, add_output_options, load

METHOD_CHOICES = ["eap", "eap-ig", "eap-ig-act", "clean-corrupted", "acdc"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope circuit` (automated circuit discovery: EAP, EAP-IG, ACDC) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['circuit', '--task', 'greater-than', '--method', 'eap']).method
        'eap'
    """
    parser = subparsers.add_parser("circuit", help="automated circuit discovery over heads and MLPs (EAP, EAP-IG, ACDC)")
    parser.add_argument("--task", default="ioi",
                        help="ioi, greater-than, or a JSONL file of prompt pairs (see docs/circuit_discovery.md)")
    parser.add_argument("--method", default="eap-ig", choices=METHOD_CHOICES)
    parser.add_argument("--steps", type=int, default=5, help="integration steps of EAP-IG")
    parser.add_argument("--top-n", type=int, default=200, help="edges kept in the circuit (EAP methods)")
    parser.add_argument("--signed", action="store_true", help="rank edges by signed score instead of |score|")
    parser.add_argument("--greedy", action="store_true", help="grow the circuit from the logits instead of top-n")
    parser.add_argument("--corruption", default="paired", choices=["paired", "zero", "mean", "resample"])
    parser.add_argument("--n-pairs", type=int, default=40, help="prompt pairs (built-in tasks are generated with --seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--thresholds", default="0.003,0.01,0.03", help="ACDC thresholds, comma-separated")
    parser.add_argument("--objective", default="kl", choices=["kl", "metric"], help="what ACDC keeps close to clean")
    parser.add_argument("--candidates", type=int, default=1000,
                        help="ACDC starts from the top CANDIDATES edges by EAP-IG (0: every edge)")
    parser.add_argument("--curve-points", type=int, default=10,
                        help="circuit sizes in the faithfulness curve (0: no curve)")
    parser.add_argument("--scores", default=None, metavar="STEM", help="save per-edge scores as STEM.safetensors + STEM.json")
    parser.add_argument("--no-progress", action="store_true")
    add_model_option(parser)
    add_output_options(parser)
    parser.set_defaults(func=run)


def discover(model: Any, args: argparse.Namespace) -> tuple[dict, Any, Any]:
    """Scores, circuit and evaluation for the parsed options: (JSON record, EdgeScores, circuit mask).

    Example:
        >>> from mechscope import load_model
        >>> from mechscope.apps.cli import build_parser
        >>> args = build_parser().parse_args(["circuit", "--task", "ioi", "--n-pairs", "8"])   # doctest: +SKIP
        >>> record, scores, mask = discover(load_model("smollm2-135m"), args)                    # doctest: +SKIP
    """
    from mechscope.circuits.discovery.acdc import acdc
    from mechscope.circuits.discovery.eap import attribute
    from mechscope.circuits.discovery.evaluate import Evaluator, default_sizes
    from mechscope.circuits.discovery.graph_run import GraphModel
    from mechscope.circuits.discovery.select import circuit_nodes, greedy, prune, top_n
    from mechscope.circuits.discovery.tasks import task_pairs
    from mechscope.core.errors import MechscopeError
    from mechscope.core.provenance import provenance

    pairs = task_pairs(model, args.task, args.n_pairs, args.seed)
    gm = GraphModel(model)
    g = gm.graph
    progress = not args.no_progress
    ev = Evaluator(gm, pairs, args.corruption, args.batch_size, args.seed)
    clean_metric = _per_pair_metric(gm, pairs, args.batch_size)
    started = time.perf_counter()
    if args.method == "acdc":
        thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
        start = None
        if args.candidates:
            pre = attribute(gm, pairs, "eap-ig", args.steps, args.corruption, args.batch_size, args.seed, progress)
            start = top_n(pre, min(args.candidates, g.n_edges))
        result = acdc(gm, pairs, thresholds, args.objective, args.corruption, start, progress=progress, seed=args.seed)
        scores, mask = result.scores, result.masks[0]
        extra: dict = {"acdc": {"thresholds": result.thresholds, "edge_counts": result.counts,
                                "evaluations": result.evaluations, "candidates": args.candidates or g.n_edges}}
    else:
        if not 0 < args.top_n <= g.n_edges:
            raise MechscopeError(f"--top-n must be between 1 and {g.n_edges} for this model.")
        scores = attribute(gm, pairs, args.method, args.steps, args.corruption, args.batch_size, args.seed, progress)
        pick = greedy if args.greedy else top_n
        mask = prune(g, pick(scores, args.top_n, not args.signed))
        extra = {}
    seconds = time.perf_counter() - started
    evaluation = ev(mask)
    sizes = default_sizes(g.n_edges, points=args.curve_points) if args.curve_points > 1 else []
    curve = ev.curve(scores, sizes, absolute=not args.signed)
    values = scores.scores
    record = {
        "task": args.task, "method": args.method, "steps": args.steps, "corruption": args.corruption,
        "n_pairs": len(pairs), "metric_kind": pairs.kind,
        "clean": {"metric": ev.clean, "accuracy": float((clean_metric > 0).double().mean())},
        "corrupted": {"metric": ev.corrupted},
        "circuit": {**evaluation.to_dict(), "nodes": circuit_nodes(g, mask),
                    "edges": sorted(({"edge": g.edge_name(d, s), "score": float(values[d, s])}
                                     for d, s in mask.nonzero().tolist()), key=lambda e: -abs(e["score"]))},
        "faithfulness_curve": [c.to_dict() for c in curve],
        "graph": g.to_dict(), "seconds": seconds, **extra,
        "examples": pairs.texts[:3],
        "provenance": provenance(model, seed=args.seed),
    }
    return record, scores, mask


def _per_pair_metric(gm: Any, pairs: Any, batch_size: int) -> Any:
    import torch

    from mechscope.circuits.discovery.eap import batches

    with torch.no_grad():
        return torch.cat([pairs.rows(r).metric(gm.model(pairs.rows(r).clean, pairs.rows(r).attention_mask))
                          for r in batches(len(pairs), batch_size)])


def run(args: argparse.Namespace) -> int:
    """Run `mechscope circuit`: discover a circuit for the task, print it, and write the requested files; returns 0.

    Example:
        $ mechscope circuit --task ioi --method eap-ig --steps 5 --top-n 200 --json c.json --png c.png
        $ mechscope circuit --task pairs.jsonl --method acdc --thresholds 0.01,0.03 --candidates 1000
    """
    from mechscope.apps.output import figure_png, write_bytes, write_json
    from mechscope.circuits.discovery.draw import circuit_figure
    from mechscope.core.files import check_writable

    if args.scores:
        for suffix in (".json", ".safetensors"):
            check_writable(args.scores + suffix, args.force)
    model = load(args)
    record, scores, mask = discover(model, args)
    if args.json_path:
        write_json(args.json_path, record, force=args.force)
    if args.png_path:
        title = f"{args.task}: {args.method}, {int(mask.sum())} edges, faithfulness {record['circuit']['faithfulness']:.2f}"
        write_bytes(args.png_path, figure_png(circuit_figure(scores, mask, title), close=True), force=args.force)
    if args.scores:
        scores.save(args.scores, record["provenance"], force=args.force)
    c = record["circuit"]
    print(f"{args.task}: {record['n_pairs']} pairs; clean metric {record['clean']['metric']:+.3f} "
          f"(accuracy {record['clean']['accuracy']:.0%}), corrupted {record['corrupted']['metric']:+.3f}")
    print(f"{args.method}: circuit of {c['n_edges']} edges, {len(c['nodes'])} nodes; metric {c['metric']:+.3f}, "
          f"faithfulness {c['faithfulness']:.3f}  ({record['seconds']:.1f} s)")
    for e in c["edges"][:15]:
        print(f"  {e['edge']:<24} {e['score']:+.4f}")
    return 0
