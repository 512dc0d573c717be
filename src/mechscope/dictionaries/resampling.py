"""Resampling of dead latents for dictionaries without an AuxK loss (Bricken et al. 2023, simplified).

For each dead latent, draw one token of the current batch with probability proportional to its
squared reconstruction error `||t_b - t_hat_b||^2` (normalised units). The latent's decoder row
becomes the unit residual direction of that token; its encoder column the same direction
(for a transcoder: the token's centred input direction) scaled to `0.2 *` the mean encoder
column norm of live latents; its encoder bias 0; architecture-specific parameters (JumpReLU's
threshold, Gated's magnitude path) are re-initialised by `Dictionary.reset_latents`; its Adam
moments are reset.

Example:
    >>> import torch
    >>> from mechscope.dictionaries import make_dictionary
    >>> sae = make_dictionary("relu", d_in=4, d_sae=8, seed=0)
    >>> opt = torch.optim.Adam(sae.parameters())
    >>> dead = torch.zeros(8, dtype=torch.bool); dead[3] = True
    >>> resample_dead_latents(sae, opt, dead, torch.randn(16, 4), None, torch.Generator().manual_seed(0))
    1
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.dictionaries.base import Dictionary


@torch.no_grad()
def resample_dead_latents(
    d: Dictionary, optimizer: torch.optim.Optimizer, dead: Tensor, x: Tensor, target: Tensor | None,
    generator: torch.Generator,
) -> int:
    """Re-initialise the latents marked in `dead [d_sae]` from the batch `x [batch, d_in]`; returns how many.

    Each dead latent's decoder row points along the reconstruction error of a token drawn with
    probability proportional to its squared error; its encoder column follows at 0.2 times the mean
    live encoder norm, its encoder bias is 0, and its optimizer moments are reset.

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> sae = make_dictionary("relu", d_in=4, d_sae=8, seed=0)
        >>> opt = torch.optim.Adam(sae.parameters())
        >>> dead = torch.zeros(8, dtype=torch.bool); dead[[1, 5]] = True
        >>> resample_dead_latents(sae, opt, dead, torch.randn(16, 4), None, torch.Generator().manual_seed(0))
        2
        >>> sae.b_enc[[1, 5]].tolist()
        [0.0, 0.0]
    """
    idx = dead.nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0
    was_training = d.training
    d.eval()
    x_n = d._scale_in(x)
    t_n = x_n if target is None else d._scale_target(target)
    recon_n = d._scale_target(d.forward(x, target).reconstruction)
    d.train(was_training)
    err = (t_n - recon_n).pow(2).sum(-1)
    if float(err.sum()) <= 0:
        return 0
    picks = torch.multinomial(err.double(), idx.numel(), replacement=True, generator=generator)
    dec_dir = t_n[picks] - recon_n[picks]
    dec_dir = dec_dir / dec_dir.norm(dim=1, keepdim=True).clamp_min(1e-12)
    enc_dir = dec_dir if not d.cfg.is_transcoder else d._centered(x_n)[picks]
    enc_dir = enc_dir / enc_dir.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    enc_norm = d.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else torch.tensor(1.0)
    d.W_dec[idx] = dec_dir.to(d.W_dec.dtype)
    d.W_enc[:, idx] = (enc_dir * 0.2 * enc_norm).t().to(d.W_enc.dtype)
    d.b_enc[idx] = 0.0
    pre = d._centered(x_n) @ d.W_enc[:, idx]  # the new latents on the batch, without encoder bias
    extra = d.reset_latents(idx, pre)
    for p, where in ((d.W_dec, (idx,)), (d.W_enc, (slice(None), idx)), (d.b_enc, (idx,)), *extra):
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][where] = 0.0
    return int(idx.numel())
