"""Evaluating a circuit: its metric with every other edge corrupted, and normalised faithfulness.

Edges outside the circuit carry their source's corrupted value (paired prompt, zero, mean or
resample; see `corruption.py`); circuit edges carry the circuit run's own values. The
faithfulness is the normalized recovery (`mechscope.core.scores`)
`(m(circuit) - m(corrupted)) / (m(clean) - m(corrupted))`, where `m(corrupted)` is the empty
circuit (every edge corrupted; for paired prompts exactly the corrupt run) and `m(clean)` the
full model; 1 means the circuit alone does the task. It is an error when the full model and
the empty circuit score the same (the task does not tell them apart).

Example:
    >>> ev = evaluate(gm, pairs, top_n(scores, 200))          # doctest: +SKIP
    >>> ev.faithfulness                                        # doctest: +SKIP
    0.83
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechscope.circuits.discovery.corruption import Corruption
from mechscope.circuits.discovery.eap import batches
from mechscope.circuits.discovery.graph_run import GraphModel
from mechscope.circuits.discovery.scores import EdgeScores
from mechscope.circuits.discovery.select import prune, top_n
from mechscope.circuits.discovery.tasks import Pairs
from mechscope.core.scores import normalized_recovery


@dataclass(frozen=True)
class Evaluation:
    """Mean metric of a circuit, of the full model and of the empty circuit, and the faithfulness.

    Example:
        >>> Evaluation(n_edges=10, metric=1.5, clean=2.0, corrupted=0.0).faithfulness
        0.75
    """

    n_edges: int
    metric: float
    clean: float
    corrupted: float

    @property
    def faithfulness(self) -> float:
        return float(normalized_recovery(self.metric, self.clean, self.corrupted))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "faithfulness": self.faithfulness}


def circuit_metric(gm: GraphModel, pairs: Pairs, mask: Tensor | None, corruption: Corruption,
                   batch_size: int = 16) -> float:
    """Mean metric over `pairs` with only the edges in `mask` kept (None: the full model).

    Example:
        >>> full = circuit_metric(gm, pairs, None, Corruption(gm, pairs))   # doctest: +SKIP
    """
    total = 0.0
    weights = None if mask is None else mask.to(gm.model.dtype)
    with torch.no_grad():
        for rows in batches(len(pairs), batch_size):
            part = pairs.rows(rows)
            corrupt = None if weights is None else corruption.values(rows)
            logits = gm.run(part.clean, part.attention_mask, weights, corrupt)
            total += float(part.metric(logits).double().sum())
    return total / len(pairs)


class Evaluator:
    """Evaluates circuits on fixed pairs; the clean and corrupted metrics are computed once.

    Example:
        >>> from mechscope.circuits.discovery.graph_run import GraphModel
        >>> from mechscope import HookedModel
        >>> from mechscope.circuits.discovery.induction import induction_pairs
        >>> from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
        >>> toy = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=21, hidden_size=16, num_attention_heads=2))
        >>> gm, pairs = GraphModel(HookedModel(toy, name="toy")), induction_pairs(n=4, span=6, n_tokens=20)
        >>> evaluator = Evaluator(gm, pairs)
        >>> every_edge = gm.graph.valid
        >>> abs(evaluator(every_edge).metric - evaluator.clean) < 1e-4      # the whole graph is the model
        True
    """

    def __init__(self, gm: GraphModel, pairs: Pairs, corruption: str = "paired", batch_size: int = 16,
                 seed: int = 0) -> None:
        self.gm, self.pairs, self.batch_size = gm, pairs, batch_size
        self.corruption = Corruption(gm, pairs, corruption, seed=seed, batch_size=batch_size)
        g = gm.graph
        self.clean = circuit_metric(gm, pairs, None, self.corruption, batch_size)
        self.corrupted = circuit_metric(gm, pairs, torch.zeros(g.n_dests, g.n_sources, dtype=torch.bool),
                                        self.corruption, batch_size)

    def __call__(self, mask: Tensor) -> Evaluation:
        value = circuit_metric(self.gm, self.pairs, mask, self.corruption, self.batch_size)
        return Evaluation(int(mask.sum()), value, self.clean, self.corrupted)

    def curve(self, scores: EdgeScores, sizes: Sequence[int], absolute: bool = True,
              pruned: bool = False, progress: bool = False) -> list[Evaluation]:
        """Faithfulness of the top-n circuits for each n in `sizes` (optionally pruned)."""
        out = []
        for n in tqdm(sizes, desc="faithfulness curve", disable=not progress):
            mask = top_n(scores, n, absolute)
            out.append(self(prune(scores.graph, mask) if pruned else mask))
        return out


def evaluate(gm: GraphModel, pairs: Pairs, mask: Tensor, corruption: str = "paired", batch_size: int = 16) -> Evaluation:
    """One circuit's `Evaluation` (see the module docstring).

    Example:
        >>> from mechscope.circuits.discovery.graph_run import GraphModel
        >>> from mechscope import HookedModel
        >>> from mechscope.circuits.discovery.induction import induction_pairs
        >>> from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
        >>> toy = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=21, hidden_size=16, num_attention_heads=2))
        >>> gm, pairs = GraphModel(HookedModel(toy, name="toy")), induction_pairs(n=4, span=6, n_tokens=20)
        >>> ev = evaluate(gm, pairs, torch.zeros(gm.graph.n_dests, gm.graph.n_sources, dtype=torch.bool))
        >>> ev.n_edges, abs(ev.metric - ev.corrupted) < 1e-4              # the empty circuit is the corrupt run
        (0, True)
    """
    return Evaluator(gm, pairs, corruption, batch_size)(mask)


def default_sizes(n_edges: int, points: int = 12) -> list[int]:
    """Circuit sizes for a faithfulness curve: 0, then roughly geometric up to every edge.

    Example:
        >>> default_sizes(1000, points=5)
        [0, 1, 10, 100, 1000]
    """
    sizes = torch.logspace(0, torch.log10(torch.tensor(float(n_edges))), points - 1).round().long().tolist()
    return sorted({0, *sizes, n_edges})
