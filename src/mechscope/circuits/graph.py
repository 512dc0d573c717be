"""Attribution graphs: the data, influence on the logits, pruning, and the two graph scores.

Node order (circuit-tracer's): the selected feature nodes (in the order of `active_features`),
then one error node per (layer, position), layer-major, then one token node per position,
then the logit targets. `adjacency[target, source]` is the direct linear effect of the
source on the target (rows are targets).

Definitions (each pinned by a test against circuit-tracer 0.5.0's own functions):

- `normalize(A) = |A| / rowsum(|A|)` (rows with sum 0 stay 0);
- influence of every node on the logits: `w (Â + Â^2 + ...) = w ((I - Â)^-1 - I)` with `Â`
  the normalised adjacency and `w` the logit probabilities on the logit rows; the series
  ends because the graph is acyclic;
- node pruning keeps the nodes whose influence is at least the score at which the sorted
  cumulative influence reaches `node_threshold`, plus every token and logit; edge pruning does
  the same with edge scores `Â' * (influence' + w)[target]` of the node-pruned graph and
  `edge_threshold`; then feature and error nodes without kept outgoing edges, and feature
  nodes without kept incoming edges, are removed until nothing changes;
- replacement score: influence of tokens / (influence of tokens + influence of errors);
- completeness score: `sum_n (1 - error share of n's normalised inputs) (influence_n + w_n) /
  sum_n (influence_n + w_n)`.

Example:
    >>> A = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 3.0, 0.0]])
    >>> influence(A, torch.tensor([0.0, 0.0, 1.0]))
    tensor([1.0000, 0.7500, 0.0000])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mechscope.core.errors import MechscopeError
from mechscope.core.files import atomic_write_bytes, claim_output_dir

GRAPH_TENSORS = "graph.safetensors"
GRAPH_JSON = "graph.json"
FORMAT_VERSION = 1


@dataclass
class AttributionGraph:
    """An attribution graph (see the module docstring for the node order).

    `active_features [n_active, 3]` holds (layer, pos, feature) of every active feature,
    `activation_values [n_active]` their activations, `selected_features [n_selected]` indices
    into `active_features` of the feature nodes, `adjacency [n_nodes, n_nodes]`,
    `logit_tokens [n_logits]` (a negative id marks a custom direction), `logit_probabilities`
    (the weights `w`), `logit_labels` their strings.

    Example:
        >>> # one feature, one layer, two positions, one logit: nodes feature, 2 errors, 2 tokens, logit
        >>> A = torch.zeros(6, 6); A[0, 4] = 2.0; A[5, 0] = 3.0; A[5, 2] = 1.0; A[5, 4] = 1.0
        >>> graph = AttributionGraph("a b", torch.tensor([0, 1]), ["a", " b"], 1, torch.tensor([[0, 1, 7]]),
        ...                          torch.tensor([2.0]), torch.tensor([0]), A, torch.tensor([3]),
        ...                          torch.tensor([1.0]), [" c"])
        >>> [graph.node_label(i) for i in range(6)]
        ['L0 F7 @1', 'err L0 @0', 'err L0 @1', "tok 'a' @0", "tok ' b' @1", "logit ' c'"]
        >>> graph.n_features, graph.error_slice, graph.token_slice
        (1, slice(1, 3, None), slice(3, 5, None))
    """

    prompt: str
    input_tokens: Tensor
    token_strings: list[str]
    n_layers: int
    active_features: Tensor
    activation_values: Tensor
    selected_features: Tensor
    adjacency: Tensor
    logit_tokens: Tensor
    logit_probabilities: Tensor
    logit_labels: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return int(self.input_tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.selected_features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.shape[0])

    @property
    def error_slice(self) -> slice:
        return slice(self.n_features, self.n_features + self.n_layers * self.n_pos)

    @property
    def token_slice(self) -> slice:
        start = self.error_slice.stop
        return slice(start, start + self.n_pos)

    def logit_weights(self) -> Tensor:
        """`w`: zeros with the logit probabilities on the logit rows."""
        w = torch.zeros(self.adjacency.shape[0], dtype=self.adjacency.dtype)
        w[-self.n_logits:] = self.logit_probabilities.to(w.dtype)
        return w

    def node_label(self, index: int) -> str:
        """A short readable name: `L3 F17 @5`, `err L3 @5`, `tok 'Paris' @5`, `logit ' Paris'`."""
        if index < self.n_features:
            layer, pos, feat = self.active_features[self.selected_features[index]].tolist()
            return f"L{layer} F{feat} @{pos}"
        if index < self.error_slice.stop:
            layer, pos = divmod(index - self.n_features, self.n_pos)
            return f"err L{layer} @{pos}"
        if index < self.token_slice.stop:
            pos = index - self.token_slice.start
            return f"tok {self.token_strings[pos]!r} @{pos}"
        return f"logit {self.logit_labels[index - self.token_slice.stop]!r}"

    # -- files -------------------------------------------------------------------------------
    def save(self, folder: str | Path, *, provenance: dict[str, Any], force: bool = False) -> Path:
        """mechscope's own form: `graph.safetensors` (tensors) + `graph.json` (the rest, with provenance).

        The folder must be new, empty or mechscope's (a foreign non-empty folder needs `force`)."""
        folder = claim_output_dir(folder, force=force)
        tensors = {"input_tokens": self.input_tokens, "active_features": self.active_features,
                   "activation_values": self.activation_values, "selected_features": self.selected_features,
                   "adjacency": self.adjacency, "logit_tokens": self.logit_tokens,
                   "logit_probabilities": self.logit_probabilities}
        meta = {"format_version": FORMAT_VERSION, "prompt": self.prompt, "token_strings": self.token_strings,
                "n_layers": self.n_layers, "logit_labels": self.logit_labels, "info": self.info,
                "provenance": provenance}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / GRAPH_TENSORS))
        atomic_write_bytes(folder / GRAPH_JSON, json.dumps(meta, indent=1).encode())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> AttributionGraph:
        """Read a graph written by `save`."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / GRAPH_JSON).read_text())
            t = load_file(str(folder / GRAPH_TENSORS))
        except (OSError, ValueError) as err:
            raise MechscopeError(f"{folder} does not hold a readable attribution graph: {err}") from err
        return cls(prompt=meta["prompt"], input_tokens=t["input_tokens"], token_strings=meta["token_strings"],
                   n_layers=meta["n_layers"], active_features=t["active_features"],
                   activation_values=t["activation_values"], selected_features=t["selected_features"],
                   adjacency=t["adjacency"], logit_tokens=t["logit_tokens"],
                   logit_probabilities=t["logit_probabilities"], logit_labels=meta["logit_labels"],
                   info=meta.get("info", {}))


def normalize(adjacency: Tensor) -> Tensor:
    """`|A|` with each row divided by its sum (rows summing to 0 stay 0).

    Example:
        >>> normalize(torch.tensor([[0.0, 0.0], [-3.0, 1.0]]))
        tensor([[0.0000, 0.0000],
                [0.7500, 0.2500]])
    """
    a = adjacency.abs()
    return a / a.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence_series(normalized: Tensor, weights: Tensor, max_iter: int = 10_000) -> Tensor:
    """`w A + w A^2 + ...` for an acyclic (nilpotent) `A`; an error if it does not terminate.

    Example:
        >>> A = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])   # 2 reads 0 and 1, 1 reads 0
        >>> influence_series(A, torch.tensor([0.0, 0.0, 1.0]))
        tensor([1.0000, 0.5000, 0.0000])
        >>> influence_series(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1.0, 0.0]), max_iter=10)
        Traceback (most recent call last):
        ...
        mechscope.core.errors.MechscopeError: influence did not converge in 10 steps: the adjacency has a cycle
    """
    term = weights @ normalized
    total = term.clone()
    for _ in range(max_iter):
        if not term.any():
            return total
        term = term @ normalized
        total += term
    raise MechscopeError(f"influence did not converge in {max_iter} steps: the adjacency has a cycle")


def influence(adjacency: Tensor, weights: Tensor) -> Tensor:
    """Influence of every node on the weighted targets: `w ((I - Â)^-1 - I)`, `Â = normalize(A)`.

    Example:
        >>> # node 2 reads node 0 with weight 1 and node 1 with weight 3; node 1 reads node 0
        >>> A = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 3.0, 0.0]])
        >>> influence(A, torch.tensor([0.0, 0.0, 1.0]))
        tensor([1.0000, 0.7500, 0.0000])
    """
    return influence_series(normalize(adjacency), weights)


def _threshold(scores: Tensor, fraction: float) -> Tensor:
    """The score at which the descending cumulative share of `scores` first reaches `fraction`."""
    ordered = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(ordered, 0) / ordered.sum()
    index = min(int(torch.searchsorted(cumulative, fraction)), len(cumulative) - 1)
    return ordered[index]


class Pruned(NamedTuple):
    """Boolean `node_mask [n]` and `edge_mask [n, n]`, and each node's cumulative influence share.

    Example:
        >>> # the small error node of `AttributionGraph`'s example is pruned
        >>> A = torch.zeros(6, 6); A[0, 4] = 2.0; A[5, 0] = 3.0; A[5, 2] = 1.0; A[5, 4] = 1.0
        >>> graph = AttributionGraph("a b", torch.tensor([0, 1]), ["a", " b"], 1, torch.tensor([[0, 1, 7]]),
        ...                          torch.tensor([2.0]), torch.tensor([0]), A, torch.tensor([3]),
        ...                          torch.tensor([1.0]), [" c"])
        >>> kept = prune(graph)
        >>> kept.node_mask.tolist(), int(kept.edge_mask.sum())
        ([True, False, False, True, True, True], 3)
    """

    node_mask: Tensor
    edge_mask: Tensor
    cumulative_scores: Tensor


def prune(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Node then edge pruning by cumulative influence, then removal of dangling nodes (module docstring).

    Example:
        >>> # the graph of `AttributionGraph`'s example; tokens and logits are always kept
        >>> A = torch.zeros(6, 6); A[0, 4] = 2.0; A[5, 0] = 3.0; A[5, 2] = 1.0; A[5, 4] = 1.0
        >>> graph = AttributionGraph("a b", torch.tensor([0, 1]), ["a", " b"], 1, torch.tensor([[0, 1, 7]]),
        ...                          torch.tensor([2.0]), torch.tensor([0]), A, torch.tensor([3]),
        ...                          torch.tensor([1.0]), [" c"])
        >>> prune(graph, node_threshold=0.8, edge_threshold=0.98).node_mask.tolist()
        [True, False, False, True, True, True]
        >>> prune(graph, node_threshold=1.5)
        Traceback (most recent call last):
        ...
        mechscope.core.errors.MechscopeError: node_threshold must be between 0 and 1, got 1.5
    """
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise MechscopeError(f"{name} must be between 0 and 1, got {value}")
    A = graph.adjacency
    w = graph.logit_weights()
    n_keep_always = graph.n_logits + graph.n_pos
    node_influence = influence(A, w)
    node_mask = node_influence >= _threshold(node_influence, node_threshold)
    node_mask[-n_keep_always:] = True
    pruned = A.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    normalized = normalize(pruned)
    edge_scores = normalized * (influence_series(normalized, w) + w)[:, None]
    edge_mask = edge_scores >= _threshold(edge_scores.flatten(), edge_threshold)
    nf = graph.n_features
    previous: Tensor | None = None
    while previous is None or not torch.equal(previous, node_mask):
        if previous is not None:  # drop the edges of nodes removed by the last sweep
            edge_mask[~node_mask] = False
            edge_mask[:, ~node_mask] = False
        previous = node_mask.clone()
        node_mask[:-n_keep_always] &= edge_mask[:, :-n_keep_always].any(0)  # features/errors need an out-edge
        node_mask[:nf] &= edge_mask[:nf].any(1)  # features need an in-edge
    ordered, order = torch.sort(node_influence, descending=True)
    cumulative = torch.zeros_like(node_influence)
    cumulative[order] = torch.cumsum(ordered, 0) / ordered.sum()
    return Pruned(node_mask, edge_mask, cumulative)


class Scores(NamedTuple):
    """The replacement and completeness scores of a graph (module docstring), each between 0 and 1.

    Example:
        >>> Scores(replacement=0.8, completeness=0.92).replacement
        0.8
    """

    replacement: float
    completeness: float


def graph_scores(graph: AttributionGraph, adjacency: Tensor | None = None) -> Scores:
    """Replacement and completeness scores (module docstring) of `graph`, or of `adjacency` on its nodes.

    Example:
        >>> # the graph of `AttributionGraph`'s example: tokens carry 0.8 of the influence, the error 0.2
        >>> A = torch.zeros(6, 6); A[0, 4] = 2.0; A[5, 0] = 3.0; A[5, 2] = 1.0; A[5, 4] = 1.0
        >>> graph = AttributionGraph("a b", torch.tensor([0, 1]), ["a", " b"], 1, torch.tensor([[0, 1, 7]]),
        ...                          torch.tensor([2.0]), torch.tensor([0]), A, torch.tensor([3]),
        ...                          torch.tensor([1.0]), [" c"])
        >>> scores = graph_scores(graph)
        >>> round(scores.replacement, 3), round(scores.completeness, 3)
        (0.8, 0.923)
    """
    A = graph.adjacency if adjacency is None else adjacency
    w = graph.logit_weights()
    normalized = normalize(A)
    node_influence = influence_series(normalized, w)
    tokens = node_influence[graph.token_slice].sum()
    errors = node_influence[graph.error_slice].sum()
    replacement = tokens / (tokens + errors)
    non_error = 1 - normalized[:, graph.error_slice].sum(-1)
    weight = node_influence + w
    completeness = (non_error * weight).sum() / weight.sum()
    return Scores(float(replacement), float(completeness))


def pruned_scores(graph: AttributionGraph, pruned: Pruned) -> Scores:
    """The scores of the pruned graph: its kept edges only (dropped edges count as absent).

    Example:
        >>> # pruning the error node of `AttributionGraph`'s example leaves a graph with no error path
        >>> A = torch.zeros(6, 6); A[0, 4] = 2.0; A[5, 0] = 3.0; A[5, 2] = 1.0; A[5, 4] = 1.0
        >>> graph = AttributionGraph("a b", torch.tensor([0, 1]), ["a", " b"], 1, torch.tensor([[0, 1, 7]]),
        ...                          torch.tensor([2.0]), torch.tensor([0]), A, torch.tensor([3]),
        ...                          torch.tensor([1.0]), [" c"])
        >>> pruned_scores(graph, prune(graph))
        Scores(replacement=1.0, completeness=1.0)
    """
    return graph_scores(graph, graph.adjacency * pruned.edge_mask)
