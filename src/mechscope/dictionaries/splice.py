"""Apply a dictionary to its hook site of a model: read its features, or splice it into the forward pass.

An SAE at site `h` replaces the activation `x` there by its reconstruction `x_hat`. With the
error term, the site carries `x_hat + e` where `e = x - x_hat` is computed from the clean
activation, so the run equals the clean run (up to float rounding) while `x_hat` and `e`
stay separate nodes for gradients. A transcoder reads `cfg.hook_name` and replaces
`cfg.hook_name_out` by its prediction (plus `e = y - y_hat` with the error term).

Per-head sites (`[batch, pos, n_heads, d_head]`) are read as `[batch, pos, n_heads * d_head]`.

Example:
    >>> sae = load_dictionary("out/sae-smollm2-l15")                      # doctest: +SKIP
    >>> feats = sae_features(model, sae, "The Eiffel Tower is in")          # doctest: +SKIP
    >>> logits = run_with_sae(model, "The Eiffel Tower is in", sae)          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from torch import Tensor

from mechscope.dictionaries.base import Dictionary
from mechscope.dictionaries.errors import DictionaryConfigError
from mechscope.dictionaries.store import stop_layer_for

Saes = Dictionary | Sequence[Dictionary]


class SpliceResult(NamedTuple):
    """Logits `[batch, pos, d_vocab]` of a spliced run, and per spliced site (keyed by the name
    of the site replaced) the feature activations `[batch, pos, d_sae]` and the error term
    `x - x_hat` `[batch, pos, d_out]` (the error is computed with or without splicing it in)."""

    logits: Tensor
    features: dict[str, Tensor]
    errors: dict[str, Tensor]


def hook_name_of(sae: Dictionary, hook_name: str | None = None) -> str:
    """The site `sae` reads: `hook_name` when given, else `sae.cfg.hook_name` (an error when neither)."""
    name = hook_name or sae.cfg.hook_name
    if not name:
        raise DictionaryConfigError("the dictionary's config has no hook_name: pass hook_name=...")
    return name


def _saes(saes: Saes) -> list[Dictionary]:
    return [saes] if isinstance(saes, Dictionary) else list(saes)


def _flat(act: Tensor, width: int | None, sae: Dictionary, name: str, what: str) -> Tensor:
    """`[batch, pos, ...]` -> `[batch * pos, d]`, with a clear error when `d != width`."""
    d = act.shape[-1] if act.ndim == 3 else act[0, 0].numel()
    if d != width:
        raise DictionaryConfigError(
            f"width mismatch: the {sae.cfg.architecture} dictionary's {what} width is {width}, "
            f"but site {name!r} of this model has width {d}"
        )
    return act.reshape(-1, d)


def _encode_site(sae: Dictionary, act: Tensor, name: str) -> Tensor:
    return sae.encode(_flat(act, sae.cfg.d_in, sae, name, "input")).reshape(*act.shape[:2], -1)


def _hooks(saes: list[Dictionary], use_error_term: bool, features: dict[str, Tensor] | None,
           errors: dict[str, Tensor] | None, replace: bool = True) -> list[tuple[str, Any]]:
    hooks: list[tuple[str, Any]] = []
    for sae in saes:
        name_in = hook_name_of(sae)
        name_out = sae.cfg.hook_name_out or name_in
        captured: dict[str, Tensor] = {}

        def read(act: Tensor, hook: Any, _sae: Dictionary = sae, _name_in: str = name_in,
                 _name_out: str = name_out, _captured: dict[str, Tensor] = captured) -> None:
            f = _encode_site(_sae, act, _name_in)
            _captured["features"] = f
            if features is not None:
                features[_name_out] = f

        def write(act: Tensor, hook: Any, _sae: Dictionary = sae, _name_out: str = name_out,
                  _captured: dict[str, Tensor] = captured) -> Tensor | None:
            f = _captured.pop("features")
            flat = _flat(act, _sae.cfg.d_out, _sae, _name_out, "output")
            recon = _sae.decode(f.reshape(-1, f.shape[-1])).to(act.dtype)
            error = flat - recon
            if errors is not None:
                errors[_name_out] = error.reshape(*act.shape[:2], -1)
            if not replace:
                return None
            out = recon + error if use_error_term else recon
            return out.reshape(act.shape)

        hooks.append((name_in, read))
        hooks.append((name_out, write))
    return hooks


@contextmanager
def spliced(model: Any, saes: Saes, *, use_error_term: bool = False) -> Iterator[Any]:
    """Within the block, every run of `model` has the dictionaries spliced in at their sites.

    Example:
        >>> with spliced(model, sae):          # doctest: +SKIP
        ...     logits = model("Hello world")
    """
    with model.hooks(_hooks(_saes(saes), use_error_term, None, None)):
        yield model


def run_with_sae(model: Any, inputs: Any, saes: Saes, *, use_error_term: bool = False,
                 attention_mask: Tensor | None = None) -> Tensor:
    """Logits `[batch, pos, d_vocab]` with each dictionary's output replacing its site.

    Example:
        >>> run_with_sae(model, ids, sae, use_error_term=True).shape   # doctest: +SKIP
        torch.Size([2, 10, 49152])
    """
    return model.run_with_hooks(inputs, fwd_hooks=_hooks(_saes(saes), use_error_term, None, None),
                                attention_mask=attention_mask)


def run_with_sae_cache(model: Any, inputs: Any, saes: Saes, *, use_error_term: bool = False,
                       attention_mask: Tensor | None = None) -> SpliceResult:
    """A spliced run that also returns each dictionary's features and error term.

    Example:
        >>> res = run_with_sae_cache(model, ids, sae)                   # doctest: +SKIP
        >>> res.features["blocks.15.hook_resid_post"].shape              # doctest: +SKIP
        torch.Size([2, 10, 9216])
    """
    features: dict[str, Tensor] = {}
    errors: dict[str, Tensor] = {}
    logits = model.run_with_hooks(inputs, fwd_hooks=_hooks(_saes(saes), use_error_term, features, errors),
                                  attention_mask=attention_mask)
    return SpliceResult(logits, features, errors)


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
