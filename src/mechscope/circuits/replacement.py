"""The local replacement model of one prompt: frozen attention and norms, MLPs replaced by transcoders.

`ReplacementModel.prepare(prompt)` runs the real model once and records, per layer, the
attention patterns, every normalisation module's input and output, the MLP input
(`ln2.hook_normalized`) and output (`hook_mlp_out`), the transcoder features (position 0,
the BOS, zeroed as circuit-tracer does), their reconstruction and the error term
`mlp_out - reconstruction`.

Inside `frozen(state, ...)` every run of the model is linear in the residual stream:

- attention patterns are replaced by the recorded ones (`pattern @ values`, no gradient to q/k);
- each norm module returns `y0 + c * P(x - x0)`, with `c = weight / scale(x0)` frozen and `P`
  the mean-centering of LayerNorm (identity for RMSNorm), so on the recorded input it returns
  the recorded output exactly, and its Jacobian is the frozen diagonal;
- each MLP output is whatever `mlp_out(layer, recorded)` returns (by default the recorded value,
  a constant), and the MLP's own input is detached so no gradient flows through it;
- with skip transcoders, each MLP output also gets `skip(layer, x - x0)`: the skip term is
  linear in the live MLP input `x` (read through the frozen norm), so it is part of the
  replacement model rather than a node. `x0` is the MLP input of the frozen model's own run on
  the prompt (`state.extra["frozen_mlp_in"]`, equal to the recorded one up to rounding), so an
  unchanged run adds exactly nothing and rounding does not compound through the skip terms. An
  edge therefore includes the paths through the skip terms of the layers between its nodes, as in
  circuit-tracer (whose MLP output is `skip(x) + (mlp_out - skip(x)).detach()`).

So with the error terms the local replacement model reproduces the real logits on the prompt
(`local_logits`), and every target is a sum of linear contributions of feature outputs, error
terms and token embeddings (what `attribution.py` measures by backward passes).

Example:
    >>> # the default model and a set trained by `mechscope transcoders train`
    >>> rm = ReplacementModel(model, transcoders)                        # doctest: +SKIP
    >>> state = rm.prepare("The Eiffel Tower is in the city of")         # doctest: +SKIP
    >>> (rm.local_logits(state) - state.logits).abs().max() < 1e-4       # doctest: +SKIP
    tensor(True)

`ReplacementModel`'s own example runs the same check on a tiny Llama with random transcoders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.core import names
from mechscope.core.errors import MechscopeError
from mechscope.core.families import get_module
from mechscope.dictionaries.transcoder_set import TranscoderSet, mlp_input_hook
from mechscope.methods.metrics import kl_divergence

MlpOut = Callable[[int, Tensor], Tensor]


class ReplacementError(MechscopeError):
    """The replacement model cannot be built for this model or input.

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> ReplacementModel(model, transcoders).prepare(torch.tensor([[0, 1], [0, 2]]))
        Traceback (most recent call last):
        ...
        mechscope.circuits.replacement.ReplacementError: attribution takes one prompt at a time, got a batch of 2
    """


@dataclass
class FrozenNorm:
    """A norm module linearised at its recorded input `x0`: `y0 + coef * P(x - x0)`.

    Example:
        >>> # an RMSNorm (no centering) recorded at x0 = [3, 4]: its scale 1 / rms(x0) stays frozen
        >>> x0 = torch.tensor([3.0, 4.0])
        >>> coef = 1 / x0.pow(2).mean().sqrt()
        >>> norm = FrozenNorm(x0=x0, y0=x0 * coef, coef=coef.expand(2), center=False)
        >>> norm(x0)                                    # the recorded output
        tensor([0.8485, 1.1314])
        >>> norm(2 * x0)                                # linear in x, where the real norm would not move
        tensor([1.6971, 2.2627])
    """

    x0: Tensor
    y0: Tensor
    coef: Tensor
    center: bool

    def __call__(self, x: Tensor) -> Tensor:
        dx = x - self.x0
        if self.center:
            dx = dx - dx.mean(-1, keepdim=True)
        return self.y0 + self.coef * dx


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def _freeze_norm(module: nn.Module, x0: Tensor, y0: Tensor, name: str) -> FrozenNorm:
    """Frozen-scale linearisation of a LayerNorm or RMSNorm, checked against the module's output."""
    x = x0.float()
    if isinstance(module, nn.LayerNorm):
        scale = (x.var(-1, unbiased=False, keepdim=True) + module.eps).sqrt()
        weight = module.weight if module.weight is not None else torch.ones(x.shape[-1])
        coef, center = weight.float() / scale, True
        rebuilt = coef * (x - x.mean(-1, keepdim=True)) + (module.bias if module.bias is not None else 0)
    else:
        eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
        if eps is None:
            raise ReplacementError(f"norm module {name!r} ({type(module).__name__}) has no eps attribute")
        scale = (x.pow(2).mean(-1, keepdim=True) + float(eps)).sqrt()
        with torch.no_grad():  # the effective weight, whatever the module's convention (w or 1 + w)
            ones = torch.ones(x.shape[-1], dtype=x0.dtype, device=x0.device)
            w_eff = module(ones).float() * (1.0 + float(eps)) ** 0.5
        coef, center = w_eff / scale, False
        rebuilt = coef * x
    if not torch.allclose(rebuilt, y0.float(), atol=1e-4, rtol=1e-4):
        raise ReplacementError(f"cannot freeze norm module {name!r} ({type(module).__name__}): "
                               "it is neither a LayerNorm nor an RMSNorm of the usual form")
    return FrozenNorm(x0.detach(), y0.detach(), coef.detach().to(x0.dtype), center)


@dataclass
class PromptState:
    """What `ReplacementModel.prepare` records on one prompt (batch 1; per-layer lists hold `[pos, ...]`).

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> state = ReplacementModel(model, transcoders).prepare(torch.tensor([[0, 3, 1, 4]]))
        >>> state.n_pos, state.logits.shape, state.features[1].shape, len(state.errors)
        (4, torch.Size([4, 9]), torch.Size([4, 32]), 2)
        >>> bool(state.features[0][0].any())            # the first position's features are zeroed
        False
    """

    ids: Tensor
    logits: Tensor
    patterns: dict[int, Tensor]
    norms: dict[str, FrozenNorm]
    embed: Tensor
    mlp_in: list[Tensor]
    mlp_out: list[Tensor]
    features: list[Tensor]
    reconstruction: list[Tensor]
    errors: list[Tensor]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return int(self.ids.shape[-1])


class ReplacementModel:
    """A `HookedModel` with a whole-model transcoder set; see the module docstring.

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> rm = ReplacementModel(model, transcoders)
        >>> state = rm.prepare(torch.tensor([[0, 3, 1, 4, 1]]))
        >>> bool((rm.local_logits(state) - state.logits).abs().max() < 1e-4)   # error terms included: exact
        True
        >>> rm.local_logits(state, use_error=False).shape                       # the transcoders alone
        torch.Size([5, 9])
    """

    def __init__(self, model: Any, transcoders: TranscoderSet, zero_positions: int = 1) -> None:
        transcoders.check_model(model)
        if not model.family.has_mlp or model.cfg.parallel_attn_mlp:
            raise ReplacementError(f"circuit tracing needs sequential attention and MLP blocks; "
                                   f"{model.cfg.name} ({model.cfg.family}) has none or runs them in parallel")
        self.model = model
        self.transcoders = transcoders
        self.zero_positions = zero_positions
        self.n_layers = model.cfg.n_layers
        self._norm_modules = {n: m for n, m in model.hf_model.named_modules() if _is_norm(m)}
        mlp_path = model.family.mlp_in.rsplit(".", 1)[0]
        self._mlps = [get_module(layer, mlp_path) for layer in model.layers]

    # -- recording ------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, inputs: Any) -> PromptState:
        """Run the real model once on `inputs` (a prompt, tokenized with a BOS prepended, or `[1, pos]` ids)
        and record the state."""
        model = self.model
        if isinstance(inputs, str):  # circuit-tracer's convention: a special token first (its features are zeroed)
            inputs = model.tokenize(inputs, prepend_bos=True).ids
        ids, _ = model.prepare_inputs(inputs, None)
        if ids.shape[0] != 1:
            raise ReplacementError(f"attribution takes one prompt at a time, got a batch of {ids.shape[0]}")
        seen: dict[str, tuple[Tensor, Tensor]] = {}
        handles = []
        for name, module in self._norm_modules.items():
            def keep(mod: nn.Module, args: tuple, out: Tensor, _name: str = name) -> None:
                seen[_name] = (args[0].detach(), (out[0] if isinstance(out, tuple) else out).detach())

            handles.append(module.register_forward_hook(keep))
        L = self.n_layers
        wanted = [names.EMBED] + [h for layer in range(L) for h in (names.pattern(layer), mlp_input_hook(model, layer),
                                                                     names.mlp_out(layer))]
        try:
            logits, cache = model.run_with_cache(ids, names=wanted)
        finally:
            for handle in handles:
                handle.remove()
        norms = {n: _freeze_norm(self._norm_modules[n], x0, y0, n) for n, (x0, y0) in seen.items()}
        mlp_in = [cache[mlp_input_hook(model, layer)][0].float() for layer in range(L)]
        mlp_out = [cache[names.mlp_out(layer)][0].float() for layer in range(L)]
        tc = self.transcoders
        features: list[Tensor] = []
        for layer in range(L):
            acts = tc.encode(layer, mlp_in[layer]).detach().float()
            acts[: self.zero_positions] = 0
            features.append(acts)
        recon = [r.detach().float() for r in tc.reconstruct(features, mlp_in)]
        errors = [mlp_out[layer] - recon[layer] for layer in range(L)]
        assert logits is not None
        state = PromptState(ids=ids, logits=logits[0].float(), patterns={i: cache[names.pattern(i)] for i in range(L)},
                            norms=norms, embed=cache[names.EMBED][0].float(), mlp_in=mlp_in, mlp_out=mlp_out,
                            features=features, reconstruction=recon, errors=errors)
        if tc.has_skip:
            state.extra["frozen_mlp_in"] = self._frozen_mlp_inputs(state)
        return state

    def _frozen_mlp_inputs(self, state: PromptState) -> list[Tensor]:
        """Each layer's MLP input `[pos, d_model]` in the frozen model's run on the prompt (no skip terms)."""
        seen: dict[int, Tensor] = {}

        def keep(act: Tensor, hook: Any) -> None:
            seen[_layer(hook)] = act[0].detach()

        hooks = [(mlp_input_hook(self.model, layer), keep) for layer in range(self.n_layers)]
        with self.frozen(state, hooks=hooks, skip_terms=False):
            self.model(state.ids)
        return [seen[layer] for layer in range(self.n_layers)]

    # -- the frozen forward ---------------------------------------------------------------------
    @contextmanager
    def frozen(self, state: PromptState, mlp_out: MlpOut | None = None,
               hooks: list[tuple[str, Any]] | None = None, skip_terms: bool = True) -> Iterator[Any]:
        """Within the block, runs of `self.model` are the local replacement model of `state`.

        `mlp_out(layer, recorded [batch, pos, d_model]) -> tensor` gives each MLP output
        (default: the recorded one); `hooks` are extra `(name, fn)` forward hooks; `skip_terms=False`
        leaves out the skip terms of skip transcoders.
        """
        model = self.model
        dtype = model.dtype

        def pattern_fn(act: Tensor, hook: Any) -> Tensor:
            return state.patterns[_layer(hook)].to(act.dtype).expand_as(act)

        skip = skip_terms and self.transcoders.has_skip
        base_in = state.extra.get("frozen_mlp_in", state.mlp_in)
        live_in: dict[int, Tensor] = {}

        def read_in(act: Tensor, hook: Any) -> None:
            live_in[_layer(hook)] = act

        def mlp_fn(act: Tensor, hook: Any) -> Tensor:
            layer = _layer(hook)
            recorded = state.mlp_out[layer].to(dtype).expand_as(act)
            out = recorded if mlp_out is None else mlp_out(layer, recorded).to(act.dtype)
            if skip:  # linear: the change of the skip term since the frozen run on the prompt
                x = live_in.pop(layer)
                dx = (x - base_in[layer].to(x.dtype)).reshape(-1, x.shape[-1])
                out = out + self.transcoders.skip(layer, dx).reshape(x.shape).to(out.dtype)
            return out

        fwd = [(names.pattern(layer), pattern_fn) for layer in range(self.n_layers)]
        if skip:
            fwd += [(mlp_input_hook(model, layer), read_in) for layer in range(self.n_layers)]
        fwd += [(names.mlp_out(layer), mlp_fn) for layer in range(self.n_layers)]
        params = list(model.hf_model.parameters())
        grads = [p.requires_grad for p in params]
        with ExitStack() as stack:
            for name, module in self._norm_modules.items():
                frozen = state.norms.get(name)
                if frozen is None:
                    continue

                def replace(mod: nn.Module, args: tuple, out: Any, _f: FrozenNorm = frozen) -> Tensor:
                    return _f(args[0]).to(args[0].dtype)

                stack.callback(module.register_forward_hook(replace).remove)
            for mlp in self._mlps:  # the MLP's value is replaced anyway: build no graph through it
                stack.callback(mlp.register_forward_pre_hook(_detach_args).remove)
            for p in params:
                p.requires_grad_(False)
            stack.callback(lambda: [p.requires_grad_(g) for p, g in zip(params, grads, strict=True)])
            stack.enter_context(model.hooks([*fwd, *(hooks or [])]))
            yield model

    def local_logits(self, state: PromptState, use_error: bool = True) -> Tensor:
        """Logits `[pos, d_vocab]` of the local replacement model (`use_error=False`: errors dropped)."""
        def out(layer: int, recorded: Tensor) -> Tensor:
            value = state.reconstruction[layer] + (state.errors[layer] if use_error else 0)
            return value.to(recorded.dtype).expand_as(recorded)

        with torch.no_grad(), self.frozen(state, out):
            return self.model(state.ids)[0].float()


def unembed_input_hook(model: Any) -> str:
    """The hook name of what the unembedding reads (the final norm's output, weight applied).

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> unembed_input_hook(model)
        'ln_final.hook_out'
    """
    return "ln_final.hook_out" if "ln_final.hook_out" in model.sites else names.LN_FINAL


def _layer(hook: Any) -> int:
    layer = names.parse_layer(hook.name)
    assert layer is not None
    return layer


def _detach_args(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.detach() if isinstance(a, Tensor) else a for a in args)


@torch.no_grad()
def replacement_logits(model: Any, transcoders: TranscoderSet, inputs: Any) -> Tensor:
    """Logits `[batch, pos, d_vocab]` of the (global) replacement model: every MLP output replaced by
    the transcoders' prediction from the live MLP inputs (skip terms included), attention and norms
    running as usual.

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> replacement_logits(model, transcoders, torch.tensor([[0, 3, 1, 4], [0, 2, 2, 5]])).shape
        torch.Size([2, 4, 9])
    """
    transcoders.check_model(model)
    acts: list[Tensor] = []
    mlp_inputs: list[Tensor] = []

    def read(act: Tensor, hook: Any) -> None:
        flat = act.reshape(-1, act.shape[-1])
        acts.append(transcoders.encode(_layer(hook), flat))
        mlp_inputs.append(flat)

    def write(act: Tensor, hook: Any) -> Tensor:
        layer = _layer(hook)
        out = transcoders.decode_to(layer, acts)
        if transcoders.has_skip:
            out = out + transcoders.skip(layer, mlp_inputs[layer]).to(out.dtype)
        return out.reshape(act.shape).to(act.dtype)

    hooks: list[tuple[str, Any]] = []
    for layer in range(model.cfg.n_layers):
        hooks += [(mlp_input_hook(model, layer), read), (transcoders.output_hook(layer), write)]
    return model.run_with_hooks(inputs, fwd_hooks=hooks)


@torch.no_grad()
def replacement_agreement(model: Any, transcoders: TranscoderSet, inputs: Any) -> dict[str, float]:
    """How close the replacement model (no error terms) is to the real one on `inputs`, positions 1 on:
    `next_token_agreement` (same argmax) and `kl` (mean `KL(real || replacement)`, nats).

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.dictionaries import make_dictionary
        >>> from mechscope.dictionaries.transcoder_set import PerLayerTranscoders
        >>> transcoders = PerLayerTranscoders([make_dictionary("relu", d_in=16, d_sae=32, d_out=16, seed=i,
        ...     hook_name=names.ln2(i), hook_name_out=names.mlp_out(i)) for i in range(2)])
        >>> result = replacement_agreement(model, transcoders, torch.tensor([[0, 3, 1, 4], [0, 2, 2, 5]]))
        >>> sorted(result), result["positions"]                 # 2 rows of 3 positions after the first
        (['kl', 'next_token_agreement', 'positions'], 6)
        >>> 0.0 <= result["next_token_agreement"] <= 1.0 and result["kl"] >= 0.0
        True
    """
    real = model(inputs)[:, 1:].float()
    replaced = replacement_logits(model, transcoders, inputs)[:, 1:].float()
    agree = (real.argmax(-1) == replaced.argmax(-1)).float().mean()
    return {"next_token_agreement": float(agree), "kl": float(kl_divergence(real, replaced).mean()),
            "positions": int(real.shape[0] * real.shape[1])}
