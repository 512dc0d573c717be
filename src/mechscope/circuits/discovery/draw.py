"""A circuit drawn as a layered graph: the input on the left, one column per layer's heads and
MLP, the logits on the right; edge colour is the score's sign, width its size, line style the
input it enters (solid: MLP or logits, dashed: query, dash-dot: key, dotted: value).

Example:
    >>> fig = circuit_figure(scores, mask, title="IOI, EAP-IG")   # doctest: +SKIP
    >>> png = figure_png(fig)                                      # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mechscope.circuits.discovery.component_graph import ComponentGraph
from mechscope.circuits.discovery.scores import EdgeScores
from mechscope.circuits.discovery.select import circuit_nodes

STYLES = {"q": "--", "k": "-.", "v": ":"}


def node_positions(g: ComponentGraph) -> dict[str, tuple[float, float]]:
    """(x, y) of every node: columns by layer (heads, then MLP), rows by head.

    Example:
        >>> node_positions(ComponentGraph(n_layers=1, n_heads=2))
        {'input': (0.0, 0.5), 'a0.h0': (1.0, 1.0), 'a0.h1': (1.0, 0.0), 'm0': (2.0, 0.5), 'logits': (3.0, 0.5)}
    """
    mid = (g.n_heads - 1) / 2
    pos = {"input": (0.0, mid)}
    for layer in range(g.n_layers):
        x = 1 + layer * (2 if g.has_mlp else 1)
        for h in range(g.n_heads):
            pos[f"a{layer}.h{h}"] = (float(x), float(g.n_heads - 1 - h))
        if g.has_mlp:
            pos[f"m{layer}"] = (x + 1.0, mid)
    pos["logits"] = (1.0 + g.n_layers * (2 if g.has_mlp else 1), mid)
    return pos


def circuit_figure(scores: EdgeScores, mask: Tensor, title: str = "") -> Any:
    """A matplotlib figure of the edges in `mask`, weighted by `scores`.

    Example:
        >>> from mechscope.circuits.discovery.scores import EdgeScores
        >>> g = ComponentGraph(n_layers=1, n_heads=2)
        >>> scores = EdgeScores(g, g.valid.double(), "example")
        >>> fig = circuit_figure(scores, g.valid, title="every edge")
        >>> type(fig).__name__
        'Figure'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = scores.graph
    pos = node_positions(g)
    nodes = circuit_nodes(g, mask)
    width = max(6.0, 0.35 * (g.n_layers * (2 if g.has_mlp else 1) + 2))
    fig, ax = plt.subplots(figsize=(width, max(3.0, 0.45 * g.n_heads + 1.5)))
    edges = mask.nonzero().tolist()
    top = float(scores.scores.abs()[mask].max()) if edges else 1.0
    for d, s in edges:
        value = float(scores.scores[d, s])
        dest = g.dest_names[d]
        which = dest.rsplit(".", 1)[-1] if dest.count(".") == 2 else ""
        (x0, y0), (x1, y1) = pos[g.source_names[s]], pos[g.dest_node(d)]
        ax.plot([x0, x1], [y0, y1], linestyle=STYLES.get(which, "-"), color="tab:blue" if value >= 0 else "tab:red",
                linewidth=0.4 + 3.0 * abs(value) / (top or 1.0), alpha=0.7, zorder=1)
    for name in nodes:
        x, y = pos[name]
        ax.scatter([x], [y], s=140, color="white", edgecolors="black", zorder=2)
        ax.annotate(name, (x, y), fontsize=6, ha="center", va="center", zorder=3)
    ax.set_xticks([pos[f"a{layer}.h0"][0] for layer in range(g.n_layers)], [str(i) for i in range(g.n_layers)],
                  fontsize=6)
    ax.set_xlabel("layer (heads; MLP to the right)")
    ax.set_yticks([])
    ax.set_title(title or f"{len(edges)} edges, {len(nodes)} nodes ({scores.method}); blue +, red -", fontsize=9)
    fig.tight_layout()
    return fig
