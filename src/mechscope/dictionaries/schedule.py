"""Training-schedule rules shared by every dictionary: the default learning rate and the L0 controller."""

from __future__ import annotations

import math


def default_lr(d_sae: int, batch_size: int) -> float:
    """The learning rate used when none is given: `5e-3 * (d_sae / 1024) ** -0.25 * (batch_size / 1024) ** 0.5`.

    Measured on the synthetic family (docs/dictionaries.md): the best rate falls slowly with the
    number of latents and grows with the square root of the batch (Adam's noise scale), capped at 1e-2.

    Example:
        >>> round(default_lr(1024, 1024), 6), round(default_lr(16384, 4096), 6)
        (0.005, 0.005)
    """
    return min(1e-2, 5e-3 * (d_sae / 1024) ** -0.25 * (batch_size / 1024) ** 0.5)


class L0Controller:
    """Steers a penalty coefficient so the running L0 reaches `target`.

    Control law (integral control in log space), applied after each step once the sparsity
    warm-up is over: `log m <- log m + clip(gain * log(max(l0, target / 20) / target), -0.1, 0.1)`,
    where `l0` is the batch's mean number of active latents and `m` (kept in [1e-4, 1e4])
    multiplies the coefficient.
    Too many active latents raise the penalty, too few lower it; the step is bounded so one
    noisy batch cannot swing it, and the floor keeps the law finite when nothing fires.

    Example:
        >>> c = L0Controller(target=10.0, gain=0.5)
        >>> c.update(20.0) > 1.0, c.update(5.0) < c.update(20.0)
        (True, True)
    """

    def __init__(self, target: float, gain: float, multiplier: float = 1.0) -> None:
        self.target, self.gain, self.multiplier = target, gain, multiplier

    def update(self, l0: float) -> float:
        """Apply one step of the law for the measured `l0`; returns the new multiplier."""
        err = math.log(max(l0, self.target / 20) / self.target)
        self.multiplier *= math.exp(min(0.1, max(-0.1, self.gain * err)))
        self.multiplier = min(1e4, max(1e-4, self.multiplier))
        return self.multiplier
