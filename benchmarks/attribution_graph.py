"""Attribution-graph benchmark: the default model, a 12-token prompt, per-layer transcoders, 1024 feature nodes.

Prints wall time, peak resident memory (this process, from the OS), the backward-pass count
and its formula, and the graph's size and scores. circuit-tracer 0.5.0 cannot run here
(it pins transformers <= 4.57.3 and loads models through TransformerLens or nnsight), so
no side-by-side timing of it is printed; the script says so.

Transcoders: `--transcoders DIR` (e.g. from scripts/train_transcoders.sh), or untrained ReLU
transcoders of `--d-sae` features per layer (the cost depends on the feature-node budget and
on how many features are active, not on training; random ReLU features fire on about half the
tokens, so the untrained set is the expensive case).

Results: benchmarks/results/attribution_graph.json (goal: under 5 minutes and 4 GB).

Usage:
    python benchmarks/attribution_graph.py --transcoders out/transcoders/plt
    python benchmarks/attribution_graph.py --quick      # untrained, 256 wide, 64 feature nodes: checks it runs
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import time
from pathlib import Path

import mechscope
from common import add_arguments, goal, setup, summarize, write_result
from mechscope.circuits.attribution import attribute
from mechscope.circuits.graph import graph_scores
from mechscope.core import names
from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.transcoder_set import PerLayerTranscoders, load_transcoder_set

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The capital of the state containing Dallas is the city of"  # 12 tokens with the BOS attribute() prepends


def untrained(model, d_sae: int) -> PerLayerTranscoders:
    d = model.cfg.d_model
    return PerLayerTranscoders([make_dictionary("relu", d_in=d, d_sae=d_sae, d_out=d, seed=layer,
                                                hook_name_out=names.mlp_out(layer))
                                for layer in range(model.cfg.n_layers)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transcoders", default=None)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--max-feature-nodes", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    add_arguments(parser, repeats=1)
    args = parser.parse_args()
    repeats = setup(args)
    if args.quick:
        args.d_sae, args.max_feature_nodes = min(args.d_sae, 256), min(args.max_feature_nodes, 64)
    model = mechscope.load_model()
    tcs = load_transcoder_set(args.transcoders) if args.transcoders else untrained(model, args.d_sae)
    graph, walls = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        graph = attribute(model, tcs, PROMPT, max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size)
        walls.append(time.perf_counter() - start)
    assert graph is not None
    wall = statistics.median(walls)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    expected = math.ceil(graph.n_logits / args.batch_size) + math.ceil(graph.n_features / args.batch_size)
    scores = graph_scores(graph)
    source = (os.path.relpath(Path(args.transcoders).resolve(), ROOT) if args.transcoders
              else f"untrained, {args.d_sae} wide")
    print(f"model {model.cfg.name}, {graph.n_pos} tokens, transcoders: {source}")
    print(f"active features {graph.info['n_active_features']}, feature nodes {graph.n_features}, "
          f"logit targets {graph.n_logits}, adjacency {tuple(graph.adjacency.shape)}")
    print(f"backward passes {graph.info['backward_passes']} (ceil({graph.n_logits}/{args.batch_size}) + "
          f"ceil({graph.n_features}/{args.batch_size}) = {expected})")
    print(f"wall time {wall:.1f} s, peak resident memory {peak_gb:.2f} GB (whole process, model included)")
    print(f"scores: replacement {scores.replacement:.3f}, completeness {scores.completeness:.3f}")
    print(CIRCUIT_TRACER)
    table = {
        "columns": ["what", "value"],
        "rows": [["transcoders", source],
                 ["tokens (with BOS)", str(graph.n_pos)],
                 ["active features / feature nodes", f"{graph.info['n_active_features']:,} / {graph.n_features:,}"],
                 ["logit targets", str(graph.n_logits)],
                 ["backward passes (formula)", f"{graph.info['backward_passes']} ({expected})"],
                 ["wall time s", f"{wall:.1f}"],
                 ["peak resident GB (process, model included)", f"{peak_gb:.2f}"],
                 ["completeness / replacement score", f"{scores.completeness:.2f} / {scores.replacement:.2f}"]],
        "caption": f"{model.cfg.name}, prompt {PROMPT!r}, batch {args.batch_size}, median of {repeats} run(s); "
                   "circuit-tracer not run side by side (see the script's docstring).",
    }
    write_result("attribution_graph", args, model, {
        "settings": {"prompt": PROMPT, "transcoders": source, "max_feature_nodes": args.max_feature_nodes,
                     "batch_size": args.batch_size},
        "timings": {"attribute": summarize(walls)},
        "graph": {"n_pos": graph.n_pos, "n_active_features": graph.info["n_active_features"],
                  "n_features": graph.n_features, "n_logits": graph.n_logits,
                  "backward_passes": graph.info["backward_passes"], "backward_passes_formula": expected,
                  "completeness": scores.completeness, "replacement": scores.replacement},
        "peak_resident_gb": peak_gb,
        "circuit_tracer": CIRCUIT_TRACER,
        "goals": [goal("attribution graph wall time", wall, 300, "<=", "s"),
                  goal("peak resident memory", peak_gb, 4, "<=", "GB")],
        "table": table,
    })


CIRCUIT_TRACER = ("circuit-tracer side by side: not run (0.5.0 needs transformers <= 4.57.3 and TransformerLens/nnsight "
                  "model loading; only its graph functions are imported, in the tests)")


if __name__ == "__main__":
    main()
