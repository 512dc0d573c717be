"""`mechscope graph "PROMPT" --transcoders DIR`: the attribution graph of the next token, pruned and scored.

Writes circuit-tracer's graph JSON (`--json`), a static HTML view (`--html`) and mechscope's
own safetensors + JSON form (`--out DIR`), and prints the targets, the scores of the unpruned
and pruned graphs and the most influential features.

Example:
    $ mechscope graph "The capital of the state containing Dallas is" --transcoders out/plt \\
        --json g.json --html g.html
"""

from __future__ import annotations

import argparse

from mechscope.apps.commands.common import add_model_option, check_outputs, load


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope graph` (an attribution graph over a transcoder replacement model) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['graph', 'The capital of Texas is', '--transcoders', 'out/plt']).transcoders
        'out/plt'
    """
    parser = subparsers.add_parser("graph", help="attribution graph of the next token over a transcoder replacement model")
    parser.add_argument("prompt", help="the text whose next token is explained")
    parser.add_argument("--transcoders", required=True, help="a transcoder set folder (mechscope transcoders train)")
    parser.add_argument("--max-feature-nodes", type=int, default=1024, help="feature nodes visited (by influence)")
    parser.add_argument("--batch-size", type=int, default=64, help="targets per backward pass")
    parser.add_argument("--max-logits", type=int, default=10)
    parser.add_argument("--logit-prob", type=float, default=0.95, help="cumulative probability of the logit targets")
    parser.add_argument("--node-threshold", type=float, default=0.8)
    parser.add_argument("--edge-threshold", type=float, default=0.98)
    parser.add_argument("--slug", default=None, help="graph name in the JSON (default: from the prompt)")
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="circuit-tracer graph JSON")
    parser.add_argument("--html", dest="html_path", default=None, metavar="PATH", help="static HTML view")
    parser.add_argument("--features", nargs="+", default=[], metavar="DB",
                        help="feature databases of the transcoders (features collect): the HTML view's hover examples")
    parser.add_argument("--out", default=None, metavar="DIR", help="mechscope's own form (safetensors + JSON)")
    parser.add_argument("--force", action="store_true", help="overwrite files that mechscope did not write")
    add_model_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `mechscope graph`: attribute the next token of the prompt, prune the graph and write it; returns 0.

    Example:
        $ mechscope graph "The capital of the state containing Dallas is" --transcoders out/plt --json g.json --html g.html
    """
    import re

    from mechscope.apps.graph_view import graph_html
    from mechscope.circuits.attribution import attribute
    from mechscope.circuits.export import dictionary_links, graph_json
    from mechscope.circuits.graph import influence
    from mechscope.core.files import write_json, write_text
    from mechscope.core.provenance import provenance
    from mechscope.dictionaries.transcoder_set import load_transcoder_set

    check_outputs(args)
    tcs = load_transcoder_set(args.transcoders)
    model = load(args)
    graph = attribute(model, tcs, args.prompt, max_n_logits=args.max_logits, desired_logit_prob=args.logit_prob,
                      batch_size=args.batch_size, max_feature_nodes=args.max_feature_nodes, progress=True)
    slug = args.slug or re.sub(r"[^a-z0-9]+", "-", args.prompt.lower()).strip("-")[:40] or "graph"
    prov = provenance(model, transcoders=str(args.transcoders))
    doc = graph_json(graph, slug=slug, scan=f"mechscope-{tcs.kind}", d_vocab=model.lm_head.weight.shape[0],
                     node_threshold=args.node_threshold, edge_threshold=args.edge_threshold, provenance=prov,
                     dictionaries=dictionary_links(tcs, args.transcoders))
    if args.json_path:
        write_json(args.json_path, doc, force=args.force)
    if args.html_path:
        write_text(args.html_path, graph_html(doc, title=f"Attribution graph: {args.prompt}", databases=args.features),
                   force=args.force)
    if args.out:
        graph.save(args.out, provenance=prov, force=args.force)
    scores = doc["mechscope"]["scores"]
    print(f"{graph.n_pos} tokens, {graph.info['n_active_features']} active features, {graph.n_features} visited, "
          f"{graph.info['backward_passes']} backward passes")
    print("targets: " + ", ".join(f"{label!r} p={p:.3f}" for label, p in
                                  zip(graph.logit_labels, graph.logit_probabilities.tolist(), strict=True)))
    for name, s in scores.items():
        print(f"{name} graph: replacement score {s['replacement']:.3f}, completeness score {s['completeness']:.3f}")
    print(f"pruned graph: {doc['mechscope']['n_nodes']['pruned']} nodes, {doc['mechscope']['n_links']} links")
    node_influence = influence(graph.adjacency, graph.logit_weights())
    top = node_influence[:graph.n_features].argsort(descending=True)[:8].tolist()
    print("most influential features: " + ", ".join(f"{graph.node_label(i)} ({float(node_influence[i]):.3f})"
                                                    for i in top))
    errors = float(node_influence[graph.error_slice].sum())
    print(f"influence of all error nodes {errors:.3f}, of all features "
          f"{float(node_influence[:graph.n_features].sum()):.3f}, of all tokens "
          f"{float(node_influence[graph.token_slice].sum()):.3f}")
    return 0
