"""The interface every dictionary (SAE or transcoder) shares, its config base and the registry.

A dictionary reads activations `x [batch, d_in]` in the model's units, scales them by
`cfg.input_scale` (so their mean norm is `sqrt(d_in)` during training), encodes them to
feature activations `[batch, d_sae]` and decodes a reconstruction (or, for a transcoder, a
prediction of another site) `[batch, d_out]`, returned in the model's units again.

Example:
    >>> import torch
    >>> from mechscope.dictionaries import make_dictionary
    >>> sae = make_dictionary("topk", d_in=8, d_sae=32, k=4, seed=0)
    >>> out = sae(torch.randn(5, 8))
    >>> out.reconstruction.shape, out.feature_acts.shape, int(out.l0)
    (torch.Size([5, 8]), torch.Size([5, 32]), 4)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from mechscope.core.errors import unknown_name_message
from mechscope.dictionaries.errors import DictionaryConfigError

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64,
                                  "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class DictionaryConfig:
    """Sizes, provenance and input scaling shared by every architecture.

    Fields: `d_in` (width of the site read), `d_sae` (number of latents), `d_out` (width of the
    site predicted; `None` means `d_in`, an SAE), `hook_name` / `hook_name_out` (TransformerLens
    names such as `blocks.15.hook_resid_post`), `model_name`, `input_scale` / `output_scale`
    (multipliers to the normalised units the dictionary works in; `output_scale=None` means
    `input_scale`), `apply_b_dec_to_input` (subtract the decoder bias before encoding; `None`
    means yes for SAEs, no for transcoders), `decoder_init_norm`, `decoder_norm` (`"unit"`: decoder
    rows held at norm 1 during training; `"free"`; `"weighted"` for ReLU-L1), `dtype`, `skip`
    (a transcoder with a linear skip connection: the prediction adds `W_skip @ x`, `W_skip
    [d_out, d_in]` initialised at zero and trained jointly; absent from `to_dict` when off).

    Example:
        >>> from mechscope.dictionaries.topk import TopKSAEConfig
        >>> cfg = TopKSAEConfig(d_in=8, d_sae=32, k=4, hook_name="blocks.0.hook_resid_post")
        >>> cfg.d_out, cfg.is_transcoder, cfg.apply_b_dec_to_input, cfg.to_dict()["architecture"]
        (8, False, True, 'topk')
        >>> TopKSAEConfig.from_dict(cfg.to_dict()) == cfg
        True
        >>> TopKSAEConfig(d_in=0, d_sae=32)
        Traceback (most recent call last):
        ...
        mechscope.dictionaries.errors.DictionaryConfigError: d_in must be a positive integer, got 0
    """

    d_in: int
    d_sae: int
    d_out: int | None = None
    hook_name: str | None = None
    hook_name_out: str | None = None
    model_name: str | None = None
    input_scale: float = 1.0
    output_scale: float | None = None
    apply_b_dec_to_input: bool | None = None
    decoder_init_norm: float = 1.0
    decoder_norm: str = "unit"
    dtype: str = "float32"
    skip: bool = False

    architecture: ClassVar[str] = ""
    decoder_norms: ClassVar[tuple[str, ...]] = ("unit", "free")
    # Name of the sparsity-penalty coefficient the trainer's L0 controller scales (None: no penalty).
    sparsity_coefficient: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise DictionaryConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_out is None:
            self.d_out = self.d_in
        if not isinstance(self.d_out, int) or self.d_out <= 0:
            raise DictionaryConfigError(f"d_out must be a positive integer, got {self.d_out!r}")
        if self.output_scale is None:
            self.output_scale = self.input_scale
        for name in ("input_scale", "output_scale", "decoder_init_norm"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value <= 0:
                raise DictionaryConfigError(f"{name} must be a finite positive number, got {value!r}")
            setattr(self, name, value)
        if self.apply_b_dec_to_input is None:
            self.apply_b_dec_to_input = self.d_out == self.d_in and self.hook_name_out is None
        if self.apply_b_dec_to_input and self.d_out != self.d_in:
            raise DictionaryConfigError("apply_b_dec_to_input needs d_out == d_in (it subtracts b_dec from x)")
        if self.decoder_norm not in self.decoder_norms:
            raise DictionaryConfigError(
                f"decoder_norm must be one of {self.decoder_norms} for {self.architecture}, got {self.decoder_norm!r}"
            )
        if self.dtype not in DTYPES:
            raise DictionaryConfigError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.skip and not self.is_transcoder:
            raise DictionaryConfigError("skip=True needs a transcoder (set hook_name_out or d_out): an SAE's "
                                        "skip connection would learn the identity")

    @property
    def is_transcoder(self) -> bool:
        """True when the dictionary predicts a site other than the one it reads."""
        return self.hook_name_out is not None or self.d_out != self.d_in

    def to_dict(self) -> dict[str, Any]:
        """All fields plus `architecture`, JSON-ready (`skip` only when on)."""
        data = {"architecture": self.architecture, **dataclasses.asdict(self)}
        if not self.skip:
            del data["skip"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DictionaryConfig:
        """Build from `to_dict` output; unknown keys are logged and ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"architecture"})
        if unknown:
            logger.warning("ignoring unknown %s config keys: %s", cls.__name__, unknown)
        return cls(**{k: v for k, v in data.items() if k in names})


class SparseCodes(NamedTuple):
    """Active entries of a batch of codes: token `rows[n]` uses latent `cols[n]` with `vals[n]`.

    Example:
        >>> codes = SparseCodes(torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([1.5, 0.5]), batch=2, d_sae=3)
        >>> codes.to_dense().tolist()
        [[0.0, 0.0, 1.5], [0.5, 0.0, 0.0]]
    """

    rows: Tensor
    cols: Tensor
    vals: Tensor
    batch: int
    d_sae: int

    def to_dense(self) -> Tensor:
        """The `[batch, d_sae]` dense activations."""
        dense = self.vals.new_zeros(self.batch, self.d_sae)
        dense[self.rows, self.cols] = self.vals
        return dense


@dataclass
class DictionaryOutput:
    """What `forward` returns.

    `reconstruction [batch, d_out]` in model units; `loss` (scalar to minimise) and its named
    parts `losses` (`mse` = mean over the batch of the squared error summed over `d_out`, in
    normalised units, plus the sparsity and auxiliary terms); `fired [d_sae]` (bool: the latent
    was active on at least one token of the batch). Computed on access: `feature_acts
    [batch, d_sae]` (dense), `firing_counts [d_sae]` (tokens on which each latent fired) and `l0`
    (mean number of active latents per token).

    Example:
        >>> out = make_dictionary("topk", d_in=8, d_sae=32, k=2, seed=0)(torch.randn(3, 8))
        >>> sorted(out.losses), out.firing_counts.sum().item(), out.l0.item(), out.fired.dtype
        (['mse'], 6, 2.0, torch.bool)
    """

    reconstruction: Tensor
    loss: Tensor
    losses: dict[str, Tensor]
    fired: Tensor
    dense_acts: Tensor | None = None
    sparse_acts: SparseCodes | None = field(default=None, repr=False)

    @property
    def feature_acts(self) -> Tensor:
        """Dense feature activations `[batch, d_sae]`."""
        if self.dense_acts is None:
            assert self.sparse_acts is not None
            self.dense_acts = self.sparse_acts.to_dense()
        return self.dense_acts

    @property
    def firing_counts(self) -> Tensor:
        """Number of tokens of the batch on which each latent was active, `[d_sae]` (int64)."""
        with torch.no_grad():
            if self.dense_acts is None and self.sparse_acts is not None:
                codes = self.sparse_acts
                return torch.bincount(codes.cols[codes.vals > 0], minlength=codes.d_sae)
            return torch.count_nonzero(self.feature_acts, dim=0)

    @property
    def l0(self) -> Tensor:
        """Mean number of active latents per token (scalar)."""
        return self.firing_counts.sum() / self.reconstruction.shape[0]


class Dictionary(nn.Module):
    """Base class: parameters `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_out]`, `b_dec [d_out]`
    and, with `cfg.skip`, `W_skip [d_out, d_in]` (normalised units, so the prediction in model units adds
    `x @ (W_skip * input_scale / output_scale).T`).

    The skip term is trained by the shared `forward`: the architecture's loss sees the target minus
    the skip term, so every architecture supports it unchanged. Subclasses implement
    `_encode_n(x_n) -> [batch, d_sae]` and
    `_forward_n(x_n, target_n, sparsity_scale, dead_mask)` in normalised units.

    Example:
        >>> sae = make_dictionary("relu", d_in=4, d_sae=16, seed=0)
        >>> isinstance(sae, Dictionary), tuple(sae.W_enc.shape), tuple(sae.W_dec.shape)
        (True, (4, 16), (16, 4))
        >>> x = torch.randn(3, 4)
        >>> sae.decode(sae.encode(x)).shape, sae.loss(x).ndim
        (torch.Size([3, 4]), 0)
        >>> tc = make_dictionary("topk", d_in=4, d_out=6, d_sae=16, k=2, skip=True, seed=0)
        >>> tc.skip_weight().shape, tc(x, torch.randn(3, 6)).reconstruction.shape
        (torch.Size([6, 4]), torch.Size([3, 6]))
    """

    config_class: ClassVar[type[DictionaryConfig]] = DictionaryConfig
    uses_aux_k: ClassVar[bool] = False  # dead latents handled by the AuxK loss (else by resampling)
    # Set by the Trainer under torchrun: batch-level choices (BatchTopK's threshold) span all ranks.
    distributed: bool = False
    # Fraction of the run done, set by the Trainer before each step (1.0 outside it): warm-ups read it.
    training_progress: float = 1.0

    def __init__(self, cfg: DictionaryConfig, seed: int | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise DictionaryConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}")
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        dtype = DTYPES[cfg.dtype]
        assert cfg.d_out is not None
        W_dec = torch.randn(cfg.d_sae, cfg.d_out, generator=gen, dtype=torch.float64)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True) * cfg.decoder_init_norm
        if cfg.d_out == cfg.d_in:
            W_enc = W_dec.t().clone()
        else:
            W_enc = torch.randn(cfg.d_in, cfg.d_sae, generator=gen, dtype=torch.float64)
            W_enc = W_enc / W_enc.norm(dim=0, keepdim=True) * cfg.decoder_init_norm
        self.W_enc = nn.Parameter(W_enc.to(dtype).contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(W_dec.to(dtype).contiguous())
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out, dtype=dtype))
        if cfg.decoder_norm == "unit":
            with torch.no_grad():
                self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in, dtype=dtype))
        self._init_extra(gen)

    def _init_extra(self, gen: torch.Generator | None) -> None:
        """Create architecture-specific parameters and buffers."""

    # -- units -----------------------------------------------------------------------------
    def _scale_in(self, x: Tensor) -> Tensor:
        x = x.to(self.W_enc.dtype)
        return x if self.cfg.input_scale == 1.0 else x * self.cfg.input_scale

    def _scale_target(self, t: Tensor) -> Tensor:
        t = t.to(self.W_dec.dtype)
        return t if self.cfg.output_scale == 1.0 else t * self.cfg.output_scale

    def _unscale_out(self, y: Tensor) -> Tensor:
        assert self.cfg.output_scale is not None
        return y if self.cfg.output_scale == 1.0 else y / self.cfg.output_scale

    def _centered(self, x_n: Tensor) -> Tensor:
        return x_n - self.b_dec if self.cfg.apply_b_dec_to_input else x_n

    def _preact(self, x_n: Tensor, bias: Tensor) -> Tensor:
        """`(x_n - b_dec) @ W_enc + bias`, computed as `x_n @ W_enc + (bias - b_dec @ W_enc)`.

        The same value, but the decoder bias's gradient through the encoder is a vector-matrix
        product instead of a `[batch, d_sae] x [d_sae, d_in]` matmul (`x_n` needs no gradient).
        """
        if self.cfg.apply_b_dec_to_input:
            bias = bias - self.b_dec @ self.W_enc
        return torch.addmm(bias, x_n, self.W_enc)

    # -- public interface ----------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Feature activations: `x [batch, d_in]` (model units) -> `[batch, d_sae]`."""
        self._check_width(x, self.cfg.d_in, "input")
        return self._encode_n(self._scale_in(x))

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """The non-zero entries of `encode(x)`, rows ascending and columns ascending within a row.

        `encode_sparse(x).to_dense()` equals `encode(x)`; TopK builds the entries without the
        dense `[batch, d_sae]` matrix.

        Example:
            >>> sae = make_dictionary("topk", d_in=8, d_sae=32, k=2, seed=0)
            >>> x = torch.randn(3, 8)
            >>> codes = sae.encode_sparse(x)
            >>> torch.equal(codes.to_dense(), sae.encode(x)), codes.rows.tolist()
            (True, [0, 0, 1, 1, 2, 2])
        """
        self._check_width(x, self.cfg.d_in, "input")
        return self._encode_sparse_n(self._scale_in(x))

    def _encode_sparse_n(self, x_n: Tensor) -> SparseCodes:
        acts = self._encode_n(x_n)
        rows, cols = acts.nonzero(as_tuple=True)  # row-major order
        return SparseCodes(rows, cols, acts[rows, cols], acts.shape[0], acts.shape[1])

    def decode(self, feature_acts: Tensor, x: Tensor | None = None) -> Tensor:
        """Reconstruction (model units): `feature_acts [batch, d_sae]` -> `[batch, d_out]`.

        A skip transcoder also needs the input `x [batch, d_in]` it encoded (its skip term is added);
        other dictionaries ignore `x`.
        """
        self._check_width(feature_acts, self.cfg.d_sae, "feature_acts")
        out = feature_acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        if self.cfg.skip:
            if x is None:
                raise DictionaryConfigError(f"{type(self).__name__} has a skip connection: pass the input too, "
                                            "decode(feature_acts, x)")
            self._check_width(x, self.cfg.d_in, "input")
            out = out + self._skip_n(self._scale_in(x))
        return self._unscale_out(out)

    def skip_output(self, x: Tensor) -> Tensor:
        """The skip term alone in model units, `x [batch, d_in]` -> `[batch, d_out]` (zeros without skip)."""
        self._check_width(x, self.cfg.d_in, "input")
        if not self.cfg.skip:
            return x.new_zeros(x.shape[0], self.cfg.d_out)  # type: ignore[arg-type]
        return self._unscale_out(self._skip_n(self._scale_in(x)))

    def skip_weight(self) -> Tensor | None:
        """`W_skip` in model units, `[d_out, d_in]` (`skip_output(x) = x @ skip_weight().T`), or None."""
        if not self.cfg.skip:
            return None
        return self._skip_parameter() * (self.cfg.input_scale / float(self.cfg.output_scale))  # type: ignore[arg-type]

    def _skip_parameter(self) -> Tensor:
        W = getattr(self, "W_skip", None)
        if W is None:
            raise DictionaryConfigError(f"{type(self).__name__} does not support skip connections")
        return W

    def _skip_n(self, x_n: Tensor) -> Tensor:
        return x_n @ self._skip_parameter().T

    def forward(
        self, x: Tensor, target: Tensor | None = None, *, sparsity_scale: float = 1.0,
        dead_mask: Tensor | None = None,
    ) -> DictionaryOutput:
        """Run on `x [batch, d_in]` against `target [batch, d_out]` (default `x`) and compute the losses.

        `sparsity_scale` multiplies the sparsity coefficient (its warm-up); `dead_mask [d_sae]`
        marks dead latents for the auxiliary loss of TopK-style dictionaries.
        """
        self._check_width(x, self.cfg.d_in, "input")
        if target is None:
            if self.cfg.is_transcoder:
                raise DictionaryConfigError("a transcoder needs a target batch [batch, d_out]")
            target = x
        self._check_width(target, self.cfg.d_out, "target")  # type: ignore[arg-type]
        x_n = self._scale_in(x)
        t_n = x_n if target is x and self.cfg.output_scale == self.cfg.input_scale else self._scale_target(target)
        skip_n = self._skip_n(x_n) if self.cfg.skip else None
        if skip_n is not None:  # the features fit what the skip term leaves; W_skip gets its gradient through it
            t_n = t_n - skip_n
        out = self._forward_n(x_n, t_n, sparsity_scale, dead_mask)
        if skip_n is not None:
            out.reconstruction = out.reconstruction + skip_n
        out.reconstruction = self._unscale_out(out.reconstruction)
        return out

    def loss(self, x: Tensor, target: Tensor | None = None, *, sparsity_scale: float = 1.0) -> Tensor:
        """The scalar training loss of `forward`."""
        return self.forward(x, target, sparsity_scale=sparsity_scale).loss

    # -- hooks the trainer calls -----------------------------------------------------------------
    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """With unit-norm decoder rows, remove the gradient component along each row."""
        g = self.W_dec.grad
        if self.cfg.decoder_norm == "unit" and g is not None:
            g.sub_((g * self.W_dec).sum(1, keepdim=True) * self.W_dec)

    @torch.no_grad()
    def after_optimizer_step(self, reduce_min: Any = None) -> None:
        """Re-impose constraints and update running statistics after a step.

        With unit-norm decoder rows, project them back onto the unit sphere.
        `reduce_min(tensor) -> tensor` combines a statistic across data-parallel ranks.
        """
        if self.cfg.decoder_norm == "unit":
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def reset_latents(self, idx: Tensor, pre: Tensor) -> list[tuple[nn.Parameter, tuple[Any, ...]]]:
        """Re-initialise architecture-specific parameters of the resampled latents `idx [n]`.

        Called after resampling has set their encoder, encoder bias (0) and decoder; `pre [batch, n]`
        holds the new latents' pre-activations on the batch they were drawn from. Returns the
        `(parameter, index)` pairs changed, whose optimizer moments the caller resets. The base has none.
        """
        return []

    # -- helpers for subclasses -------------------------------------------------------------
    @staticmethod
    def _mse(recon_n: Tensor, target_n: Tensor) -> Tensor:
        """Mean over the batch of `||recon - target||^2` (summed over features)."""
        return (recon_n - target_n).pow(2).sum(-1).mean()

    def _dense_output(self, recon_n: Tensor, target_n: Tensor, acts: Tensor, extra: dict[str, Tensor],
                      fired: Tensor | None = None) -> DictionaryOutput:
        mse = self._mse(recon_n, target_n)
        losses = {"mse": mse, **extra}
        if fired is None:
            with torch.no_grad():
                fired = acts.amax(0) > 0
        return DictionaryOutput(recon_n, sum(losses.values()), losses, fired, dense_acts=acts)  # type: ignore[arg-type]

    def _check_width(self, t: Tensor, width: int | None, what: str) -> None:
        if t.ndim != 2 or t.shape[-1] != width:
            raise DictionaryConfigError(
                f"{type(self).__name__} expects {what} of shape [batch, {width}], got {tuple(t.shape)}"
            )

    def extra_repr(self) -> str:
        c = self.cfg
        return f"architecture={c.architecture!r}, d_in={c.d_in}, d_sae={c.d_sae}, d_out={c.d_out}"


_REGISTRY: dict[str, type[Dictionary]] = {}


def register(cls: type[Dictionary]) -> type[Dictionary]:
    """Class decorator: register `cls` under `cls.config_class.architecture`.

    Example:
        >>> register(dictionary_class("topk"))            # each name is registered once
        Traceback (most recent call last):
        ...
        mechscope.dictionaries.errors.DictionaryConfigError: architecture 'topk' is empty or already registered
    """
    name = cls.config_class.architecture
    if not name or name in _REGISTRY:
        raise DictionaryConfigError(f"architecture {name!r} is empty or already registered")
    _REGISTRY[name] = cls
    return cls


def available_architectures() -> list[str]:
    """Registered architecture names, sorted.

    Example:
        >>> {"relu", "topk", "batchtopk", "jumprelu", "gated"} <= set(available_architectures())
        True
    """
    return sorted(_REGISTRY)


def dictionary_class(architecture: str) -> type[Dictionary]:
    """The class registered for `architecture` (a clear error with the nearest names otherwise).

    Example:
        >>> dictionary_class("jumprelu").__name__
        'JumpReLUSAE'
        >>> dictionary_class("topkk")
        Traceback (most recent call last):
        ...
        mechscope.dictionaries.errors.DictionaryConfigError: ...topk...
    """
    try:
        return _REGISTRY[architecture]
    except KeyError:
        raise DictionaryConfigError(unknown_name_message("architecture", architecture, _REGISTRY)) from None


def make_dictionary(architecture: str, *, seed: int | None = None, **config: Any) -> Dictionary:
    """Build a dictionary from its architecture name and config fields.

    Example:
        >>> make_dictionary("relu", d_in=4, d_sae=16).cfg.d_sae
        16
    """
    cls = dictionary_class(architecture)
    return cls(cls.config_class(**config), seed=seed)


def dictionary_from_config(cfg: DictionaryConfig, seed: int | None = None) -> Dictionary:
    """Build the dictionary whose class matches `cfg.architecture`.

    Example:
        >>> from mechscope.dictionaries.gated import GatedSAEConfig
        >>> type(dictionary_from_config(GatedSAEConfig(d_in=4, d_sae=8), seed=0)).__name__
        'GatedSAE'
    """
    return dictionary_class(cfg.architecture)(cfg, seed=seed)
