"""Attribution graphs by batched backward passes through the local replacement model.

One forward pass of the frozen model (`replacement.py`) runs on `batch_size` copies of the
prompt, with the token embeddings and every MLP output as gradient leaves. One backward pass
then gives the rows of up to `batch_size` targets at once: copy `b` of the batch carries the
gradient of target `b` (a feature's encoder direction injected at its MLP input, or a logit
direction injected at the final norm's output, last position), and each source's edge is its
output vector dotted with the gradient at its site:

- feature `s` (activation `a_s`, decoder rows `d_s^(l)` into the MLP outputs of layers `l >= l_s`):
  `a_s * sum_l d_s^(l) . dT/dM_l[p_s]`;
- error node `(l, p)`: `e_l[p] . dT/dM_l[p]`; token node `p`: `embed[p] . dT/dE[p]`.

Skip transcoders add no nodes: their skip term is linear in the MLP input, so the frozen model
carries it (`replacement.py`), and `dT/dM_l` includes the paths through the skip terms of later
layers, as circuit-tracer's gradients do.

Logit targets come first (`ceil(n_logits / B)` passes); then features are visited in order
of their influence on the logits, re-estimated from the rows computed so far every
`update_interval` batches, until `max_feature_nodes` (`ceil(n_visited / B)` passes): in all
`ceil(n_logits / B) + ceil(n_visited / B)` backward passes (`graph.info["backward_passes"]`).

Memory: the forward graph of `B` copies of the prompt, and a dense `[n_visited + n_logits,
n_active + (n_layers + 1) * n_pos]` float32 row buffer (about 4 GB for 10k visited features
against 100k active ones); cap `max_feature_nodes` for long prompts.

Example:
    >>> # the default model and a set trained by `mechscope transcoders train`
    >>> graph = attribute(model, transcoders, "The capital of France is", max_feature_nodes=512)  # doctest: +SKIP
    >>> graph.adjacency.shape                                                                    # doctest: +SKIP

`attribute`'s own example runs on a tiny Llama with random transcoders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechscope.circuits.graph import AttributionGraph
from mechscope.circuits.replacement import PromptState, ReplacementModel, unembed_input_hook
from mechscope.core import names
from mechscope.core.errors import MechscopeError
from mechscope.dictionaries.transcoder_set import TranscoderSet, mlp_input_hook


@dataclass
class Target:
    """A logit target: `vector [d_model]` read at the final norm's output (last position), its weight.

    Example:
        >>> target = Target(label=" Paris", token_id=6342, weight=0.93, vector=torch.zeros(576))
        >>> target.label, target.weight
        (' Paris', 0.93)
    """

    label: str
    token_id: int
    weight: float
    vector: Tensor


def unembedding(model: Any) -> Tensor:
    """The unembedding matrix `[d_vocab, d_model]` (float32).

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> W_U = unembedding(model)
        >>> W_U.shape, W_U.dtype, W_U.requires_grad
        (torch.Size([9, 16]), torch.float32, False)
    """
    return model.lm_head.weight.detach().float()


def salient_logits(model: Any, logits: Tensor, max_n_logits: int = 10, desired_logit_prob: float = 0.95) -> list[Target]:
    """The smallest set of top tokens whose probability reaches `desired_logit_prob` (at most
    `max_n_logits`), each as its demeaned unembedding direction `W_U[t] - mean_t W_U[t]`.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope import HookedModel
        >>> from mechscope.toys.induction import toy_tokenizer
        >>> _ = torch.manual_seed(0)
        >>> cfg = LlamaConfig(vocab_size=9, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> model = HookedModel(LlamaForCausalLM(cfg), tokenizer=toy_tokenizer(8), name="tiny")
        >>> logits = torch.tensor([0.0, 0.0, 5.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0])    # p(t2) 0.71, p(t3) 0.26
        >>> targets = salient_logits(model, logits)
        >>> [(t.label, t.token_id, round(t.weight, 2)) for t in targets]
        [('t2', 2, 0.71), ('t3', 3, 0.26)]
        >>> W_U = unembedding(model)
        >>> torch.equal(targets[0].vector, W_U[2] - W_U.mean(0))
        True
    """
    probs = torch.softmax(logits.float(), -1)
    top_p, top_i = torch.topk(probs, min(max_n_logits, probs.shape[-1]))
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), desired_logit_prob)) + 1
    W_U = unembedding(model)
    mean = W_U.mean(0)
    tokens = token_strings(model, top_i[:cutoff])
    return [Target(tok, int(i), float(p), W_U[int(i)] - mean)
            for tok, i, p in zip(tokens, top_i[:cutoff].tolist(), top_p[:cutoff].tolist(), strict=True)]


def logit_diff_target(model: Any, correct: str, wrong: str) -> Target:
    """The logit difference `logit(correct) - logit(wrong)` as one target of weight 1.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope import HookedModel
        >>> from mechscope.toys.induction import toy_tokenizer
        >>> _ = torch.manual_seed(0)
        >>> cfg = LlamaConfig(vocab_size=9, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> model = HookedModel(LlamaForCausalLM(cfg), tokenizer=toy_tokenizer(8), name="tiny")
        >>> target = logit_diff_target(model, "t2", "t5")
        >>> target.label, target.token_id, target.weight                  # token id -1: a custom direction
        ('t2 - t5', -1, 1.0)
        >>> torch.equal(target.vector, unembedding(model)[2] - unembedding(model)[5])
        True
    """
    a, b = model.to_single_token(correct), model.to_single_token(wrong)
    W_U = unembedding(model)
    return Target(f"{correct} - {wrong}", -1, 1.0, W_U[a] - W_U[b])


def token_strings(model: Any, ids: Tensor) -> list[str]:
    """Each id as its string (the id itself for a model without a tokenizer).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope import HookedModel
        >>> from mechscope.toys.induction import toy_tokenizer
        >>> _ = torch.manual_seed(0)
        >>> cfg = LlamaConfig(vocab_size=9, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> model = HookedModel(LlamaForCausalLM(cfg), tokenizer=toy_tokenizer(8), name="tiny")
        >>> token_strings(model, torch.tensor([0, 3, 1]))
        ['<bos>', 't3', 't1']
        >>> model.tokenizer = None
        >>> token_strings(model, torch.tensor([0, 3, 1]))
        ['0', '3', '1']
    """
    return model.to_str_tokens(ids) if model.tokenizer is not None else [str(i) for i in ids.tolist()]


class _Engine:
    """The batched frozen forward and the backward passes that turn gradients into rows."""

    def __init__(self, rm: ReplacementModel, state: PromptState, batch_size: int) -> None:
        self.rm, self.state, self.B = rm, state, batch_size
        tc: TranscoderSet = rm.transcoders
        L, P = rm.n_layers, state.n_pos
        self.L, self.P = L, P
        feats = [f.nonzero() for f in state.features]  # [n_l, 2] (pos, feature), row-major
        self.active = torch.cat([torch.cat([torch.full((len(f), 1), layer), f], 1)
                                 for layer, f in enumerate(feats)]).long()
        self.values = torch.cat([state.features[layer][f[:, 0], f[:, 1]] for layer, f in enumerate(feats)])
        self.n_active = len(self.active)
        self.layer_start = [0]
        for f in feats:
            self.layer_start.append(self.layer_start[-1] + len(f))
        # a_s * decoder rows, per source layer: [n_l, L - l, d_model]
        self.dec = [(tc.decoder_vectors(layer, f[:, 1]).double() * self.values[self.layer_start[layer]:
                     self.layer_start[layer + 1], None, None]) for layer, f in enumerate(feats)]
        self.enc = torch.cat([tc.encoder_vectors(layer, f[:, 1]).float() for layer, f in enumerate(feats)]) \
            if self.n_active else torch.zeros(0, tc.d_model)
        self.spans = [_position_spans(f[:, 0]) for f in feats]  # (pos, lo, hi) of each position's features
        self.row_size = self.n_active + (L + 1) * P
        self.passes = 0
        self._forward()

    def _forward(self) -> None:
        state, B = self.state, self.B
        dtype = self.rm.model.dtype
        self.E = state.embed.to(dtype).expand(B, -1, -1).clone().requires_grad_(True)
        self.M = [state.mlp_out[layer].to(dtype).expand(B, -1, -1).clone().requires_grad_(True)
                  for layer in range(self.L)]
        self.reads: dict[int, Tensor] = {}

        def embed(act: Tensor, hook: Any) -> Tensor:
            return self.E

        def keep(act: Tensor, hook: Any) -> None:
            layer = names.parse_layer(hook.name)
            self.reads[self.L if layer is None else layer] = act

        hooks = [(names.EMBED, embed), (unembed_input_hook(self.rm.model), keep)]
        hooks += [(mlp_input_hook(self.rm.model, layer), keep) for layer in range(self.L)]
        with torch.enable_grad(), self.rm.frozen(state, lambda layer, rec: self.M[layer], hooks):
            self.rm.model(state.ids.expand(B, -1))

    def rows(self, layers: Tensor, positions: Tensor, vectors: Tensor, retain: bool = True) -> Tensor:
        """Rows `[n, row_size]` for targets read at (`layers`, `positions`) along `vectors` (n <= B);
        layer `n_layers` means the final norm's output."""
        n = len(layers)
        outputs, grads = [], []
        for layer in layers.unique().tolist():
            sel = (layers == layer).nonzero().squeeze(1)
            g = torch.zeros_like(self.reads[layer])
            g[sel, positions[sel]] = vectors[sel].to(g.dtype)
            outputs.append(self.reads[layer])
            grads.append(g)
        with torch.enable_grad():
            got = torch.autograd.grad(outputs, [self.E, *self.M], grads, retain_graph=retain, allow_unused=True)
        self.passes += 1
        gE, gM = got[0], got[1:]
        out = torch.zeros(self.B, self.row_size)
        for src in range(self.L):
            base = self.layer_start[src]
            for j in range(self.dec[src].shape[1]):
                g = gM[src + j]
                if g is None:
                    continue
                for p, lo, hi in self.spans[src]:  # features of one position: [B, d] @ [d, n]
                    # float64, so that the result does not depend on the batch size through BLAS blocking
                    out[:, base + lo:base + hi] += (g[:, p].double() @ self.dec[src][lo:hi, j].T).float()
        err0 = self.n_active
        for layer in range(self.L):
            if gM[layer] is not None:
                out[:, err0 + layer * self.P: err0 + (layer + 1) * self.P] = (
                    gM[layer].float() * self.state.errors[layer]).sum(-1)
        if gE is not None:
            out[:, err0 + self.L * self.P:] = (gE.float() * self.state.embed).sum(-1)
        return out[:n]


def _position_spans(positions: Tensor) -> list[tuple[int, int, int]]:
    """`(pos, lo, hi)` for each run of equal values in the sorted `positions`."""
    values, counts = torch.unique_consecutive(positions, return_counts=True)
    ends = counts.cumsum(0).tolist()
    return [(int(v), end - int(c), end) for v, c, end in zip(values.tolist(), counts.tolist(), ends, strict=True)]


def partial_influence(rows: Tensor, row_nodes: Tensor, weights: Tensor, max_iter: int = 1024) -> Tensor:
    """Influence on the logits of every column node, from the rows computed so far
    (`rows[i]` belongs to node `row_nodes[i]`; `weights` is `w` over all nodes).

    Example:
        >>> # node 2 (the logit) reads node 0 with weight 1 and node 1 with weight 3; node 1 reads node 0
        >>> rows = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]])
        >>> partial_influence(rows, row_nodes=torch.tensor([2, 1]), weights=torch.tensor([0.0, 0.0, 1.0]))
        tensor([1.0000, 0.7500, 0.0000])
    """
    normalized = rows.abs()
    normalized = normalized / normalized.sum(1, keepdim=True).clamp(min=1e-10)
    total = torch.zeros(rows.shape[1])
    prod = weights
    for _ in range(max_iter):
        prod = prod[row_nodes] @ normalized
        if not prod.any():
            return total
        total += prod
    raise MechscopeError("partial influence did not converge (a cycle in the rows)")


def attribute(model: Any, transcoders: TranscoderSet, prompt: Any, *, targets: list[Target] | None = None,
              max_n_logits: int = 10, desired_logit_prob: float = 0.95, batch_size: int = 64,
              max_feature_nodes: int | None = None, update_interval: int = 4, progress: bool = False,
              replacement: ReplacementModel | None = None) -> AttributionGraph:
    """The attribution graph of `prompt` (text or `[1, pos]` ids); see the module docstring.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope import HookedModel
        >>> from mechscope.toys.induction import toy_tokenizer
        >>> _ = torch.manual_seed(0)
        >>> cfg = LlamaConfig(vocab_size=9, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> model = HookedModel(LlamaForCausalLM(cfg), tokenizer=toy_tokenizer(8), name="tiny")
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> graph = attribute(model, transcoders, "t1 t2 t3", max_n_logits=3)
        >>> graph.token_strings, graph.n_logits
        (['<bos>', 't1', 't2', 't3'], 3)
        >>> # nodes: features, an error per (layer, position), a token per position, the logits
        >>> graph.adjacency.shape[0] == graph.n_features + 2 * 4 + 4 + graph.n_logits
        True
        >>> # backward passes of the default batch_size 64: ceil(n_logits / 64) + ceil(n_features / 64)
        >>> graph.info["backward_passes"] == math.ceil(3 / 64) + math.ceil(graph.n_features / 64)
        True
        >>> diff = logit_diff_target(model, "t2", "t5")
        >>> graph = attribute(model, transcoders, "t1 t2 t3", targets=[diff], max_feature_nodes=10,
        ...                   batch_size=4)
        >>> graph.n_features, graph.logit_labels, graph.info["backward_passes"]   # 1 + ceil(10 / 4) passes
        (10, ['t2 - t5'], 4)
    """
    if batch_size <= 0:
        raise MechscopeError(f"batch_size must be positive, got {batch_size}")
    rm = replacement or ReplacementModel(model, transcoders)
    state = rm.prepare(prompt)
    if targets is None:
        targets = salient_logits(model, state.logits[-1], max_n_logits, desired_logit_prob)
    if not targets:
        raise MechscopeError("no attribution targets")
    eng = _Engine(rm, state, batch_size)
    L, P, n_active = eng.L, eng.P, eng.n_active
    n_logits = len(targets)
    logit_offset = eng.row_size
    n_nodes = logit_offset + n_logits
    n_visit = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    edges = torch.zeros(n_visit + n_logits, n_nodes)
    row_nodes = torch.zeros(n_visit + n_logits, dtype=torch.long)
    vectors = torch.stack([t.vector.float() for t in targets])
    for i in range(0, n_logits, batch_size):
        chunk = vectors[i:i + batch_size]
        rows = eng.rows(torch.full((len(chunk),), L), torch.full((len(chunk),), P - 1), chunk)
        edges[i:i + len(chunk), :logit_offset] = rows
        row_nodes[i:i + len(chunk)] = torch.arange(i, i + len(chunk)) + logit_offset
    weights = torch.zeros(n_nodes)
    weights[logit_offset:] = torch.tensor([t.weight for t in targets])
    visited = torch.zeros(n_active, dtype=torch.bool)
    filled, done = n_logits, 0
    bar = tqdm(total=n_visit, desc="attribution", disable=not progress)
    while done < n_visit:
        if n_visit == n_active:
            pending = torch.arange(n_active)
        else:
            scores = partial_influence(edges[:filled], row_nodes[:filled], weights)[:n_active]
            order = torch.argsort(scores, descending=True)
            pending = order[~visited[order]][:min(update_interval * batch_size, n_visit - done)]
        for i in range(0, len(pending), batch_size):
            idx = pending[i:i + batch_size]
            done += len(idx)
            rows = eng.rows(eng.active[idx, 0], eng.active[idx, 1], eng.enc[idx], retain=done < n_visit)
            edges[filled:filled + len(idx), :logit_offset] = rows
            row_nodes[filled:filled + len(idx)] = idx
            visited[idx] = True
            filled += len(idx)
            bar.update(len(idx))
    bar.close()
    selected = visited.nonzero().squeeze(1)
    if n_visit < n_active:
        edges = edges[:, torch.cat([selected, torch.arange(n_active, n_nodes)])]
    feature_rows = edges[n_logits:][row_nodes[n_logits:].argsort()]
    size = edges.shape[1]
    adjacency = torch.zeros(size, size)
    adjacency[:n_visit] = feature_rows
    adjacency[size - n_logits:] = edges[:n_logits]
    expected = math.ceil(n_logits / batch_size) + math.ceil(n_visit / batch_size)
    assert eng.passes == expected, (eng.passes, expected)
    ids = state.ids[0].cpu()
    strings = token_strings(model, ids)
    return AttributionGraph(
        prompt=prompt if isinstance(prompt, str) else "".join(strings),
        input_tokens=ids, token_strings=strings,
        n_layers=L, active_features=eng.active, activation_values=eng.values, selected_features=selected,
        adjacency=adjacency, logit_tokens=torch.tensor([t.token_id for t in targets]),
        logit_probabilities=weights[logit_offset:].clone(), logit_labels=[t.label for t in targets],
        info={"backward_passes": eng.passes, "batch_size": batch_size, "n_active_features": n_active,
              "max_feature_nodes": max_feature_nodes, "transcoders": transcoders.kind, "skip": transcoders.has_skip},
    )
