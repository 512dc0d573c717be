"""An attribution graph as circuit-tracer's graph JSON (schema version 1), the file its front-end opens.

The pruned graph (`prune`, node 0.8 / edge 0.98 by default) becomes `nodes` and `links` with
circuit-tracer's ids: feature `"{layer}_{feature}_{pos}"`, error `"0_{layer}_{pos}"`, token
`"E_{token_id}_{pos}"`, logit `"{n_layers + 1}_{token_id}_{last_pos}"` (a custom direction
gets the virtual id `d_vocab + k`, as circuit-tracer gives it). Each node's `influence` is its
cumulative influence share (none for logits, as in circuit-tracer); `metadata` holds the prompt, its tokens, both thresholds and
`schema_version`; a `provenance` block and mechscope's `scores` ride along as extra keys that
the schema ignores. `mechscope.dictionaries` links each layer's feature nodes to their transcoder
(`dictionary_links`: its `weights_hash`, which `features collect` records as the feature
database's `dictionary_sha256`), so a viewer can find the database of a node's latent.

Example:
    >>> doc = graph_json(graph, slug="dallas", scan="smollm2-plt", d_vocab=model.cfg.d_vocab)  # doctest: +SKIP
    >>> sorted(doc)                                                       # doctest: +SKIP
    ['links', 'mechscope', 'metadata', 'nodes', 'provenance', 'qParams']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechscope.circuits.graph import AttributionGraph, prune, pruned_scores
from mechscope.circuits.graph import graph_scores as scores_of
from mechscope.core.provenance import weights_hash

SCHEMA_VERSION = 1


def dictionary_links(transcoders: Any, folder: str | Path | None = None) -> list[dict[str, Any]]:
    """Per layer of a per-layer transcoder set: `{layer, dictionary_sha256, hook_name, d_sae[, path]}`.

    A node `"{layer}_{feature}_{pos}"` is latent `feature` of that layer's transcoder; a feature
    database collected over it records the same `dictionary_sha256`. Sets without one dictionary
    per layer (a cross-layer transcoder) give `[]`.

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=8, d_sae=16, d_out=8, seed=i,
        ...     hook_name=f"blocks.{i}.ln2.hook_normalized", hook_name_out=f"blocks.{i}.hook_mlp_out")
        ...     for i in range(2)])
        >>> link = dictionary_links(transcoders, "out/plt")[1]
        >>> link["layer"], link["hook_name"], link["d_sae"], link["path"], len(link["dictionary_sha256"])
        (1, 'blocks.1.ln2.hook_normalized', 16, 'out/plt/layer_1', 64)
        >>> dictionary_links(object())                          # no per-layer dictionaries
        []
    """
    per_layer = getattr(transcoders, "transcoders", None)
    if per_layer is None:
        return []
    return [{"layer": layer, "dictionary_sha256": weights_hash(t), "hook_name": t.cfg.hook_name, "d_sae": t.cfg.d_sae,
             **({"path": str(Path(folder) / f"layer_{layer}")} if folder is not None else {})}
            for layer, t in enumerate(per_layer)]


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _nodes(graph: AttributionGraph, keep: list[int], cumulative: list[float], d_vocab: int) -> dict[int, dict[str, Any]]:
    nodes: dict[int, dict[str, Any]] = {}
    nf, L, P = graph.n_features, graph.n_layers, graph.n_pos
    for i in keep:
        base = {"influence": cumulative[i], "clerp": "", "token_prob": 0.0, "is_target_logit": False,
                "run_idx": 0, "reverse_ctx_idx": 0, "activation": None}
        if i < nf:
            layer, pos, feat = graph.active_features[graph.selected_features[i]].tolist()
            node = {"node_id": f"{layer}_{feat}_{pos}", "feature": _cantor(layer, feat), "layer": str(layer),
                    "ctx_idx": pos, "feature_type": "cross layer transcoder", "jsNodeId": f"{layer}_{feat}-0",
                    "activation": float(graph.activation_values[graph.selected_features[i]])}
        elif i < graph.error_slice.stop:
            layer, pos = divmod(i - nf, P)
            node = {"node_id": f"0_{layer}_{pos}", "feature": -1, "layer": str(layer), "ctx_idx": pos,
                    "feature_type": "mlp reconstruction error", "jsNodeId": f"{layer}_{pos}-0"}
        elif i < graph.token_slice.stop:
            pos = i - graph.token_slice.start
            tok = int(graph.input_tokens[pos])
            node = {"node_id": f"E_{tok}_{pos}", "feature": pos, "layer": "E", "ctx_idx": pos,
                    "feature_type": "embedding", "jsNodeId": f"E_{tok}-{pos}"}
        else:
            k = i - graph.token_slice.stop
            tok = int(graph.logit_tokens[k])
            vocab = tok if tok >= 0 else d_vocab + k
            prob = float(graph.logit_probabilities[k])
            node = {"node_id": f"{L + 1}_{vocab}_{P - 1}", "feature": vocab, "layer": str(L + 1), "ctx_idx": P - 1,
                    "feature_type": "logit", "influence": None, "token_prob": prob, "is_target_logit": k == 0,
                    "jsNodeId": f"L_{vocab}-{P - 1}", "clerp": f'Output "{graph.logit_labels[k]}" (p={prob:.3f})'}
        nodes[i] = {**base, **node}
    return nodes


def graph_json(graph: AttributionGraph, *, slug: str, scan: str, d_vocab: int, node_threshold: float = 0.8,
               edge_threshold: float = 0.98, provenance: dict[str, Any] | None = None,
               dictionaries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The pruned `graph` as a circuit-tracer graph document (see the module docstring);
    `dictionaries` is `dictionary_links(transcoders)` of the set the graph was attributed over.

    Example:
        >>> import torch
        >>> # the hand-built graph of `AttributionGraph`'s example (one feature, two positions, one logit)
        >>> A = torch.zeros(6, 6); A[0, 4] = 2.0; A[5, 0] = 3.0; A[5, 2] = 1.0; A[5, 4] = 1.0
        >>> graph = AttributionGraph("a b", torch.tensor([0, 1]), ["a", " b"], 1, torch.tensor([[0, 1, 7]]),
        ...                          torch.tensor([2.0]), torch.tensor([0]), A, torch.tensor([3]),
        ...                          torch.tensor([1.0]), [" c"])
        >>> doc = graph_json(graph, slug="toy", scan="toy", d_vocab=9)
        >>> [n["node_id"] for n in doc["nodes"]]               # the error node is pruned
        ['0_7_1', 'E_0_0', 'E_1_1', '2_3_1']
        >>> [(link["source"], link["target"], link["weight"]) for link in doc["links"]]
        [('E_1_1', '0_7_1', 2.0), ('0_7_1', '2_3_1', 3.0), ('E_1_1', '2_3_1', 1.0)]

        On the default model and a set trained by `mechscope transcoders train`:

        >>> from mechscope import load_model
        >>> from mechscope.circuits.attribution import attribute
        >>> from mechscope.dictionaries.transcoder_set import load_transcoder_set
        >>> model, transcoders = load_model(), load_transcoder_set("out/plt")                            # doctest: +SKIP
        >>> graph = attribute(model, transcoders, "The capital of the state containing Dallas is")      # doctest: +SKIP
        >>> doc = graph_json(graph, slug="dallas", scan="smollm2-plt", d_vocab=model.cfg.d_vocab,      # doctest: +SKIP
        ...                  dictionaries=dictionary_links(transcoders))
        >>> doc["metadata"]["slug"]                                                                     # doctest: +SKIP
        'dallas'
    """
    pruned = prune(graph, node_threshold, edge_threshold)
    keep = pruned.node_mask.nonzero().squeeze(1).tolist()
    nodes = _nodes(graph, keep, pruned.cumulative_scores.tolist(), d_vocab)
    targets, sources = pruned.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[targets, sources].tolist()
    links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": w}
             for t, s, w in zip(targets.tolist(), sources.tolist(), weights, strict=True) if s in nodes and t in nodes]
    linked = {x for link in links for x in (link["source"], link["target"])}
    used = [n for n in nodes.values() if n["node_id"] in linked or n["feature_type"] in ("embedding", "logit")]
    full, kept = scores_of(graph), pruned_scores(graph, pruned)
    return {
        "metadata": {"slug": slug, "scan": scan, "transcoder_list": [], "prompt_tokens": graph.token_strings,
                     "prompt": graph.prompt, "node_threshold": node_threshold, "edge_threshold": edge_threshold,
                     "schema_version": SCHEMA_VERSION},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": used,
        "links": links,
        "mechscope": {"scores": {"unpruned": full._asdict(), "pruned": kept._asdict()},
                      "n_nodes": {"unpruned": int(graph.adjacency.shape[0]), "pruned": len(used)},
                      "n_links": len(links), "info": graph.info,
                      "dictionaries": dictionaries or []},
        "provenance": provenance or {},
    }
