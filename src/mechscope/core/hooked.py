"""`HookedModel`: a Hugging Face causal LM, run as it is, with TransformerLens-named hook points.

Example:
    >>> import mechscope
    >>> model = mechscope.load_model()                                  # doctest: +SKIP
    >>> logits, cache = model.run_with_cache("The Eiffel Tower is in", names=lambda n: "resid" in n)  # doctest: +SKIP
    >>> cache["blocks.3.hook_resid_post"].shape                         # doctest: +SKIP
    torch.Size([1, 6, 576])

Grouped-query attention: `attn.hook_k` and `attn.hook_v` have `n_kv_heads` heads, as the
model computes them (not repeated per query head); query head `h` reads key/value head
`h // (n_heads // n_kv_heads)`. `attn.hook_q`, `hook_z`, `hook_pattern` and `hook_result`
have `n_heads` heads. `hook_q`/`hook_k` are taken before rotary embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.core import names as hook_names
from mechscope.core import tokens as tok
from mechscope.core import weights
from mechscope.core.attention import attn_implementation
from mechscope.core.cache import ActivationCache
from mechscope.core.config import ModelConfig, config_from_hf
from mechscope.core.errors import HookNameError, MechscopeError, unknown_name_message
from mechscope.core.families import Family, family_for_model_type, get_module
from mechscope.core.runner import HookFn, HookRun, StopForward
from mechscope.core.sites import build_sites

NameFilter = str | Sequence[str] | Callable[[str], bool] | None
Inputs = str | Sequence[str] | Tensor | tok.TokenBatch
HookSpec = Sequence[tuple[str | Callable[[str], bool], HookFn]]


def _stacked(name: str) -> property:
    return property(lambda self: weights.stacked(self, name),
                    doc=f"{name} of every layer in TransformerLens's shape (see mechscope.core.weights).")


class HookedModel(nn.Module):
    """Wrap `hf_model` (any supported causal LM) without changing what it computes.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> logits, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]), names=lambda n: "resid_post" in n)
        >>> logits.shape, cache["blocks.1.hook_resid_post"].shape
        (torch.Size([1, 3, 50]), torch.Size([1, 3, 16]))
    """

    def __init__(self, hf_model: nn.Module, tokenizer: Any = None, name: str | None = None,
                 family: Family | None = None) -> None:
        super().__init__()
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.family = family or family_for_model_type(hf_model.config.model_type)
        model_name = name or getattr(hf_model.config, "_name_or_path", "") or hf_model.config.model_type
        self.cfg: ModelConfig = config_from_hf(
            hf_model.config, self.family.name, model_name, self.family.is_parallel(hf_model.config)
        )
        self.sites = build_sites(hf_model, self.family, self.cfg)
        self._permanent: dict[str, list[HookFn]] = {}
        self._depth = 0  # how many `hooks()` contexts are open (permanent hooks join the outermost)
        self.source: dict[str, Any] = {}

    # -- structure ---------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return get_module(self.hf_model, self.family.layers)

    @property
    def final_norm(self) -> nn.Module:
        return get_module(self.hf_model, self.family.final_norm)

    @property
    def lm_head(self) -> nn.Module:
        return get_module(self.hf_model, self.family.unembed)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    @property
    def attn_implementation(self) -> str:
        return attn_implementation(self.hf_model)

    # -- weights in TransformerLens shapes (mechscope.core.weights) ----------------------------
    W_Q, W_K, W_V, W_O = _stacked("W_Q"), _stacked("W_K"), _stacked("W_V"), _stacked("W_O")
    b_Q, b_K, b_V, b_O = _stacked("b_Q"), _stacked("b_K"), _stacked("b_V"), _stacked("b_O")
    W_in, W_gate, W_out = _stacked("W_in"), _stacked("W_gate"), _stacked("W_out")
    b_in, b_out = _stacked("b_in"), _stacked("b_out")

    @property
    def W_E(self) -> Tensor:
        return weights.embedding(self)

    @property
    def W_pos(self) -> Tensor:
        return weights.positions(self)

    @property
    def W_U(self) -> Tensor:
        return weights.unembedding(self)[0]

    @property
    def b_U(self) -> Tensor:
        return weights.unembedding(self)[1]

    def layer_weights(self, layer: int) -> weights.LayerWeights:
        """Block `layer`'s weights in TransformerLens shapes, as views of the HF parameters."""
        return weights.layer_weights(self, layer)

    def hook_names(self) -> list[str]:
        """Every hook name of this model, in the order the forward pass reaches them."""
        return list(self.sites)

    def unembed(self, resid: Tensor) -> Tensor:
        """Logits from a residual-stream vector: final norm, unembedding, and any final soft-cap."""
        logits = self.lm_head(self.final_norm(resid))
        cap = getattr(self._text_config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @property
    def _text_config(self) -> Any:
        return getattr(self.hf_model.config, "text_config", None) or self.hf_model.config

    # -- tokens ------------------------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str], prepend_bos: bool | None = None) -> tok.TokenBatch:
        """Token ids and attention mask, right-padded; see `mechscope.core.tokens.tokenize`."""
        return tok.tokenize(self.tokenizer, texts if isinstance(texts, str) else list(texts), prepend_bos)

    def to_tokens(self, texts: str | Sequence[str], prepend_bos: bool | None = None) -> Tensor:
        """Token ids [batch, pos] (right-padded)."""
        return self.tokenize(texts, prepend_bos).ids

    def to_str_tokens(self, text: str | Tensor | Sequence[int]) -> list[str]:
        """The tokens of a prompt (or of a 1-D id tensor) as strings."""
        ids = self.to_tokens(text)[0] if isinstance(text, str) else text
        if isinstance(ids, Tensor) and ids.dim() > 1:
            ids = ids[0]
        return tok.str_tokens(self.tokenizer, ids)

    def to_single_token(self, text: str) -> int:
        """The id of a one-token string (e.g. ' Paris'); a clear error listing its tokens otherwise."""
        return tok.single_token(self.tokenizer, text)

    def prepare_inputs(self, inputs: Inputs, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Token ids `[batch, pos]` on the model's device, and the attention mask (None when nothing is padded),
        from text, ids or a `TokenBatch`; refuses empty input, ids outside the vocabulary and over-long contexts.

        Example:
            >>> import torch
            >>> from mechscope.core.examples import tiny_model
            >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
            >>> ids, mask = model.prepare_inputs(torch.tensor([1, 2, 3]))
            >>> ids.tolist(), mask
            ([[1, 2, 3]], None)
            >>> model.prepare_inputs(torch.tensor([[1, 99]]))            # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            mechscope.core.errors.TokenizationError: Token id 99 (row 0, position 1) is outside this model's vocabulary ...
        """
        if isinstance(inputs, tok.TokenBatch):
            ids, attention_mask = inputs.ids, inputs.attention_mask
        elif isinstance(inputs, Tensor):
            ids = inputs if inputs.dim() == 2 else inputs.unsqueeze(0)
        else:
            batch = self.tokenize(inputs if isinstance(inputs, str) else list(inputs))
            ids = batch.ids
            attention_mask = batch.attention_mask if batch.attention_mask.eq(0).any() else None
        if ids.numel() == 0:
            raise MechscopeError("Empty input: the token tensor has no positions.")
        tok.check_ids(ids, self.hf_model.get_input_embeddings().num_embeddings, self.cfg.n_ctx)
        device = self.device
        ids = ids.to(device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        return ids, attention_mask

    # -- hook-name resolution ------------------------------------------------------------------
    def resolve_names(self, names: NameFilter) -> list[str]:
        """Hook names selected by a name, list of names, predicate, or None (all)."""
        if names is None:
            return self.hook_names()
        if callable(names):
            return [n for n in self.sites if names(n)]
        wanted = [names] if isinstance(names, str) else list(names)
        for name in wanted:
            self.check_name(name)
        return wanted

    def check_name(self, name: str) -> str:
        """`name` if it is a hook name of this model; else a `HookNameError` naming the nearest."""
        if name not in self.sites:
            raise HookNameError(unknown_name_message("hook name", name, self.sites))
        return name

    def _hook_table(self, hooks: HookSpec | None, permanent: bool) -> dict[str, list[HookFn]]:
        table: dict[str, list[HookFn]] = {n: list(fns) for n, fns in self._permanent.items()} if permanent else {}
        for key, fn in hooks or ():
            for name in self.resolve_names(key):
                table.setdefault(name, []).append(fn)
        return table

    # -- running -------------------------------------------------------------------------------
    @contextmanager
    def hooks(self, fwd_hooks: HookSpec | None = None, bwd_hooks: HookSpec | None = None,
              stop_at_layer: int | None = None) -> Iterator[HookedModel]:
        """Temporarily add hooks; they are removed on exit, even after an error.

        Example:
            >>> import torch
            >>> from mechscope.core.examples import tiny_model
            >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
            >>> ids = torch.tensor([[1, 2, 3]])
            >>> with model.hooks([("blocks.0.hook_resid_pre", lambda act, hook: act * 0)]):
            ...     zeroed = model(ids)
            >>> bool((zeroed - model(ids)).abs().max() > 0)           # the hook is gone after the block
            True
        """
        stop = self._normalize_stop(stop_at_layer)
        stop_before = None if stop is None or stop == self.cfg.n_layers else self.layers[stop]
        outermost = self._depth == 0
        fwd = self._hook_table(fwd_hooks, permanent=outermost)
        with HookRun(self.hf_model, self.sites, fwd, self._hook_table(bwd_hooks, permanent=False), stop_before):
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1

    def add_permanent_hook(self, name: str | Callable[[str], bool], fn: HookFn) -> None:
        """A hook that applies to every later run until `reset_hooks()` (e.g. frozen patterns)."""
        for resolved in self.resolve_names(name):
            self._permanent.setdefault(resolved, []).append(fn)

    def reset_hooks(self) -> None:
        """Remove all permanent hooks."""
        self._permanent.clear()

    def forward(self, inputs: Inputs, attention_mask: Tensor | None = None) -> Tensor:
        """Logits [batch, pos, d_vocab] of the HF model (with any active hooks)."""
        ids, mask = self.prepare_inputs(inputs, attention_mask)
        if self._permanent and self._depth == 0:
            with HookRun(self.hf_model, self.sites, self._hook_table(None, permanent=True)):
                return self.hf_model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return self.hf_model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def _normalize_stop(self, stop_at_layer: int | None) -> int | None:
        """`stop_at_layer` as 0..n_layers (negative counts from the end, as in TransformerLens)."""
        if stop_at_layer is None:
            return None
        n = self.cfg.n_layers
        stop = stop_at_layer + n if stop_at_layer < 0 else stop_at_layer
        if not 0 <= stop <= n:
            raise MechscopeError(f"stop_at_layer={stop_at_layer} is outside -{n}..{n} for a {n}-layer model.")
        return stop

    def run_with_hooks(self, inputs: Inputs, fwd_hooks: HookSpec | None = None,
                       bwd_hooks: HookSpec | None = None, attention_mask: Tensor | None = None) -> Tensor:
        """Logits of a run with `fn(activation, hook)` applied at each named hook point.

        A hook function may return a replacement of the same shape. Backward hooks receive
        the gradient with respect to the activation (call `.backward()` yourself).
        """
        with self.hooks(fwd_hooks, bwd_hooks):
            return self.forward(inputs, attention_mask)

    def run_with_cache(self, inputs: Inputs, names: NameFilter = None, stop_at_layer: int | None = None,
                       attention_mask: Tensor | None = None, grad: bool = False,
                       fwd_hooks: HookSpec | None = None) -> tuple[Tensor | None, ActivationCache]:
        """Run once and keep the activations at `names` (all hook points when None).

        `stop_at_layer=n` runs blocks 0..n-1 only and returns no logits. Runs without
        autograd unless `grad=True`. `fwd_hooks` edit the run; the cache sees their edits
        where they come earlier in the forward pass. Without autograd, `attn.hook_result`s
        that no hook edits are computed when first read, from the cached `hook_z` and `W_O`
        (the same numbers; the run itself then costs no extra projection).
        """
        selected = self.resolve_names(names)
        stop = self._normalize_stop(stop_at_layer)
        if stop is not None and stop < self.cfg.n_layers:
            late = [n for n in selected if n.startswith(("ln_final.", "unembed."))
                    or (hook_names.parse_layer(n) or -1) >= stop]
            if late and not callable(names) and names is not None:
                raise HookNameError(f"{late[0]!r} comes after stop_at_layer={stop_at_layer}; nothing there is computed.")
            selected = [n for n in selected if n not in late]
        store: dict[str, Tensor] = {}

        def keep(act: Tensor, hook: Any) -> None:
            store[hook.name] = act if grad else act.detach()

        # Per-head results nobody edits are computed on first access, from the cached hook_z.
        edited = self._hook_table(fwd_hooks, permanent=self._depth == 0)
        lazy = {n: n.replace("attn.hook_result", "attn.hook_z") for n in selected
                if not grad and self.sites[n].special.startswith("result") and n not in edited}
        wanted = [n for n in selected if n not in lazy]
        cache_hooks = [(n, keep) for n in [*wanted, *{z for z in lazy.values() if z not in wanted}]]
        logits: Tensor | None = None
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            try:
                with self.hooks([*(fwd_hooks or []), *cache_hooks], stop_at_layer=stop_at_layer):
                    logits = self.forward(inputs, attention_mask)
            except StopForward:
                logits = None
        if stop is not None:
            logits = None
        missing = [n for n in [*wanted, *lazy.values()] if n not in store]
        if missing:
            raise MechscopeError(
                f"Hook point {missing[0]!r} was not reached in this run; this model's attention module may not "
                f"call transformers' attention functions (where patterns and scores are read)."
            )
        thunks = {n: partial(self.sites[n].read, store[z].flatten(-2)) for n, z in lazy.items()}
        ordered = {n: store[n] for n in self.sites if n in store and n in wanted}
        return logits, ActivationCache(ordered, model=self, lazy=thunks)

    def __repr__(self) -> str:
        c = self.cfg
        return (f"HookedModel({c.name!r}, family={c.family}, n_layers={c.n_layers}, d_model={c.d_model}, "
                f"n_heads={c.n_heads}, n_kv_heads={c.n_kv_heads})")
