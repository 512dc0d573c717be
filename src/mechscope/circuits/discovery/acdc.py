"""ACDC (Conmy et al. 2023): prune the component graph edge by edge.

Destinations are visited in reverse topological order (logits first, then each layer from
the last: its MLP input, then its heads' v, k, q inputs). Each incoming edge still in the
circuit is tentatively corrupted; the removal stays when the objective rises by less than
the threshold `tau`. Objectives: `kl` (mean KL divergence from the clean model's next-token
distribution to the circuit's, at each pair's metric position) or `metric`
(`m(clean) - m(circuit)`). When a node has no outgoing edge left, its incoming edges cannot
matter and are removed without evaluation.

Incremental evaluation: a candidate removal into layer `l` reruns only layers `l..` on top
of the current circuit's cached run (`GraphModel.trace`); `check=True` also evaluates every
candidate from scratch and records the largest difference.

Threshold sweep: thresholds run in increasing order, each starting from the previous
circuit, so circuits are nested and the edge count never grows with the threshold. An
edge's score is the largest threshold at which it survives (0 if it never does).

Example:
    >>> result = acdc(gm, pairs, thresholds=[0.01, 0.03, 0.1])   # doctest: +SKIP
    >>> result.counts, result.scores.top(5)                         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechscope.circuits.discovery.corruption import Corruption
from mechscope.circuits.discovery.graph_run import GraphModel, Trace
from mechscope.circuits.discovery.scores import EdgeScores
from mechscope.circuits.discovery.select import node_of_dest
from mechscope.circuits.discovery.tasks import Pairs
from mechscope.core.errors import MechscopeError, unknown_name_message

OBJECTIVES = ("kl", "metric")


@dataclass
class ACDCResult:
    """Circuits of a threshold sweep (`masks[i]` at `thresholds[i]`) and per-edge scores.

    Example:
        >>> from mechscope.circuits.discovery.graph_run import GraphModel
        >>> from mechscope import HookedModel
        >>> from mechscope.circuits.discovery.induction import induction_pairs
        >>> from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
        >>> toy = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=21, hidden_size=16, num_attention_heads=2))
        >>> gm, pairs = GraphModel(HookedModel(toy, name="toy")), induction_pairs(n=4, span=6, n_tokens=20)
        >>> result = acdc(gm, pairs, thresholds=[0.0, 1e9])
        >>> result.thresholds, result.counts[1]                        # an unreachable threshold keeps no edge
        ([0.0, 1000000000.0], 0)
    """

    thresholds: list[float]
    masks: list[Tensor]
    scores: EdgeScores
    evaluations: int = 0
    max_scratch_difference: float | None = None
    history: list[dict] = field(default_factory=list)

    @property
    def counts(self) -> list[int]:
        return [int(m.sum()) for m in self.masks]


class _Objective:
    def __init__(self, pairs: Pairs, clean_logits: Tensor, kind: str) -> None:
        if kind not in OBJECTIVES:
            raise MechscopeError(unknown_name_message("ACDC objective", kind, list(OBJECTIVES)))
        self.pairs, self.kind = pairs, kind
        last = pairs.last_logits(clean_logits).double()
        self.clean_logp = last.log_softmax(-1)
        self.clean_metric = pairs.metric(clean_logits).double()

    def __call__(self, logits: Tensor) -> float:
        if self.kind == "metric":
            return float((self.clean_metric - self.pairs.metric(logits).double()).mean())
        logp = self.pairs.last_logits(logits).double().log_softmax(-1)
        return float((self.clean_logp.exp() * (self.clean_logp - logp)).sum(-1).mean())


def _dest_layer(gm: GraphModel, d: int) -> int:
    g = gm.graph
    return g.n_layers if d == g.logits_dest else d // g.dests_per_layer


def acdc(gm: GraphModel, pairs: Pairs, thresholds: Sequence[float], objective: str = "kl",
         corruption: str = "paired", start_mask: Tensor | None = None, check: bool = False,
         progress: bool = False, seed: int = 0) -> ACDCResult:
    """Run ACDC over `thresholds` (see the module docstring); all pairs form one batch.

    Example:
        >>> from mechscope.circuits.discovery.graph_run import GraphModel
        >>> from mechscope import HookedModel
        >>> from mechscope.circuits.discovery.induction import induction_pairs
        >>> from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
        >>> toy = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=21, hidden_size=16, num_attention_heads=2))
        >>> gm, pairs = GraphModel(HookedModel(toy, name="toy")), induction_pairs(n=4, span=6, n_tokens=20)
        >>> result = acdc(gm, pairs, thresholds=[0.01], objective="kl")
        >>> result.masks[0].shape == (gm.graph.n_dests, gm.graph.n_sources)
        True
    """
    if not thresholds or any(t < 0 for t in thresholds):
        raise MechscopeError("ACDC needs one or more non-negative thresholds.")
    g = gm.graph
    taus = sorted(float(t) for t in thresholds)
    corrupt = Corruption(gm, pairs, corruption, seed=seed).values(slice(0, len(pairs)))
    ids, attn = pairs.clean, pairs.attention_mask
    with torch.no_grad():
        objective_fn = _Objective(pairs, gm.run(ids, attn, None, None), objective)
    mask = (g.valid.clone() if start_mask is None else start_mask.bool() & g.valid)
    dtype = gm.model.dtype

    def run(current: Trace | None, start: int) -> Trace:
        return gm.trace(ids, attn, mask.to(dtype), corrupt, start=start, prefix=current)

    masks, survived = [], torch.zeros(g.n_dests, g.n_sources, dtype=torch.float64)
    evaluations, worst, history = 0, 0.0 if check else None, []
    for tau in taus:
        current = run(None, 0)
        loss = objective_fn(current.logits)
        for d in tqdm(range(g.n_dests - 1, -1, -1), desc=f"ACDC tau={tau:g}", disable=not progress):
            node = node_of_dest(g, d)
            if d != g.logits_dest and not bool(mask[:, node].any()):
                if bool(mask[d].any()):  # an unused node: its inputs cannot matter
                    mask[d] = False
                    current = run(None, 0)
                continue
            layer = _dest_layer(gm, d)
            for s in range(g.n_upstream(d) - 1, -1, -1):
                if not mask[d, s]:
                    continue
                mask[d, s] = False
                candidate = run(current, layer)
                new_loss = objective_fn(candidate.logits)
                evaluations += 1
                if check:
                    scratch = objective_fn(run(None, 0).logits)
                    worst = max(worst, abs(scratch - new_loss))
                removed = new_loss - loss < tau
                history.append({"tau": tau, "edge": g.edge_name(d, s), "loss": new_loss, "removed": removed})
                if removed:
                    current, loss = candidate, new_loss
                else:
                    mask[d, s] = True
        masks.append(mask.clone())
        survived[mask] = tau
    scores = EdgeScores(g, survived, "acdc", {"objective": objective, "corruption": corruption,
                                              "thresholds": taus, "n_pairs": len(pairs)})
    return ACDCResult(taus, masks, scores, evaluations, worst, history)
