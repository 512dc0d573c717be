"""Edge scores: edge attribution patching (EAP), EAP-IG on inputs or activations, clean-corrupted, exact.

All methods score `metric(all edges) - metric(edge removed)` for the mean metric over pairs
(see `scores.py`). With `delta_s = clean_s - corrupt_s` and `g_d` the gradient of the
metric with respect to destination `d`'s input (summed over positions):

- `eap`: `g_d(clean run) . delta_s` (one clean forward, one corrupt forward, one backward);
- `eap-ig`: the mean of `g_d . delta_s` over `steps` runs whose input node is
  `corrupt + a (clean - corrupt)`, `a = k / steps`, k = 1..steps (so `steps=1` is EAP);
- `eap-ig-act`: integrated gradients over activations: every edge weighted `a`
  (each destination reads `a clean + (1 - a) corrupt` sources), gradient with respect to
  the edge weights averaged over `a = k / steps`; the scores then sum to about
  `metric(clean) - metric(empty circuit)`;
- `clean-corrupted`: the mean of the gradients at the clean and the corrupted input;
- `exact`: remove each edge alone and measure (one forward per edge: small graphs only).

The gradient methods read every `g_d` off one run of the model (`edge_gradients.py`);
`mask_gradient` differentiates the edge mask of `GraphModel.run` instead (one rebuilt input per
destination: slow, kept as the reference the fast path is tested against).

Example:
    >>> scores = attribute(GraphModel(model), pairs, method="eap-ig", steps=5)   # doctest: +SKIP
    >>> scores.top(3)                                                            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechscope.circuits.discovery.corruption import Corruption
from mechscope.circuits.discovery.edge_gradients import contract, dest_gradients, edge_gradient, flat_sources
from mechscope.circuits.discovery.graph_run import GraphModel
from mechscope.circuits.discovery.scores import EdgeScores, masked
from mechscope.circuits.discovery.tasks import Pairs
from mechscope.core.errors import MechscopeError, unknown_name_message

METHODS = ("eap", "eap-ig", "eap-ig-act", "clean-corrupted", "exact")


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive row slices of at most `size` covering `n` rows.

    Example:
        >>> list(batches(5, 2))
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def mask_gradient(gm: GraphModel, part: Pairs, corrupt: Tensor, weight: float = 1.0,
                  fixed_delta: Tensor | None = None, input_value: Tensor | None = None) -> Tensor:
    """d (sum of the metric over `part`) / d edge weights, at every edge weighted `weight` [n_dests, n_sources].

    Example:
        >>> grad = mask_gradient(gm, pairs, Corruption(gm, pairs).values(slice(0, len(pairs))))   # doctest: +SKIP
        >>> grad.shape == (gm.graph.n_dests, gm.graph.n_sources)                                    # doctest: +SKIP
        True
    """
    g = gm.graph
    mask = torch.full((g.n_dests, g.n_sources), float(weight), device=gm.model.device, dtype=gm.model.dtype)
    mask.requires_grad_(True)
    with torch.enable_grad():
        logits = gm.run(part.clean, part.attention_mask, mask, corrupt, fixed_delta, input_value)
        # only the mask's gradient: no weight gradients are computed or accumulated
        (grad,) = torch.autograd.grad(part.metric(logits).sum(), mask)
    return grad.detach()


def exact_scores(gm: GraphModel, part: Pairs, corrupt: Tensor, progress: bool = False) -> Tensor:
    """Sum over `part` of metric(all edges) - metric(edge alone removed), per edge [n_dests, n_sources].

    Example:
        >>> exact = exact_scores(gm, pairs, Corruption(gm, pairs).values(slice(0, len(pairs))))   # doctest: +SKIP
    """
    g = gm.graph
    out = torch.zeros(g.n_dests, g.n_sources, dtype=torch.float64)
    with torch.no_grad():
        full = part.metric(gm.run(part.clean, part.attention_mask, None, None)).sum()
        mask = torch.ones(g.n_dests, g.n_sources, device=gm.model.device, dtype=gm.model.dtype)
        for d, s in tqdm(g.edges.tolist(), desc="exact edges", disable=not progress, leave=False):
            mask[d, s] = 0
            out[d, s] = full - part.metric(gm.run(part.clean, part.attention_mask, mask, corrupt)).sum()
            mask[d, s] = 1
    return out


def _chunk_scores(gm: GraphModel, part: Pairs, corrupt: Tensor, method: str, steps: int) -> Tensor:
    if method == "eap":
        return edge_gradient(gm, part, corrupt)
    if method == "eap-ig-act":
        return sum(edge_gradient(gm, part, corrupt, weight=k / steps) for k in range(1, steps + 1)) / steps
    if method == "exact":
        return exact_scores(gm, part, corrupt)
    clean = gm.sources(part.clean, part.attention_mask)
    delta = flat_sources(clean - corrupt)
    start = clean[:, :, 0]
    diff = start - corrupt[:, :, 0]
    del clean
    alphas = [0.0, 1.0] if method == "clean-corrupted" else [k / steps for k in range(1, steps + 1)]
    # the contraction with the fixed delta is linear: contract the mean of the steps' gradients once
    grads: Tensor | None = None
    for a in alphas:
        step = dest_gradients(gm, part, start - (1 - a) * diff)[0]
        grads = step if grads is None else grads.add_(step)
    return contract(gm.graph, grads.div_(len(alphas)), delta)


def attribute(gm: GraphModel, pairs: Pairs, method: str = "eap-ig", steps: int = 5, corruption: str = "paired",
              batch_size: int = 16, seed: int = 0, progress: bool = False) -> EdgeScores:
    """Score every edge of `gm.graph` on `pairs` (mean over pairs; see the module docstring).

    Example:
        >>> from mechscope.circuits.discovery.graph_run import GraphModel
        >>> from mechscope import HookedModel
        >>> from mechscope.circuits.discovery.induction import induction_pairs
        >>> from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
        >>> toy = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=21, hidden_size=16, num_attention_heads=2))
        >>> gm, pairs = GraphModel(HookedModel(toy, name="toy")), induction_pairs(n=4, span=6, n_tokens=20)
        >>> scores = attribute(gm, pairs, method="eap-ig", steps=2)
        >>> scores.method, scores.scores.shape
        ('eap-ig', torch.Size([13, 5]))
    """
    if method not in METHODS:
        raise MechscopeError(unknown_name_message("method", method, list(METHODS)))
    if steps < 1:
        raise MechscopeError(f"steps must be at least 1, got {steps}.")
    corrupt = Corruption(gm, pairs, corruption, seed=seed, batch_size=batch_size)
    g = gm.graph
    total = torch.zeros(g.n_dests, g.n_sources, dtype=torch.float64)
    for rows in tqdm(list(batches(len(pairs), batch_size)), desc=f"{method} scores", disable=not progress):
        part = pairs.rows(rows)
        total += _chunk_scores(gm, part, corrupt.values(rows), method, steps).double().cpu()
    scores = masked(g, total / len(pairs))
    info = {"steps": steps if method in ("eap-ig", "eap-ig-act") else None, "corruption": corruption,
            "n_pairs": len(pairs)}
    return EdgeScores(g, scores, method, info)
