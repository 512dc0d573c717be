"""`ActivationCache`: the activations of one run, by hook name, with TransformerLens's analysis methods.

The analysis methods follow TransformerLens's `ActivationCache` (same arguments, labels and
conventions) and need the model the cache came from (`run_with_cache` attaches it):

- `accumulated_resid`: the residual stream before each layer (and after the last);
- `decompose_resid`: embeddings, then each layer's `attn_out` / `mlp_out`;
- `stack_head_results`: every head's `hook_result` (cache `attn.hook_result` first);
- `apply_ln_to_stack`: center (LayerNorm) and divide by the cached `hook_scale` of a norm;
- `logit_attrs`: direct logit attribution, `apply_ln_to_stack(stack) . (w_final * W_U[:, token])`.
  TransformerLens expects the final norm's weight folded into `W_U` (`fold_ln`); mechscope keeps
  HF's weights and multiplies the direction by that weight instead, so the attributions of a
  full decomposition sum to the logit minus constant terms (norm bias, `b_U`).

Example:
    >>> cache = ActivationCache({"blocks.0.hook_resid_pre": torch.zeros(1, 2, 4)})
    >>> cache["blocks.0.hook_resid_pre"].shape, cache["resid_pre", 0].shape
    (torch.Size([1, 2, 4]), torch.Size([1, 2, 4]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mechscope.core import names
from mechscope.core.errors import HookNameError, MechscopeError, unknown_name_message

PosSlice = int | slice | Sequence[int] | Tensor | None
Key = str | tuple[Any, ...]
_ALIASES = {"attn": "pattern", "embed": "hook_embed", "pos_embed": "hook_pos_embed"}


def _pos(t: Tensor, pos_slice: PosSlice, dim: int = -2) -> Tensor:
    """TransformerLens's `Slice` on the position dimension: an int drops it, a slice or list keeps it."""
    if pos_slice is None:
        return t
    if isinstance(pos_slice, int):
        return t.select(dim, pos_slice)
    if isinstance(pos_slice, slice):
        index = [slice(None)] * t.ndim
        index[dim] = pos_slice
        return t[tuple(index)]
    return t.index_select(dim, torch.as_tensor(pos_slice, device=t.device))


class ActivationCache(Mapping[str, Tensor]):
    """A read-only mapping from hook name to activation, with helpful misses.

    Example:
        >>> import torch
        >>> cache = ActivationCache({"blocks.0.hook_resid_post": torch.zeros(1, 3, 8)})
        >>> list(cache), cache["blocks.0.hook_resid_post"].shape
        (['blocks.0.hook_resid_post'], torch.Size([1, 3, 8]))
        >>> cache["blocks.0.hook_resid_pos"]                  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mechscope.core.errors.HookNameError: ...Did you mean: 'blocks.0.hook_resid_post'?...
    """

    def __init__(self, activations: dict[str, Tensor], model: Any = None,
                 lazy: dict[str, Callable[[], Tensor]] | None = None) -> None:
        self._acts = activations
        self._lazy = dict(lazy or {})  # name -> computes the activation on first access
        self.model = model
        if self._lazy:
            order = {n: i for i, n in enumerate(model.hook_names())} if model is not None else {}
            self._keys = sorted([*activations, *self._lazy], key=lambda n: order.get(n, len(order)))
        else:
            self._keys = list(activations)

    # -- mapping -------------------------------------------------------------------------------
    def __getitem__(self, key: Key) -> Tensor:  # type: ignore[override]
        name = key if isinstance(key, str) else self._tuple_name(key)
        if name not in self and isinstance(key, str) and "." not in key:
            name = _ALIASES.get(key, key)
        if name in self._lazy:
            self._acts[name] = self._lazy.pop(name)()
        try:
            return self._acts[name]
        except KeyError:
            raise HookNameError(unknown_name_message("cached hook name", name, self._keys)) from None

    def __contains__(self, key: object) -> bool:
        return key in self._acts or key in self._lazy

    def _tuple_name(self, key: tuple[Any, ...]) -> str:
        """`("pattern", 0)` -> 'blocks.0.attn.hook_pattern'; `("scale", 2, "ln2")` -> 'blocks.2.ln2.hook_scale'."""
        short, layer, *rest = key
        if layer is None:
            return _ALIASES.get(short, f"ln_final.hook_{short}") if short != "attn" else short
        short = "pattern" if short == "attn" else short
        if layer < 0:
            layer += self._n_layers()
        tail = short if short.startswith("hook_") else f"hook_{short}"
        matches = [s for s in names.BLOCK_SUFFIXES if s == short or s.split(".")[-1] == tail]
        if rest and rest[0]:
            matches = [s for s in matches if s.startswith(f"{rest[0]}.")] or matches
        if not matches:
            raise HookNameError(unknown_name_message("hook name shorthand", short, names.BLOCK_SUFFIXES))
        return names.block(layer, matches[0])

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations)"

    def stack(self, suffix: str) -> Tensor:
        """Stack `blocks.{l}.{suffix}` over layers present in the cache: [n_layers, ...].

        Example: `cache.stack("hook_resid_post")` -> [n_layers, batch, pos, d_model].
        """
        keyed = sorted(
            (layer, self[name]) for name in self._keys
            if names.suffix_of(name) == suffix and (layer := names.parse_layer(name)) is not None
        )
        if not keyed:
            raise HookNameError(f"No cached activations end with {suffix!r}.")
        return torch.stack([act for _, act in keyed])

    # -- analysis (TransformerLens's methods) -------------------------------------------------------
    def _model(self) -> Any:
        if self.model is None:
            raise MechscopeError("This cache has no model attached; analysis methods need run_with_cache's cache.")
        return self.model

    def _n_layers(self) -> int:
        if self.model is not None:
            return int(self.model.cfg.n_layers)
        layers = [layer for n in self._keys if (layer := names.parse_layer(n)) is not None]
        return max(layers) + 1 if layers else 0

    def _layer(self, layer: int | None) -> int:
        n = self._n_layers()
        return n if layer is None or layer == -1 else layer

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: PosSlice = None, mlp_input: bool = False,
                          return_labels: bool = False) -> Tensor | tuple[Tensor, list[str]]:
        """The residual stream before layers 0..`layer` (`final_post` when `layer` is the last + 1):
        `[components, batch, (pos,) d_model]`. With `apply_ln` at the final layer each component goes
        through the final norm module (the logit lens, as TransformerLens 3 does); before it, the
        cached scale of the layer's norm is applied.

        Example:
            >>> import torch
            >>> from mechscope.core.examples import tiny_model
            >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
            >>> _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
            >>> resid, labels = cache.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True)
            >>> resid.shape, labels
            (torch.Size([3, 1, 16]), ['0_pre', '1_pre', 'final_post'])
        """
        n, layer = self._n_layers(), self._layer(layer)
        parts, labels = [], []
        for index in range(layer + 1):
            if index == n:
                parts.append(self["resid_post", n - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", index])
            labels.append(f"{index}_pre")
            if (incl_mid and index < layer) or (mlp_input and index == layer):
                parts.append(self["resid_mid", index])
                labels.append(f"{index}_mid")
        stack = torch.stack([_pos(p, pos_slice) for p in parts])
        if apply_ln:
            if layer == n:
                norm = self._model().final_norm
                stack = torch.stack([norm(s) for s in stack])
            else:
                stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice: PosSlice = None, incl_embeds: bool = True,
                        return_labels: bool = False) -> Tensor | tuple[Tensor, list[str]]:
        """The residual stream before `layer` as a sum of parts: `embed`, `pos_embed`, then per layer
        `{l}_attn_out` and `{l}_mlp_out` (`mode` 'attn' or 'mlp' keeps one kind). `[components, ...]`."""
        layer = self._layer(layer)
        parts, labels = [], []
        if incl_embeds:
            for name, label in ((names.EMBED, "embed"), (names.POS_EMBED, "pos_embed")):
                if name in self:
                    parts.append(self[name])
                    labels.append(label)
        has_mlp = any(n.endswith("hook_mlp_out") for n in self._keys)
        for index in range(layer):
            if mode != "mlp":
                parts.append(self["attn_out", index])
                labels.append(f"{index}_attn_out")
            if mode != "attn" and has_mlp:
                parts.append(self["mlp_out", index])
                labels.append(f"{index}_mlp_out")
        if mlp_input and mode != "mlp":
            parts.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        stack = torch.stack([_pos(p, pos_slice) for p in self._batched(parts)])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def _batched(self, parts: list[Tensor]) -> list[Tensor]:
        """`hook_pos_embed` is computed once for the batch: broadcast it to the others' shape."""
        full = max((p.shape for p in parts), key=lambda s: s[0])
        return [p.expand(full) if p.shape != full else p for p in parts]

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice: PosSlice = None, apply_ln: bool = False) -> Tensor | tuple[Tensor, list[str]]:
        """Every head's output before `layer`: `[layer * n_heads, batch, (pos,) d_model]`, labels `L{l}H{h}`;
        `incl_remainder` adds `resid_post[layer - 1]` minus their sum (embeddings, MLPs, biases)."""
        layer = self._layer(layer)
        parts, labels = [], []
        for index in range(layer):
            result = _pos(self["result", index], pos_slice, dim=-3)
            parts.append(result.movedim(-2, 0))
            labels.extend(f"L{index}H{h}" for h in range(result.shape[-2]))
        if parts:
            stack = torch.cat(parts)
        else:
            stack = torch.zeros(0, *_pos(self[names.EMBED], pos_slice).shape)
        if incl_remainder and layer > 0:
            remainder = _pos(self["resid_post", layer - 1], pos_slice) - stack.sum(0)
            stack = torch.cat([stack, remainder[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(self, residual_stack: Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice: PosSlice = None) -> Tensor:
        """Each component centered (LayerNorm models) and divided by the cached scale of the norm that
        reads the residual at `layer` (`ln_final` for the last + 1; `ln2` with `mlp_input`). The
        norm's weight is not applied, as in TransformerLens."""
        n, layer = self._n_layers(), self._layer(layer)
        if layer == n:
            scale_name = names.LN_FINAL_SCALE
        else:
            scale_name = names.block(layer, "ln2.hook_scale" if mlp_input else "ln1.hook_scale")
        scale = _pos(self[scale_name], pos_slice)  # [batch, (pos), 1]
        if tuple(residual_stack.shape[-scale.ndim:-1]) != tuple(scale.shape[:-1]):
            raise MechscopeError(
                f"The residual stack's batch/position dims {tuple(residual_stack.shape[:-1])} do not end in the "
                f"cached scale's {tuple(scale.shape[:-1])} at pos_slice={pos_slice!r}: pass the same pos_slice "
                f"that sliced the stack.")
        if isinstance(self._model_norm(layer, mlp_input), torch.nn.LayerNorm):
            residual_stack = residual_stack - residual_stack.mean(-1, keepdim=True)
        return residual_stack / scale

    def _model_norm(self, layer: int, mlp_input: bool) -> torch.nn.Module:
        model = self._model()
        if layer == model.cfg.n_layers:
            return model.final_norm
        return model.layers[layer].get_submodule(model.family.ln2 if mlp_input else model.family.ln1)

    def logit_attrs(self, residual_stack: Tensor, tokens: int | str | Tensor,
                    incorrect_tokens: int | str | Tensor | None = None, pos_slice: PosSlice = None) -> Tensor:
        """Direct logit attribution of each component: `[components, batch, (pos)]`.

        `apply_ln_to_stack(stack)` (final norm's cached scale) dotted with the token's direction
        `w_final * W_U[:, token]` (minus the incorrect token's). `tokens` is one token (id or string)
        or one per batch row.

        Example:
            >>> import torch
            >>> from mechscope.core.examples import tiny_model
            >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
            >>> _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
            >>> stack, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)
            >>> cache.logit_attrs(stack, 6, 7, pos_slice=-1).shape      # slice the same position as the stack
            torch.Size([5, 1])
        """
        direction = self._direction(tokens)
        if incorrect_tokens is not None:
            direction = direction - self._direction(incorrect_tokens)
        scaled = self.apply_ln_to_stack(residual_stack, None, pos_slice=pos_slice)
        if direction.ndim == 2 and scaled.ndim == 4:  # one token per batch row, positions kept
            direction = direction[:, None]
        return (scaled * direction).sum(-1)

    def _direction(self, tokens: int | str | Tensor) -> Tensor:
        model = self._model()
        if isinstance(tokens, str):
            tokens = model.to_single_token(tokens)
        w_u = model.W_U
        norm = model.final_norm
        weight = getattr(norm, "weight", None)
        scale = (weight.float() + model.family.norm_offset).to(w_u.dtype) if weight is not None else 1.0
        ids = torch.as_tensor(tokens, device=w_u.device)
        return (w_u[:, ids].movedim(0, -1)) * scale
