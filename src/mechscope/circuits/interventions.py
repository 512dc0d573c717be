"""Interventions on transcoder features: set, scale or zero them, and see what the model does.

Two modes:

- `constrained`: the local replacement model of the prompt (attention patterns, norms and MLP
  outputs frozen; see `replacement.py`); a changed feature adds `delta * decoder` to the MLP
  outputs it writes to (every layer it decodes to, for a cross-layer feature), and nothing else
  moves but what flows linearly from there: the *direct* effects that an attribution graph's edges
  predict (`target_changes` measures them, node by node);
- `free`: the real model runs; at every layer the transcoders read the live MLP input, the
  intervened features are set or scaled there, and the MLP output gets the difference of
  their decoded contribution, so the effects propagate through the real attention and MLPs.

`generate` decodes greedily with free-mode interventions.

Example:
    >>> rm = ReplacementModel(model, transcoders)                                     # doctest: +SKIP
    >>> state = rm.prepare("The capital of France is")                                # doctest: +SKIP
    >>> logits = intervene(rm, state, [FeatureEdit(12, 5, 301, value=0.0)], mode="free")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mechscope.circuits.graph import AttributionGraph
from mechscope.circuits.replacement import PromptState, ReplacementModel, unembed_input_hook
from mechscope.core import names
from mechscope.core.errors import MechscopeError
from mechscope.dictionaries.transcoder_set import mlp_input_hook

Mode = Literal["constrained", "free"]


@dataclass(frozen=True)
class FeatureEdit:
    """Set feature `feature` of `layer` at position `pos` (None: every position) to `value`, or
    multiply it by `scale` (exactly one of the two; `value=0` zeroes it).

    Example:
        >>> FeatureEdit(layer=3, pos=None, feature=301, scale=2.0).new(torch.tensor([1.5]))
        tensor([3.])
        >>> FeatureEdit(layer=3, pos=4, feature=301, value=0.0).new(torch.tensor([1.5]))
        tensor([0.])
    """

    layer: int
    pos: int | None
    feature: int
    value: float | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.scale is None):
            raise MechscopeError(f"a feature edit sets a value or a scale, not both or neither: {self}")

    def new(self, old: Tensor) -> Tensor:
        return old * self.scale if self.scale is not None else torch.full_like(old, float(self.value))  # type: ignore[arg-type]


def _check(rm: ReplacementModel, edits: list[FeatureEdit]) -> None:
    for e in edits:
        if not 0 <= e.layer < rm.n_layers or not 0 <= e.feature < rm.transcoders.d_sae(e.layer):
            raise MechscopeError(f"no feature {e.feature} at layer {e.layer} in this transcoder set "
                                 f"({rm.n_layers} layers)")


def _add(deltas: dict[int, Tensor], layer: int, pos: Any, vec: Tensor, shape: tuple[int, ...]) -> None:
    if layer not in deltas:
        deltas[layer] = torch.zeros(shape)
    deltas[layer][pos] += vec


def mlp_deltas(rm: ReplacementModel, state: PromptState, edits: list[FeatureEdit]) -> dict[int, Tensor]:
    """What `edits` add to each layer's MLP output `[pos, d_model]` on the recorded prompt.

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> rm = ReplacementModel(model, transcoders)
        >>> state = rm.prepare(torch.tensor([[0, 3, 1, 4]]))
        >>> # zero feature 2 of layer 0 at position 1
        >>> deltas = mlp_deltas(rm, state, [FeatureEdit(0, 1, 2, value=0.0)])
        >>> sorted(deltas), deltas[0].shape                     # the layers written to (per-layer: its own)
        ([0], torch.Size([4, 16]))
        >>> bool(deltas[0][1].any()), bool(deltas[0][[0, 2, 3]].any())
        (True, False)
    """
    _check(rm, edits)
    deltas: dict[int, Tensor] = {}
    for e in edits:
        positions = range(state.n_pos) if e.pos is None else [e.pos]
        dec = rm.transcoders.decoder_vectors(e.layer, torch.tensor([e.feature]))[0].float()
        for p in positions:
            old = state.features[e.layer][p, e.feature]
            change = e.new(old) - old
            for j in range(dec.shape[0]):
                _add(deltas, e.layer + j, p, change * dec[j], tuple(state.mlp_out[0].shape))
    return deltas


@dataclass
class ConstrainedRun:
    """Logits `[batch, pos, d_vocab]`, each layer's MLP input and the unembedding's input `[batch, pos, d_model]`.

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> rm = ReplacementModel(model, transcoders)
        >>> state = rm.prepare(torch.tensor([[0, 3, 1, 4]]))
        >>> run = constrained_run(rm, state)
        >>> run.logits.shape, len(run.mlp_in) == rm.n_layers, run.final.shape
        (torch.Size([1, 4, 9]), True, torch.Size([1, 4, 16]))
    """

    logits: Tensor
    mlp_in: list[Tensor]
    final: Tensor


@torch.no_grad()
def constrained_run(rm: ReplacementModel, state: PromptState, deltas: dict[int, Tensor] | None = None,
                    embed_delta: Tensor | None = None, batch: int = 1) -> ConstrainedRun:
    """`batch` copies of the prompt through the local replacement model, with `deltas[layer]` added to
    MLP outputs and `embed_delta` to the token embeddings (each `[pos, d_model]`, or `[batch, pos, d_model]`
    for one intervention per copy).

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> rm = ReplacementModel(model, transcoders)
        >>> state = rm.prepare(torch.tensor([[0, 3, 1, 4]]))
        >>> run = constrained_run(rm, state)                    # no deltas: the recorded logits
        >>> bool((run.logits[0] - state.logits).abs().max() < 1e-4)
        True
        >>> deltas = mlp_deltas(rm, state, [FeatureEdit(0, 1, 2, scale=2.0)])
        >>> edited = constrained_run(rm, state, deltas, batch=2)
        >>> edited.logits.shape, bool((edited.logits[0] - run.logits[0]).abs().max() > 0)
        (torch.Size([2, 4, 9]), True)
    """
    deltas = deltas or {}
    reads: dict[str, Tensor] = {}

    def out(layer: int, recorded: Tensor) -> Tensor:
        return recorded + deltas[layer].to(recorded.dtype) if layer in deltas else recorded

    def keep(act: Tensor, hook: Any) -> None:
        reads[hook.name] = act.float()

    def embed(act: Tensor, hook: Any) -> Tensor:
        return act + embed_delta.to(act.dtype)  # type: ignore[union-attr]

    model = rm.model
    hooks: list[tuple[str, Any]] = [(unembed_input_hook(model), keep)]
    hooks += [(mlp_input_hook(model, layer), keep) for layer in range(rm.n_layers)]
    if embed_delta is not None:
        hooks.append((names.EMBED, embed))
    with rm.frozen(state, out, hooks):
        logits = model(state.ids.expand(batch, -1)).float()
    return ConstrainedRun(logits, [reads[mlp_input_hook(model, layer)] for layer in range(rm.n_layers)],
                          reads[unembed_input_hook(model)])


def target_values(rm: ReplacementModel, graph: AttributionGraph, run: ConstrainedRun,
                  logit_vectors: Tensor) -> Tensor:
    """`[batch, n_nodes]`: the value of every target row of `graph` in each copy of `run`: a feature's
    pre-activation (up to its constant bias), zero for error and token rows, and `logit_vectors[k] . final[-1]`
    for the logits.

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> rm = ReplacementModel(model, transcoders)
        >>> state = rm.prepare(torch.tensor([[0, 3, 1, 4]]))
        >>> from mechscope.circuits.attribution import attribute, unembedding
        >>> graph = attribute(model, transcoders, state.ids, max_n_logits=3, replacement=rm)
        >>> vectors = unembedding(model)[graph.logit_tokens]
        >>> values = target_values(rm, graph, constrained_run(rm, state), vectors)
        >>> values.shape == (1, graph.adjacency.shape[0])
        True
    """
    values = torch.zeros(run.final.shape[0], graph.adjacency.shape[0])
    for row, index in enumerate(graph.selected_features.tolist()):
        layer, pos, feat = graph.active_features[index].tolist()
        enc = rm.transcoders.encoder_vectors(layer, torch.tensor([feat]))[0].float()
        values[:, row] = run.mlp_in[layer][:, pos] @ enc
    values[:, -graph.n_logits:] = run.final[:, -1] @ logit_vectors.float().T
    return values


def intervene(rm: ReplacementModel, state: PromptState, edits: list[FeatureEdit], mode: Mode = "constrained") -> Tensor:
    """Logits `[pos, d_vocab]` of the prompt with `edits` applied (see the module docstring for the modes).

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> rm = ReplacementModel(model, transcoders)
        >>> state = rm.prepare(torch.tensor([[0, 3, 1, 4]]))
        >>> for mode in ("constrained", "free"):               # no edits: both modes give the real logits
        ...     print(mode, bool((intervene(rm, state, [], mode=mode) - state.logits).abs().max() < 1e-4))
        constrained True
        free True
        >>> logits = intervene(rm, state, [FeatureEdit(0, 1, 2, value=0.0)], mode="free")
        >>> logits.shape == (state.n_pos, model.cfg.d_vocab)
        True
    """
    if mode == "constrained":
        return constrained_run(rm, state, mlp_deltas(rm, state, edits)).logits[0]
    if mode == "free":
        return free_logits(rm, state.ids, edits)[0]
    raise MechscopeError(f"mode must be 'constrained' or 'free', got {mode!r}")


@torch.no_grad()
def free_logits(rm: ReplacementModel, ids: Tensor, edits: list[FeatureEdit]) -> Tensor:
    """Logits `[batch, pos, d_vocab]` of the real model with `edits` applied to the live features.

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> rm = ReplacementModel(model, transcoders)
        >>> state = rm.prepare(torch.tensor([[0, 3, 1, 4]]))
        >>> logits = free_logits(rm, state.ids, [FeatureEdit(0, None, 2, scale=0.0)])
        >>> logits.shape
        torch.Size([1, 4, 9])
        >>> unedited = free_logits(rm, state.ids, [])         # no edits: the real model's logits
        >>> bool((unedited[0] - state.logits).abs().max() < 1e-4)
        True
    """
    _check(rm, edits)
    tc, model = rm.transcoders, rm.model
    pending: dict[int, Tensor] = {}
    by_layer: dict[int, list[FeatureEdit]] = {}
    for e in edits:
        by_layer.setdefault(e.layer, []).append(e)

    def read(act: Tensor, hook: Any) -> None:
        layer = names.parse_layer(hook.name)
        assert layer is not None
        for e in by_layer.get(layer, []):
            live = tc.encode(layer, act.reshape(-1, act.shape[-1])).reshape(*act.shape[:2], -1)[..., e.feature].float()
            pos = slice(None) if e.pos is None else e.pos
            change = e.new(live[:, pos]) - live[:, pos]
            dec = tc.decoder_vectors(layer, torch.tensor([e.feature]))[0].float()
            for j in range(dec.shape[0]):
                if layer + j not in pending:
                    pending[layer + j] = torch.zeros(act.shape, dtype=torch.float32)
                pending[layer + j][:, pos] += change[..., None] * dec[j]

    def write(act: Tensor, hook: Any) -> Tensor | None:
        layer = names.parse_layer(hook.name)
        return act + pending.pop(layer).to(act.dtype) if layer in pending else None

    hooks: list[tuple[str, Any]] = []
    for layer in range(rm.n_layers):
        hooks += [(mlp_input_hook(model, layer), read), (names.mlp_out(layer), write)]
    return model.run_with_hooks(ids, fwd_hooks=hooks).float()


@torch.no_grad()
def generate(rm: ReplacementModel, prompt: Any, edits: list[FeatureEdit], max_new_tokens: int = 10) -> Tensor:
    """Greedy continuation `[pos + max_new_tokens]` ids with free-mode `edits` (pos None edits every token).

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> rm = ReplacementModel(model, transcoders)
        >>> state = rm.prepare(torch.tensor([[0, 3, 1, 4]]))
        >>> ids = generate(rm, state.ids, [FeatureEdit(0, None, 2, value=8.0)], max_new_tokens=3)
        >>> ids.shape, ids[:4].tolist()                         # the prompt, then 3 greedy tokens
        (torch.Size([7]), [0, 3, 1, 4])
    """
    ids, _ = rm.model.prepare_inputs(prompt, None)
    for _ in range(max_new_tokens):
        nxt = free_logits(rm, ids, edits)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids[0]
