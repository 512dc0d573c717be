"""The pieces of a normalization layer that TransformerLens names: its scale and its normalized input.

TransformerLens splits a norm into `hook_scale` (`[batch, pos, 1]`), `hook_normalized`
(before the weight) and the weighted output. The HF module still computes the output;
these functions only read the two intermediate values from its input, and rebuild the
output when one of them is edited:

- LayerNorm: `scale = sqrt(var(x) + eps)`, `normalized = (x - mean(x)) / scale`,
  `out = normalized * w + b`;
- RMSNorm: `scale = sqrt(mean(x^2) + eps)`, `normalized = x / scale`, `out = normalized * w`
  (Gemma: `* (1 + w)`), computed in float32 as HF does.

Example:
    >>> import torch
    >>> spec = NormSpec("layer", 1e-5)
    >>> x = torch.tensor([[1.0, 3.0]])
    >>> scale_of(spec, x), normalized_of(spec, x, scale_of(spec, x))
    (tensor([[1.0000]]), tensor([[-1.0000,  1.0000]]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class NormSpec:
    """What a norm module computes: `kind`, `eps`, and `weight_offset` (1 for Gemma's `1 + w`).

    Example:
        >>> spec = NormSpec("rms", eps=1e-6, weight_offset=1.0)      # Gemma's RMSNorm multiplies by 1 + w
        >>> spec.kind, spec.weight_offset
        ('rms', 1.0)
    """

    kind: Literal["layer", "rms"]
    eps: float
    weight_offset: float = 0.0


def norm_spec(module: nn.Module, weight_offset: float = 0.0) -> NormSpec | None:
    """The spec of a LayerNorm or RMSNorm module; None for anything else (e.g. `nn.Identity`).

    Example:
        >>> from torch import nn
        >>> norm_spec(nn.LayerNorm(4)), norm_spec(nn.Identity())
        (NormSpec(kind='layer', eps=1e-05, weight_offset=0.0), None)
    """
    if isinstance(module, nn.LayerNorm):
        return NormSpec("layer", float(module.eps))
    eps = getattr(module, "variance_epsilon", None)
    if eps is None:
        eps = getattr(module, "eps", None)
    if eps is None or not hasattr(module, "weight"):
        return None
    return NormSpec("rms", float(eps), weight_offset)


def _centered(spec: NormSpec, x: Tensor) -> Tensor:
    if spec.kind == "layer":
        return x - x.mean(-1, keepdim=True)
    return x.float()


def scale_of(spec: NormSpec, x: Tensor) -> Tensor:
    """`[..., 1]`: the divisor of the norm for input `x`.

    Example:
        >>> import torch
        >>> scale_of(NormSpec("rms", eps=0.0), torch.tensor([[3.0, 4.0]]))      # sqrt((9 + 16) / 2)
        tensor([[3.5355]])
    """
    centered = _centered(spec, x)
    return (centered.pow(2).mean(-1, keepdim=True) + spec.eps).sqrt().to(x.dtype)


def normalized_of(spec: NormSpec, x: Tensor, scale: Tensor) -> Tensor:
    """`x` normalized by `scale` (centered first for LayerNorm), before the weight.

    Example:
        >>> import torch
        >>> spec, x = NormSpec("layer", eps=0.0), torch.tensor([[1.0, 3.0]])
        >>> normalized_of(spec, x, scale_of(spec, x))                          # centered, then divided
        tensor([[-1.,  1.]])
    """
    return (_centered(spec, x) / scale.to(torch.float32 if spec.kind == "rms" else scale.dtype)).to(x.dtype)


def weighted(spec: NormSpec, module: nn.Module, normalized: Tensor) -> Tensor:
    """The module's output for a given normalized value: weight (and bias) applied.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> module = nn.LayerNorm(2)
        >>> spec, x = norm_spec(module), torch.tensor([[1.0, 3.0]])
        >>> out = weighted(spec, module, normalized_of(spec, x, scale_of(spec, x)))
        >>> torch.allclose(out, module(x))
        True
    """
    weight = module.weight
    if spec.kind == "layer":
        out = normalized * weight
        return out + module.bias if getattr(module, "bias", None) is not None else out
    if spec.weight_offset:
        return (normalized.float() * (spec.weight_offset + weight.float())).to(normalized.dtype)
    return weight * normalized
