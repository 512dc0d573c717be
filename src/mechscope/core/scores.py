"""Score formulas every layer shares: KL divergence between next-token distributions, and normalized recovery.

They live here, below every layer that reports them (lenses, patching, dictionary evaluation,
steering, circuits), so each formula is written once.

- KL divergence: `KL(p || q) = sum_v p_v (log p_v - log q_v)`, with `p = softmax(ref_logits)`,
  `q = softmax(logits)`, in nats, over the last axis.
- normalized recovery: `(patched - corrupt) / (clean - corrupt)`; 1 means the clean value is
  restored, 0 means nothing changed from the corrupt value.

Example:
    >>> import torch
    >>> kl_divergence(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0])).item()
    0.0
    >>> normalized_recovery(torch.tensor(2.0), clean=4.0, corrupt=0.0)
    tensor(0.5000)
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.core.errors import MechscopeError, require_finite


def kl_divergence(ref_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(p || q) in nats over the last axis, with p = softmax(ref_logits), q = softmax(logits).

    KL(p || q) = sum_v p_v (log p_v - log q_v). Either argument may already be log-probabilities
    (log-softmax leaves them unchanged). Computed in float32 at least.

    Example:
        >>> kl_divergence(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0])).item()
        0.0
        >>> round(kl_divergence(torch.tensor([0.0, -1e9]), torch.tensor([0.0, 0.0])).item(), 4)   # log 2
        0.6931
    """
    log_p = torch.log_softmax(ref_logits.float(), dim=-1)
    log_q = torch.log_softmax(logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def check_recoverable(clean: Tensor | float, corrupt: Tensor | float) -> None:
    """Raise unless normalized recovery is defined: both metrics finite and apart by more than 1e-6.

    Example:
        >>> check_recoverable(2.0, -1.0)
        >>> check_recoverable(1.0, 1.0)
        Traceback (most recent call last):
        ...
        mechscope.core.errors.MechscopeError: The metric is the same on both prompts (1); normalized recovery ...
    """
    require_finite(clean, "The metric on the clean prompt")
    require_finite(corrupt, "The metric on the corrupted prompt")
    if abs(float(clean) - float(corrupt)) < 1e-6:
        raise MechscopeError(f"The metric is the same on both prompts ({float(clean):.4g}); normalized recovery "
                             "is undefined. Choose prompts or answers the model tells apart.")


def normalized_recovery(patched: Tensor | float, clean: Tensor | float, corrupt: Tensor | float) -> Tensor:
    """`(patched - corrupt) / (clean - corrupt)`: 1 = clean restored, 0 = unchanged from corrupt.

    Raises (never returns NaN) when the metrics are not finite or clean equals corrupt.

    Example:
        >>> normalized_recovery(torch.tensor([-1.0, 0.5, 2.0]), clean=2.0, corrupt=-1.0).tolist()
        [0.0, 0.5, 1.0]
    """
    check_recoverable(clean, corrupt)
    require_finite(patched, "The metric of a patched run")
    patched = torch.as_tensor(patched)
    patched = patched if patched.is_floating_point() else patched.float()
    return (patched - float(corrupt)) / (float(clean) - float(corrupt))
