"""The component graph of a transformer: sources, destinations and the edges between them.

Sources (in forward order): the input (the residual stream entering block 0: token and
position embeddings), every attention head's output, every MLP's output. Destinations:
every head's query, key and value input (grouped-query heads ungrouped, so each query head
has its own key and value input), every MLP's input, and the logits. A destination reads
the residual stream before its norm, which is the sum of every upstream source plus what is
not a node (biases); an edge (source -> destination) exists when the source comes earlier.

Counting rule: with `L` layers, `H` heads and an MLP per layer, a layer-`l` head input reads
`1 + l(H + 1)` sources, a layer-`l` MLP `1 + l(H + 1) + H` (without the same layer's heads
when attention and MLP run in parallel), the logits all `1 + L(H + 1)`. SmolLM2-135M
(L=30, H=9): 301 sources, 841 destinations, 123,211 edges.

Example:
    >>> g = ComponentGraph(n_layers=30, n_heads=9)
    >>> g.n_sources, g.n_dests, g.n_edges
    (301, 841, 123211)
    >>> g.source_names[1], g.dest_names[2 * 9 + 1], g.dest_names[-1]
    ('a0.h0', 'a0.h1.v', 'logits')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from mechscope.core.errors import MechscopeError, unknown_name_message

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class ComponentGraph:
    """Index arithmetic of the component graph (see the module docstring).

    Example:
        >>> g = ComponentGraph(n_layers=2, n_heads=1)
        >>> g.source_names, g.n_edges
        (['input', 'a0.h0', 'm0', 'a1.h0', 'm1'], 23)
    """

    n_layers: int
    n_heads: int
    has_mlp: bool = True
    parallel: bool = False  # attention and MLP read the same residual (GPT-NeoX, GPT-J)

    @classmethod
    def for_model(cls, model: Any) -> ComponentGraph:
        """The graph of a `HookedModel` (MLP nodes only when the model has MLP units)."""
        cfg = model.cfg
        has_mlp = model.family.has_mlp and cfg.d_mlp > 0
        return cls(cfg.n_layers, cfg.n_heads, has_mlp, cfg.parallel_attn_mlp)

    # -- sources -------------------------------------------------------------------------
    @property
    def per_layer(self) -> int:
        """Sources per layer: the heads, then the MLP."""
        return self.n_heads + int(self.has_mlp)

    @property
    def n_sources(self) -> int:
        return 1 + self.n_layers * self.per_layer

    def layer_start(self, layer: int) -> int:
        """Index of the first source of `layer` (= how many sources come before it)."""
        return 1 + layer * self.per_layer

    def head_source(self, layer: int, head: int) -> int:
        return self.layer_start(layer) + head

    def mlp_source(self, layer: int) -> int:
        if not self.has_mlp:
            raise MechscopeError("This model has no MLPs, so no MLP nodes.")
        return self.layer_start(layer) + self.n_heads

    # -- destinations ----------------------------------------------------------------------
    @property
    def dests_per_layer(self) -> int:
        return 3 * self.n_heads + int(self.has_mlp)

    @property
    def n_dests(self) -> int:
        return self.n_layers * self.dests_per_layer + 1

    def attn_dests(self, layer: int) -> slice:
        """Destinations of a layer's heads: q of every head, then k, then v."""
        start = layer * self.dests_per_layer
        return slice(start, start + 3 * self.n_heads)

    def qkv_dest(self, layer: int, head: int, which: str) -> int:
        return layer * self.dests_per_layer + QKV.index(which) * self.n_heads + head

    def mlp_dest(self, layer: int) -> int:
        if not self.has_mlp:
            raise MechscopeError("This model has no MLPs, so no MLP nodes.")
        return layer * self.dests_per_layer + 3 * self.n_heads

    @property
    def logits_dest(self) -> int:
        return self.n_dests - 1

    def n_upstream(self, dest: int) -> int:
        """How many sources (the first ones, in order) feed destination `dest`."""
        if dest == self.logits_dest:
            return self.n_sources
        layer, within = divmod(dest, self.dests_per_layer)
        start = self.layer_start(layer)
        if within < 3 * self.n_heads or self.parallel:
            return start
        return start + self.n_heads

    # -- edges --------------------------------------------------------------------------------
    @cached_property
    def valid(self) -> Tensor:
        """Boolean [n_dests, n_sources]: True where the edge exists."""
        counts = torch.tensor([self.n_upstream(d) for d in range(self.n_dests)])
        return torch.arange(self.n_sources)[None, :] < counts[:, None]

    @property
    def n_edges(self) -> int:
        return sum(self.n_upstream(d) for d in range(self.n_dests))

    @cached_property
    def edges(self) -> Tensor:
        """[n_edges, 2] (dest, source) pairs in a fixed order: by destination, then source."""
        return self.valid.nonzero()

    # -- names --------------------------------------------------------------------------------
    @cached_property
    def source_names(self) -> list[str]:
        out = ["input"]
        for layer in range(self.n_layers):
            out += [f"a{layer}.h{h}" for h in range(self.n_heads)]
            if self.has_mlp:
                out.append(f"m{layer}")
        return out

    @cached_property
    def dest_names(self) -> list[str]:
        out = []
        for layer in range(self.n_layers):
            out += [f"a{layer}.h{h}.{w}" for w in QKV for h in range(self.n_heads)]
            if self.has_mlp:
                out.append(f"m{layer}")
        return [*out, "logits"]

    def edge_name(self, dest: int, source: int) -> str:
        return f"{self.source_names[source]}->{self.dest_names[dest]}"

    def edge_index(self, name: str) -> tuple[int, int]:
        """(dest, source) of an edge named like `a0.h1->a1.h0.k`; a clear error otherwise."""
        src, _, dst = name.partition("->")
        sources = {n: i for i, n in enumerate(self.source_names)}
        dests = {n: i for i, n in enumerate(self.dest_names)}
        if src not in sources:
            raise MechscopeError(unknown_name_message("source node", src, list(sources)))
        if dst not in dests:
            raise MechscopeError(unknown_name_message("destination node", dst, list(dests)))
        d, s = dests[dst], sources[src]
        if not self.valid[d, s]:
            raise MechscopeError(f"No edge {name!r}: {src} does not come before {dst}.")
        return d, s

    def dest_node(self, dest: int) -> str:
        """The node a destination belongs to (`a3.h1.q` -> `a3.h1`)."""
        return re.sub(r"\.[qkv]$", "", self.dest_names[dest])

    def node_names(self) -> list[str]:
        """Every node in forward order: input, heads and MLPs, logits."""
        return [*self.source_names, "logits"]

    def to_dict(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "has_mlp": self.has_mlp,
                "parallel": self.parallel, "n_sources": self.n_sources, "n_dests": self.n_dests,
                "n_edges": self.n_edges}
