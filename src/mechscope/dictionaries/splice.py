"""Apply a dictionary to its hook site of a model: read its features, or splice it into the forward pass.

An SAE at site `h` replaces the activation `x` there by its reconstruction `x_hat`. With the
error term, the site carries `x_hat + e` where `e = x - x_hat` is computed from the clean
activation and detached: a constant input, as in circuit-tracer's error nodes. The run then
equals the clean run (up to float rounding) while gradients of any metric reach the
features (`dM/df = dM/dx . W_dec`); without the detach they would cancel exactly. A
transcoder reads `cfg.hook_name` and replaces `cfg.hook_name_out` by its prediction (plus
`e = y - y_hat` with the error term).

Each spliced dictionary has its own hook points, named after the site it replaces
(SAELens's names), which `fwd_hooks` can read or edit like any model hook point:

| name | value |
| --- | --- |
| `{site}.hook_sae_acts_post` | feature activations `[batch, pos, d_sae]` |
| `{site}.hook_sae_recons` | decoder output `[batch, pos, d_out]`, from the (edited) features |
| `{site}.hook_sae_error` | `x - x_hat` of the unedited features, detached `[batch, pos, d_out]` |

Editing the features changes the site by `decode(f_edited) - decode(f)`; the error term
stays that of the clean features (so editing nothing changes nothing).

Per-head sites (`[batch, pos, n_heads, d_head]`) are read as `[batch, pos, n_heads * d_head]`.

Example:
    >>> sae = load_dictionary("out/sae-smollm2-l15")                      # doctest: +SKIP
    >>> feats = sae_features(model, sae, "The Eiffel Tower is in")          # doctest: +SKIP
    >>> logits = run_with_sae(model, "The Eiffel Tower is in", sae)          # doctest: +SKIP
    >>> attr = feature_attribution(model, clean_ids, corrupt_ids, sae, metric)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor

from mechscope.core.errors import unknown_name_message
from mechscope.core.names import parse_layer
from mechscope.core.runner import HookFn, HookPoint
from mechscope.dictionaries.base import Dictionary
from mechscope.dictionaries.errors import DictionaryConfigError
from mechscope.dictionaries.streaming import stop_layer_for

Saes = Dictionary | Sequence[Dictionary]
HookSpec = Sequence[tuple[Any, HookFn]]


class SpliceResult(NamedTuple):
    """Logits `[batch, pos, d_vocab]` of a spliced run, and per spliced site (keyed by the name
    of the site replaced) the feature activations `[batch, pos, d_sae]` and the error term
    `x - x_hat` `[batch, pos, d_out]` (the error is computed with or without splicing it in).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope.core.hooked import HookedModel
        >>> from mechscope.dictionaries import make_dictionary
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> model = HookedModel(LlamaForCausalLM(cfg), name="tiny")
        >>> sae = make_dictionary("topk", d_in=16, d_sae=32, k=4, seed=0, hook_name="blocks.0.hook_resid_post")
        >>> res = run_with_sae_cache(model, torch.tensor([[1, 2, 3]]), sae)
        >>> isinstance(res, SpliceResult), res.logits.shape, res.features["blocks.0.hook_resid_post"].shape
        (True, torch.Size([1, 3, 50]), torch.Size([1, 3, 32]))
    """

    logits: Tensor
    features: dict[str, Tensor]
    errors: dict[str, Tensor]


def hook_name_of(sae: Dictionary, hook_name: str | None = None) -> str:
    """The site `sae` reads: `hook_name` when given, else `sae.cfg.hook_name` (an error when neither).

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> sae = make_dictionary("relu", d_in=8, d_sae=16, hook_name="blocks.3.hook_resid_post")
        >>> hook_name_of(sae), hook_name_of(sae, "blocks.4.hook_resid_post")
        ('blocks.3.hook_resid_post', 'blocks.4.hook_resid_post')
        >>> hook_name_of(make_dictionary("relu", d_in=8, d_sae=16))
        Traceback (most recent call last):
        ...
        mechscope.dictionaries.errors.DictionaryConfigError: the dictionary's config has no hook_name: pass hook_name=...
    """
    name = hook_name or sae.cfg.hook_name
    if not name:
        raise DictionaryConfigError("the dictionary's config has no hook_name: pass hook_name=...")
    return name


def _saes(saes: Saes) -> list[Dictionary]:
    return [saes] if isinstance(saes, Dictionary) else list(saes)


def site_rows(act: Tensor, width: int | None, sae: Dictionary, name: str, what: str) -> Tensor:
    """`[batch, pos, ...]` -> `[batch * pos, d]`, with a clear error when `d != width`.

    Example:
        >>> site_rows(cache[sae.cfg.hook_name], sae.cfg.d_in, sae, sae.cfg.hook_name, "input").shape   # doctest: +SKIP
        torch.Size([1024, 576])
    """
    d = act.shape[-1] if act.ndim == 3 else act[0, 0].numel()
    if d != width:
        raise DictionaryConfigError(
            f"width mismatch: the {sae.cfg.architecture} dictionary's {what} width is {width}, "
            f"but site {name!r} of this model has width {d}"
        )
    return act.reshape(-1, d)


def _encode_site(sae: Dictionary, act: Tensor, name: str) -> Tensor:
    return sae.encode(site_rows(act, sae.cfg.d_in, sae, name, "input")).reshape(*act.shape[:2], -1)


SAE_POINTS = ("hook_sae_acts_post", "hook_sae_recons", "hook_sae_error")


def sae_hook_names(saes: Saes) -> list[str]:
    """The hook points of spliced dictionaries (see the module docstring), in forward order.

    Example:
        >>> sae_hook_names(sae)                                              # doctest: +SKIP
        ['blocks.1.hook_resid_post.hook_sae_acts_post', ..., 'blocks.1.hook_resid_post.hook_sae_error']
    """
    return [f"{_site_out(sae)}.{point}" for sae in _saes(saes) for point in SAE_POINTS]


def _site_out(sae: Dictionary) -> str:
    return sae.cfg.hook_name_out or hook_name_of(sae)


def _split_hooks(saes: list[Dictionary], fwd_hooks: HookSpec) -> tuple[dict[str, list[HookFn]], list[Any]]:
    """Dictionary hook points `{name: [fn]}`, and the hooks meant for the model itself."""
    own = set(sae_hook_names(saes))
    mine: dict[str, list[HookFn]] = {}
    rest: list[Any] = []
    for name, fn in fwd_hooks:
        if isinstance(name, str) and name in own:
            mine.setdefault(name, []).append(fn)
        elif isinstance(name, str) and ".hook_sae_" in name:
            raise DictionaryConfigError(unknown_name_message("dictionary hook point", name, own))
        else:
            rest.append((name, fn))
    return mine, rest


def _apply(fns: list[HookFn], act: Tensor, name: str, layer: int | None) -> Tensor:
    point = HookPoint(name, layer)
    for fn in fns:
        out = fn(act, point)
        if out is not None:
            if out.shape != act.shape:
                raise DictionaryConfigError(f"hook on {name!r} returned shape {tuple(out.shape)}; "
                                            f"expected {tuple(act.shape)}")
            act = out
    return act


def _hooks(saes: list[Dictionary], use_error_term: bool, features: dict[str, Tensor] | None,
           errors: dict[str, Tensor] | None, sae_hooks: dict[str, list[HookFn]] | None = None) -> list[tuple[str, Any]]:
    sae_hooks = sae_hooks or {}
    hooks: list[tuple[str, Any]] = []
    for sae in saes:
        name_in = hook_name_of(sae)
        name_out = _site_out(sae)
        layer = parse_layer(name_out)
        acts_fns, recons_fns, error_fns = (sae_hooks.get(f"{name_out}.{p}", []) for p in SAE_POINTS)
        captured: dict[str, Tensor] = {}

        def read(act: Tensor, hook: Any, _sae: Dictionary = sae, _name_in: str = name_in,
                 _name_out: str = name_out, _captured: dict[str, Tensor] = captured,
                 _fns: list[HookFn] = acts_fns, _layer: int | None = layer) -> None:
            clean = _encode_site(_sae, act, _name_in)
            if _sae.cfg.skip:  # a skip transcoder's prediction also reads its input
                _captured["input"] = site_rows(act, _sae.cfg.d_in, _sae, _name_in, "input")
            f = _apply(_fns, clean, f"{_name_out}.hook_sae_acts_post", _layer)
            _captured["clean"], _captured["features"] = clean, f
            if features is not None:
                features[_name_out] = f

        def write(act: Tensor, hook: Any, _sae: Dictionary = sae, _name_out: str = name_out,
                  _captured: dict[str, Tensor] = captured, _fns: tuple[list[HookFn], list[HookFn]] = (recons_fns, error_fns),
                  _layer: int | None = layer) -> Tensor:
            clean, f = _captured.pop("clean"), _captured.pop("features")
            shape = (*act.shape[:2], -1)
            flat = site_rows(act, _sae.cfg.d_out, _sae, _name_out, "output")
            x_in = _captured.pop("input", None)
            recon = _sae.decode(f.reshape(-1, f.shape[-1]), x_in).to(act.dtype)
            clean_recon = recon if f is clean else _sae.decode(clean.reshape(-1, clean.shape[-1]), x_in).to(act.dtype)
            error = (flat - clean_recon).detach().reshape(shape)
            recon = _apply(_fns[0], recon.reshape(shape), f"{_name_out}.hook_sae_recons", _layer)
            error = _apply(_fns[1], error, f"{_name_out}.hook_sae_error", _layer)
            if errors is not None:
                errors[_name_out] = error
            out = recon + error if use_error_term else recon
            return out.reshape(act.shape)

        hooks.append((name_in, read))
        hooks.append((name_out, write))
    return hooks


def _spliced_hooks(saes: Saes, use_error_term: bool, fwd_hooks: HookSpec, features: dict[str, Tensor] | None = None,
                   errors: dict[str, Tensor] | None = None) -> list[Any]:
    listed = _saes(saes)
    mine, rest = _split_hooks(listed, fwd_hooks)
    return [*_hooks(listed, use_error_term, features, errors, mine), *rest]


@contextmanager
def spliced(model: Any, saes: Saes, *, use_error_term: bool = False, fwd_hooks: HookSpec = ()) -> Iterator[Any]:
    """Within the block, every run of `model` has the dictionaries spliced in at their sites.

    Example:
        >>> with spliced(model, sae):          # doctest: +SKIP
        ...     logits = model("Hello world")
    """
    with model.hooks(_spliced_hooks(saes, use_error_term, fwd_hooks)):
        yield model


def run_with_sae(model: Any, inputs: Any, saes: Saes, *, use_error_term: bool = False,
                 fwd_hooks: HookSpec = (), attention_mask: Tensor | None = None) -> Tensor:
    """Logits `[batch, pos, d_vocab]` with each dictionary's output replacing its site.

    `fwd_hooks` may name model hook points and the dictionaries' own (`sae_hook_names`).

    Example:
        >>> run_with_sae(model, ids, sae, use_error_term=True).shape   # doctest: +SKIP
        torch.Size([2, 10, 49152])
    """
    return model.run_with_hooks(inputs, fwd_hooks=_spliced_hooks(saes, use_error_term, fwd_hooks),
                                attention_mask=attention_mask)


def run_with_sae_cache(model: Any, inputs: Any, saes: Saes, *, use_error_term: bool = False,
                       fwd_hooks: HookSpec = (), attention_mask: Tensor | None = None) -> SpliceResult:
    """A spliced run that also returns each dictionary's features and error term.

    Under autograd the features are the nodes the spliced run used, so
    `torch.autograd.grad(metric, res.features[site])` is the gradient with respect to them.

    Example:
        >>> res = run_with_sae_cache(model, ids, sae)                   # doctest: +SKIP
        >>> res.features["blocks.15.hook_resid_post"].shape              # doctest: +SKIP
        torch.Size([2, 10, 9216])
    """
    features: dict[str, Tensor] = {}
    errors: dict[str, Tensor] = {}
    logits = model.run_with_hooks(inputs, fwd_hooks=_spliced_hooks(saes, use_error_term, fwd_hooks, features, errors),
                                  attention_mask=attention_mask)
    return SpliceResult(logits, features, errors)


def feature_attribution(model: Any, clean: Any, corrupt: Any, saes: Saes, metric: Callable[[Tensor], Tensor], *,
                        use_error_term: bool = True) -> dict[str, Tensor]:
    """Attribution patching on dictionary features: `(f_clean - f_corrupt) * dM/df` at the corrupt run.

    The first-order estimate of how much patching each feature (at each position) from the
    clean run into the corrupt run changes `metric(logits).sum()`; one forward and one
    backward pass on the corrupt input, one forward on the clean one. Keyed by site,
    `[batch, pos, d_sae]`. `clean` and `corrupt` must have the same token count.

    Example:
        >>> attr = feature_attribution(model, clean_ids, corrupt_ids, sae, lambda l: l[:, -1, paris])  # doctest: +SKIP
        >>> attr["blocks.15.hook_resid_post"].sum((0, 1)).topk(5)                                  # doctest: +SKIP
    """
    with torch.no_grad():
        clean_feats = run_with_sae_cache(model, clean, saes, use_error_term=use_error_term).features
    with torch.enable_grad():
        res = run_with_sae_cache(model, corrupt, saes, use_error_term=use_error_term)
        sites = list(res.features)
        grads = torch.autograd.grad(metric(res.logits).sum(), [res.features[s] for s in sites], allow_unused=True)
    out: dict[str, Tensor] = {}
    for site, grad in zip(sites, grads, strict=True):
        corrupt_f = res.features[site].detach()
        if clean_feats[site].shape != corrupt_f.shape:
            raise DictionaryConfigError(f"clean and corrupt inputs differ in shape at {site!r}: "
                                        f"{tuple(clean_feats[site].shape)} vs {tuple(corrupt_f.shape)}")
        out[site] = (clean_feats[site] - corrupt_f) * (torch.zeros_like(corrupt_f) if grad is None else grad)
    return out


def sae_features(model: Any, sae: Dictionary, inputs: Any, *, hook_name: str | None = None,
                 attention_mask: Tensor | None = None) -> Tensor:
    """Feature activations `[batch, pos, d_sae]` of `sae` at its site, running the model only as far as needed.

    Example:
        >>> sae_features(model, sae, "The Eiffel Tower").shape   # doctest: +SKIP
        torch.Size([1, 5, 9216])
    """
    name = hook_name_of(sae, hook_name)
    _, cache = model.run_with_cache(inputs, names=[name], stop_at_layer=stop_layer_for(model, name),
                                    attention_mask=attention_mask)
    act = cache[name]
    return _encode_site(sae, act, name)
