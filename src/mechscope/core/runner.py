"""Installing hooks for one run and removing them afterwards, whatever happens.

`HookRun` turns `{hook name: [fn]}` into PyTorch module hooks on the sites that need them
(and on no others), runs each `fn(activation, hook)` in order, writes a returned tensor
back into the forward pass, and removes every handle in `__exit__`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from mechscope.core import names
from mechscope.core.attention import AttentionHooks, attention_hooks, check_hookable
from mechscope.core.errors import HookShapeError, MechscopeError
from mechscope.core.norms import normalized_of, scale_of, weighted
from mechscope.core.sites import Site


class HookPoint:
    """What a hook function is told about where it runs, as TransformerLens's `HookPoint` tells it.

    `hook.name` is the hook name, `hook.layer()` its block index, `hook.ctx` a dict a hook
    function may keep things in during one run, so hook functions written for
    TransformerLens run unchanged.

    Example:
        >>> hook = HookPoint("blocks.3.attn.hook_z", 3)
        >>> hook.name, hook.layer()
        ('blocks.3.attn.hook_z', 3)
    """

    __slots__ = ("_layer", "ctx", "name")

    def __init__(self, name: str, layer: int | None) -> None:
        self.name = name
        self._layer = layer
        self.ctx: dict[Any, Any] = {}

    def layer(self) -> int:
        """The block index of this hook point (an error for points outside the blocks)."""
        if self._layer is None:
            raise MechscopeError(f"{self.name!r} is outside the blocks; it has no layer.")
        return self._layer

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


HookFn = Callable[[Tensor, HookPoint], "Tensor | None"]
_REBUILT = "_mechscope_rebuilt_norm"
_INPUTS = ("q_input", "k_input", "v_input")


class StopForward(Exception):
    """Raised inside the forward pass to stop it early (`stop_at_layer`).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> _, cache = model.run_with_cache(torch.tensor([[1, 2]]), stop_at_layer=1)   # raised and caught inside
        >>> sorted(n for n in cache if n.endswith("resid_pre"))
        ['blocks.0.hook_resid_pre']
    """


def _output_tensor(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_output(output: Any, tensor: Tensor) -> Any:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


class HookRun:
    """Context manager: hooks `fwd[name]` / `bwd[name]` into the forward pass of `hf_model`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> ids, seen = torch.tensor([[1, 2, 3]]), []
        >>> fwd = {"blocks.0.hook_resid_post": [lambda act, hook: seen.append(hook.name)]}
        >>> with HookRun(model.hf_model, model.sites, fwd):
        ...     _ = model.hf_model(input_ids=ids)
        >>> seen
        ['blocks.0.hook_resid_post']
    """

    def __init__(
        self,
        hf_model: nn.Module,
        sites: dict[str, Site],
        fwd: dict[str, list[HookFn]],
        bwd: dict[str, list[HookFn]] | None = None,
        stop_before: nn.Module | None = None,
    ) -> None:
        self.hf_model = hf_model
        self.sites = sites
        self.fwd = fwd
        self.bwd = bwd or {}
        self.stop_before = stop_before
        self.handles: list[RemovableHandle] = []
        self.stash: dict[tuple[str, int | None], Tensor] = {}
        self._patterns: Any = None
        self._points: dict[str, HookPoint] = {}

    # -- applying user functions ------------------------------------------------------
    def _apply(self, site: Site, act: Tensor) -> Tensor:
        point = self._points.get(site.name)
        if point is None:
            point = self._points[site.name] = HookPoint(site.name, site.layer)
        new = act
        version = _version(act)
        for fn in self.fwd.get(site.name, ()):
            out = fn(new, point)
            if out is None:
                continue
            if not isinstance(out, Tensor):
                raise HookShapeError(f"Hook on {site.name!r} returned {type(out).__name__}; return a tensor or None.")
            if out.shape != new.shape or out.dtype != new.dtype or out.device != new.device:
                raise HookShapeError(
                    f"Hook on {site.name!r} returned a {tuple(out.shape)} {out.dtype} tensor on {out.device}; "
                    f"return one like the activation: {tuple(new.shape)} {new.dtype} on {new.device}."
                )
            new = out
        if new is act and version is not None and _version(act) != version:
            # Edited in place (TransformerLens style): a new object tells every caller it changed.
            new = act.clone()
        for fn in self.bwd.get(site.name, ()):
            if new.requires_grad:
                new.register_hook(partial(_backward_call, fn, point))
        return new

    def _run_sites(self, sites: list[Site], raw: Tensor) -> Tensor:
        current = raw
        for site in sites:
            act = site.read(current)
            new = self._apply(site, act)
            if new is act and site.name not in self.bwd:
                continue
            if site.special in ("result", "result_post_norm"):
                self.stash[("result", site.layer)] = new
            elif site.special in _INPUTS:  # applied at the projection (see _project_inputs)
                self.stash[(site.special, site.layer)] = (site.module, new)
            elif site.special == "resid_mid":
                self.stash[("resid_mid", site.layer)] = new
                current = new
            else:
                current = site.write(current, new)
        return current

    # -- module hooks ---------------------------------------------------------------------
    def _pre_hook(self, sites: list[Site], module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            raw = args[0]
            new = self._run_sites(sites, raw)
            return None if new is raw else ((new, *args[1:]), kwargs)
        raw = kwargs["hidden_states"]
        new = self._run_sites(sites, raw)
        return None if new is raw else (args, {**kwargs, "hidden_states": new})

    def _run_norm(self, sites: list[Site], module: nn.Module, x: Tensor, out: Tensor) -> Tensor:
        """`ln*.hook_scale` then `ln*.hook_normalized` (see norms.py); the output rebuilt after an edit
        (or under autograd, equal within float rounding); else the module's own output, bit for bit."""
        spec = sites[0].norm
        assert spec is not None
        scale = scale_of(spec, x)
        by_part = {s.special: s for s in sites}
        if "norm_scale" in by_part:
            new_scale = self._apply(by_part["norm_scale"], scale)
            edited, scale = new_scale is not scale, new_scale
        else:
            edited = False
        normalized = normalized_of(spec, x, scale)
        if "norm_normalized" in by_part:
            new = self._apply(by_part["norm_normalized"], normalized)
            edited, normalized = edited or new is not normalized, new
        if edited:
            return weighted(spec, module, normalized)
        # Under autograd the output is rebuilt from these pieces so that gradients reach them, once
        # per forward pass: a nested run must not cut the pieces an outer run's backward hooks watch.
        if torch.is_grad_enabled() and normalized.requires_grad and not getattr(out, _REBUILT, False):
            out = weighted(spec, module, normalized)
            setattr(out, _REBUILT, True)
        return out

    def _project_input(self, part: str, projection: nn.Module, current: Tensor) -> Tensor:
        """`hook_{q,k,v}_input` edited: each head's q/k/v recomputed from its own input, through the
        layer's norm and projection modules (their `forward`, so no hook runs twice)."""
        layer = self._layer_of[projection]
        stashed = self.stash.pop((part, layer), None)
        if stashed is None:
            return current
        norm, per_head = stashed  # [batch, pos, heads, d_model]
        site = self.sites[names.block(layer, f"attn.hook_{part[0]}")]
        heads = site.read(projection.forward(norm.forward(per_head)))  # [batch, pos, heads, heads, d_head]
        return site.write(current, heads.diagonal(dim1=2, dim2=3).movedim(-1, 2))

    def _post_hook(self, sites: list[Site], internal: list[str], module: nn.Module, args: tuple, output: Any) -> Any:
        raw = _output_tensor(output)
        current = raw
        if "result_apply" in internal or "result_apply_post_norm" in internal:
            result = self.stash.pop(("result", self._layer_of[module]), None)
            if result is not None:
                bias = getattr(module, "bias", None) if "result_apply" in internal else None
                current = result.sum(dim=-2) + (bias if bias is not None else 0)
        for part in _INPUTS:
            if part in internal:
                current = self._project_input(part, module, current)
        if "mid_fixup" in internal:
            layer = self._layer_of[module]
            mid = self.stash.pop(("resid_mid", layer), None)
            contribution = self.stash.pop(("mlp_contribution", layer), None)
            if mid is not None and contribution is not None:
                current = mid + contribution
        norm_sites = [s for s in sites if s.norm is not None]
        if norm_sites:
            current = self._run_norm(norm_sites, module, args[0], current)
            sites = [s for s in sites if s.norm is None]
        current = self._run_sites(sites, current)
        if "mlp_capture" in internal:
            self.stash[("mlp_contribution", self._layer_of[module])] = current
        return None if current is raw else _with_output(output, current)

    def _stop(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        raise StopForward

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> HookRun:
        wanted = [self.sites[n] for n in self.sites if n in self.fwd or n in self.bwd]
        pre: dict[nn.Module, list[Site]] = defaultdict(list)
        post: dict[nn.Module, list[Site]] = defaultdict(list)
        internal: dict[nn.Module, list[str]] = defaultdict(list)
        inside: dict[nn.Module, dict[str, Callable[[Tensor], Tensor]]] = defaultdict(dict)
        self._layer_of: dict[nn.Module, int | None] = {}
        for site in wanted:
            if site.event == "attention":
                inside[site.module][site.special] = partial(self._apply, site)
            else:
                (pre if site.event == "pre" else post)[site.module].append(site)
            if site.special == "result":
                internal[site.module].append("result_apply")
                self._layer_of[site.module] = site.layer
            if site.special == "result_post_norm":
                target = self.sites[site.name.replace("attn.hook_result", "hook_attn_out")].module
                internal[target].append("result_apply_post_norm")
                self._layer_of[target] = site.layer
            if site.special == "resid_mid":
                self._add_mid_fixup(site, internal)
            if site.special in _INPUTS:
                target = self.sites[names.block(site.layer, f"attn.hook_{site.special[0]}")].module
                internal[target].append(site.special)
                self._layer_of[target] = site.layer
        try:
            if self.stop_before is not None:
                self.handles.append(self.stop_before.register_forward_pre_hook(self._stop, with_kwargs=True))
            for module, group in pre.items():
                group.sort(key=lambda s: s.order)
                hook = partial(self._pre_hook, group)
                self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            for module in {**post, **internal}:
                group = sorted(post.get(module, []), key=lambda s: s.order)
                hook = partial(self._post_hook, group, internal.get(module, []))
                self.handles.append(module.register_forward_hook(hook))
            if inside:
                check_hookable(self.hf_model)
            self._patterns = attention_hooks({
                module: AttentionHooks(parts.get("rot_q"), parts.get("rot_k"), parts.get("attn_scores"),
                                       parts.get("pattern"))
                for module, parts in inside.items()
            })
            self._patterns.__enter__()
        except BaseException:
            self._remove()
            raise
        return self

    def _add_mid_fixup(self, site: Site, internal: dict[nn.Module, list[str]]) -> None:
        layer_site = self.sites[site.name.replace("hook_resid_mid", "hook_resid_post")]
        mlp_site = self.sites[site.name.replace("hook_resid_mid", "hook_mlp_out")]
        internal[layer_site.module].append("mid_fixup")
        internal[mlp_site.module].append("mlp_capture")
        self._layer_of[layer_site.module] = site.layer
        self._layer_of[mlp_site.module] = site.layer

    def _remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.stash.clear()

    def __exit__(self, *exc: object) -> None:
        try:
            if self._patterns is not None:
                self._patterns.__exit__(None, None, None)
        finally:
            self._remove()


def _version(tensor: Tensor) -> int | None:
    """The in-place version counter (None for inference-mode tensors, which have none)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def _backward_call(fn: HookFn, point: HookPoint, grad: Tensor) -> Tensor | None:
    return fn(grad, point)
