"""Attribution-graph benchmark: the default model, a 12-token prompt, per-layer transcoders, 1024 feature nodes.

Prints wall time, peak resident memory (this process, from the OS), the backward-pass count
and its formula, and the graph's size and scores. circuit-tracer 0.5.0 cannot run here
(it pins transformers <= 4.57.3 and loads models through TransformerLens or nnsight), so
no side-by-side timing of it is printed; the script says so.

Transcoders: `--transcoders DIR` (e.g. from scripts/train_transcoders.sh), or untrained
JumpReLU transcoders of `--d-sae` features per layer (the cost does not depend on training,
only on how many features are active: thresholds are set so about `--active` fire per token).

Example (a tiny size, to check the script runs):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attribution_graph.py --max-feature-nodes 64 --d-sae 256
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import mechscope
from mechscope.circuits.attribution import attribute
from mechscope.circuits.graph import graph_scores
from mechscope.core import names
from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.transcoder_set import PerLayerTranscoders, load_transcoder_set

PROMPT = "The capital of the state containing Dallas is the city of"  # 12 tokens with the BOS attribute() prepends


def untrained(model, d_sae: int) -> PerLayerTranscoders:
    d = model.cfg.d_model
    return PerLayerTranscoders([make_dictionary("relu", d_in=d, d_sae=d_sae, d_out=d, seed=layer,
                                                hook_name_out=names.mlp_out(layer))
                                for layer in range(model.cfg.n_layers)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transcoders", default=None)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--max-feature-nodes", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    model = mechscope.load_model()
    tcs = load_transcoder_set(args.transcoders) if args.transcoders else untrained(model, args.d_sae)
    start = time.perf_counter()
    graph = attribute(model, tcs, PROMPT, max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size)
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    expected = math.ceil(graph.n_logits / args.batch_size) + math.ceil(graph.n_features / args.batch_size)
    scores = graph_scores(graph)
    print(f"model {model.cfg.name}, {graph.n_pos} tokens, transcoders: {args.transcoders or f'untrained, {args.d_sae} wide'}")
    print(f"active features {graph.info['n_active_features']}, feature nodes {graph.n_features}, "
          f"logit targets {graph.n_logits}, adjacency {tuple(graph.adjacency.shape)}")
    print(f"backward passes {graph.info['backward_passes']} (ceil({graph.n_logits}/{args.batch_size}) + "
          f"ceil({graph.n_features}/{args.batch_size}) = {expected})")
    print(f"wall time {wall:.1f} s, peak resident memory {peak_gb:.2f} GB (whole process, model included)")
    print(f"scores: replacement {scores.replacement:.3f}, completeness {scores.completeness:.3f}")
    print("circuit-tracer side by side: not run (0.5.0 needs transformers <= 4.57.3 and TransformerLens/nnsight "
          "model loading; only its graph functions are imported, in the tests)")


if __name__ == "__main__":
    main()
