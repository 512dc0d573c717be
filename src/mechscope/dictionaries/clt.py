"""Cross-layer transcoder (CLT): features read the MLP input of one layer and write to every later MLP output.

Layer `l` has `F` features: `pre_l = x_l @ W_enc[l] + b_enc[l]`, `a_l = act(pre_l)`; the output
predicted for layer `m` is `y_m = b_dec[m] + sum_{l <= m} a_l @ W_dec[l][:, m - l]`.
`act` is JumpReLU (`pre * H(pre - theta)`, straight-through threshold gradient as in
`jumprelu.py`) or per-layer TopK.

Loss (normalised units, `x` and `y` the concatenations over layers, `[batch, n_layers * d_model]`):
`mse + sparsity_coefficient * sparsity_scale * mean_b sum_{l,i} tanh(tanh_scale * a_{l,i} * ||W_dec[l][i]||)
+ preact_coefficient * mean_b sum_{l,i} relu(-pre_{l,i})`, where `||W_dec[l][i]||` is the norm of the
feature's decoder rows into all its layers, concatenated; the pre-activation term pulls dead
features' pre-activations up. TopK uses the MSE (and the pre-activation term) only.

As a `Dictionary` it trains with the existing `Trainer` on pairs of concatenated MLP inputs and
outputs (`d_in = d_out = n_layers * d_model`, `d_sae = n_layers * F`; pass `resample_every=0`:
dead features are the pre-activation loss's job); `CLTSet` gives it the
`TranscoderSet` interface the circuits layer reads. Files: circuit-tracer's CLT layout
(`W_enc_{l}.safetensors` with `W_enc_{l} [F, d]`, `b_enc_{l}`, `b_dec_{l}`, `threshold_{l}`;
`W_dec_{l}.safetensors` with `W_dec_{l} [F, n_layers - l, d]`, all in model units) plus
`transcoders.json` with the config.

Example:
    >>> import torch
    >>> clt = CrossLayerTranscoder(CLTConfig.make(n_layers=3, d_model=8, features_per_layer=16), seed=0)
    >>> out = clt(torch.randn(4, 24), torch.randn(4, 24))
    >>> sorted(out.losses), out.feature_acts.shape
    (['mse', 'preact', 'sparsity'], torch.Size([4, 48]))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mechscope.core.files import atomic_write_json, claim_output_dir
from mechscope.dictionaries.base import DTYPES, Dictionary, DictionaryConfig, DictionaryOutput, register
from mechscope.dictionaries.errors import DictionaryConfigError, DictionaryFormatError
from mechscope.dictionaries.jumprelu import JumpReLUFunction
from mechscope.dictionaries.transcoder_set import SET_FILE, TranscoderSet


@dataclass
class CLTConfig(DictionaryConfig):
    """`n_layers`, `d_model`, `features_per_layer`; `activation` ("jumprelu" or "topk", with `k` per layer).

    Example:
        >>> cfg = CLTConfig.make(n_layers=3, d_model=8, features_per_layer=16, activation="topk", k=2)
        >>> cfg.d_in, cfg.d_sae, cfg.d_out, cfg.hook_name_out
        (24, 48, 24, 'blocks.{l}.hook_mlp_out')
    """

    n_layers: int = 0
    d_model: int = 0
    features_per_layer: int = 0
    activation: str = "jumprelu"
    k: int = 0
    sparsity_coefficient: float = 1e-3
    tanh_scale: float = 4.0
    preact_coefficient: float = 3e-6
    bandwidth: float = 0.05
    threshold_init: float = 0.1
    decoder_norm: str = "free"

    architecture = "clt"
    decoder_norms = ("free",)

    @classmethod
    def make(cls, n_layers: int, d_model: int, features_per_layer: int, **fields: Any) -> CLTConfig:
        """A config with the derived widths filled in."""
        return cls(d_in=n_layers * d_model, d_sae=n_layers * features_per_layer, d_out=n_layers * d_model,
                   n_layers=n_layers, d_model=d_model, features_per_layer=features_per_layer,
                   hook_name_out=fields.pop("hook_name_out", "blocks.{l}.hook_mlp_out"), **fields)

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.n_layers, self.d_model, self.features_per_layer) <= 0:
            raise DictionaryConfigError("n_layers, d_model and features_per_layer must be positive")
        if (self.d_in, self.d_out, self.d_sae) != (self.n_layers * self.d_model, self.n_layers * self.d_model,
                                                  self.n_layers * self.features_per_layer):
            raise DictionaryConfigError("d_in, d_out, d_sae must be n_layers * d_model, n_layers * d_model and "
                                        "n_layers * features_per_layer (use CLTConfig.make)")
        if self.activation not in ("jumprelu", "topk"):
            raise DictionaryConfigError(f"activation must be 'jumprelu' or 'topk', got {self.activation!r}")
        if self.activation == "topk" and not 0 < self.k <= self.features_per_layer:
            raise DictionaryConfigError(f"topk needs 0 < k <= features_per_layer, got k={self.k}")


@register
class CrossLayerTranscoder(Dictionary):
    """See the module docstring. Parameters: `W_enc [L, d, F]`, `b_enc [L, F]`, `log_threshold [L, F]`,
    `W_dec[l] [F, L - l, d]`, `b_dec [L * d]` (normalised units).

    Example:
        >>> clt = CrossLayerTranscoder(CLTConfig.make(n_layers=2, d_model=4, features_per_layer=8), seed=0)
        >>> [tuple(w.shape) for w in clt.W_dec], tuple(clt.W_enc.shape)      # layer 0 writes to both layers
        ([(8, 2, 4), (8, 1, 4)], (2, 4, 8))
        >>> again = CrossLayerTranscoder.load(clt.save("clt"))
        >>> x = torch.randn(3, 8)
        >>> torch.allclose(again.encode(x), clt.encode(x), atol=1e-6)
        True
    """

    config_class = CLTConfig
    cfg: CLTConfig

    def __init__(self, cfg: CLTConfig, seed: int | None = None) -> None:
        nn.Module.__init__(self)  # the dense [d_in, d_sae] matrices of the base class would be L times too big
        if not isinstance(cfg, CLTConfig):
            raise DictionaryConfigError("CrossLayerTranscoder needs a CLTConfig")
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        L, d, F = cfg.n_layers, cfg.d_model, cfg.features_per_layer
        dtype = DTYPES[cfg.dtype]
        bound = 1.0 / math.sqrt(d)
        self.W_enc = nn.Parameter((torch.rand(L, d, F, generator=gen, dtype=torch.float64) * 2 - 1).mul(bound).to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(L, F, dtype=dtype))
        self.log_threshold = nn.Parameter(torch.full((L, F), math.log(cfg.threshold_init), dtype=dtype))
        dec_bound = 1.0 / math.sqrt(L * F)
        self.W_dec = nn.ParameterList([
            nn.Parameter((torch.rand(F, L - i, d, generator=gen, dtype=torch.float64) * 2 - 1).mul(dec_bound).to(dtype))
            for i in range(L)])
        self.b_dec = nn.Parameter(torch.zeros(L * d, dtype=dtype))

    def before_optimizer_step(self) -> None:
        """Nothing: decoder norms are free (the tanh penalty weighs them)."""

    def after_optimizer_step(self, reduce_min: Any = None) -> None:
        """Nothing to re-impose."""

    # -- normalised-unit pieces ---------------------------------------------------------------
    def _scale_target(self, t: Tensor) -> Tensor:
        return t.to(self.b_dec.dtype) * self.cfg.output_scale  # type: ignore[operator]

    def _pre(self, x_n: Tensor) -> Tensor:
        """`[batch, L * d]` -> pre-activations `[batch, L, F]`."""
        x = x_n.view(x_n.shape[0], self.cfg.n_layers, self.cfg.d_model)
        return torch.einsum("bld,ldf->blf", x, self.W_enc) + self.b_enc

    def _act(self, pre: Tensor, grad: bool) -> Tensor:
        if self.cfg.activation == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        theta = self.log_threshold.exp()
        if grad:
            flat = JumpReLUFunction.apply(pre.reshape(pre.shape[0], -1), theta.reshape(-1), self.cfg.bandwidth)
            return flat.view_as(pre)
        return pre * (pre > theta)

    def _decode_n(self, acts: Tensor) -> Tensor:
        """`[batch, L, F]` -> `[batch, L * d]`."""
        L, d = self.cfg.n_layers, self.cfg.d_model
        parts = [self.b_dec.view(L, d).expand(acts.shape[0], L, d)]
        for i in range(L):
            out = (acts[:, i] @ self.W_dec[i].reshape(acts.shape[-1], -1)).view(-1, L - i, d)
            parts.append(torch.cat([out.new_zeros(out.shape[0], i, d), out], 1) if i else out)
        return torch.stack(parts).sum(0).reshape(acts.shape[0], L * d)

    def decoder_norms(self) -> Tensor:
        """`[L, F]`: each feature's decoder norm over all the layers it writes to."""
        return torch.stack([w.pow(2).sum((1, 2)).sqrt() for w in self.W_dec])

    def _encode_n(self, x_n: Tensor) -> Tensor:
        return self._act(self._pre(x_n), grad=False).reshape(x_n.shape[0], -1)

    def decode(self, feature_acts: Tensor) -> Tensor:
        """Concatenated MLP output predictions `[batch, L * d]` (model units) from `[batch, L * F]`."""
        self._check_width(feature_acts, self.cfg.d_sae, "feature_acts")
        acts = feature_acts.to(self.b_dec.dtype).view(-1, self.cfg.n_layers, self.cfg.features_per_layer)
        return self._unscale_out(self._decode_n(acts))

    def _forward_n(self, x_n: Tensor, target_n: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> DictionaryOutput:
        pre = self._pre(x_n)
        acts = self._act(pre, grad=True)
        recon = self._decode_n(acts)
        flat = acts.reshape(acts.shape[0], -1)
        extra = {"preact": self.cfg.preact_coefficient * (-pre).relu().sum((1, 2)).mean()}
        if self.cfg.activation == "jumprelu":
            penalty = torch.tanh(self.cfg.tanh_scale * acts * self.decoder_norms()).sum((1, 2)).mean()
            extra["sparsity"] = self.cfg.sparsity_coefficient * sparsity_scale * penalty
        return self._dense_output(recon, target_n, flat, extra)

    # -- files (circuit-tracer's CLT layout, model units) ----------------------------------------
    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the folder described in the module docstring."""
        folder = claim_output_dir(path, force=force)
        c = self.cfg
        s_in, s_out = c.input_scale, float(c.output_scale)  # type: ignore[arg-type]
        b_dec = (self.b_dec / s_out).view(c.n_layers, c.d_model).detach()
        for i in range(c.n_layers):
            enc = {f"W_enc_{i}": (self.W_enc[i].T * s_in).contiguous(), f"b_enc_{i}": self.b_enc[i],
                   f"b_dec_{i}": b_dec[i], f"threshold_{i}": self.log_threshold[i].exp()}
            save_file({k: v.detach().float().contiguous() for k, v in enc.items()}, str(folder / f"W_enc_{i}.safetensors"))
            save_file({f"W_dec_{i}": (self.W_dec[i] / s_out).detach().float().contiguous()},
                      str(folder / f"W_dec_{i}.safetensors"))
        config = {**c.to_dict(), "input_scale": 1.0, "output_scale": 1.0}
        atomic_write_json(folder / SET_FILE, {"kind": "cross_layer", "config": config})
        return folder

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> CrossLayerTranscoder:
        """Read a folder written by `save`, or circuit-tracer's CLT layout (then `overrides` may set the config)."""
        folder = Path(path)
        try:
            meta = json.loads((folder / SET_FILE).read_text()) if (folder / SET_FILE).is_file() else {}
            enc = [load_file(str(folder / f"W_enc_{i}.safetensors")) for i in range(_count(folder))]
            dec = [load_file(str(folder / f"W_dec_{i}.safetensors"))[f"W_dec_{i}"] for i in range(len(enc))]
        except (OSError, ValueError, KeyError) as err:
            raise DictionaryFormatError(f"{folder} is not a readable cross-layer transcoder: {err}") from err
        L = len(enc)
        F, d = enc[0]["W_enc_0"].shape
        fields = dict(meta.get("config", {}))
        fields.update({"input_scale": 1.0, "output_scale": 1.0, **overrides})
        cfg = CLTConfig.from_dict({**CLTConfig.make(L, d, F).to_dict(), **fields})
        clt = cls(cfg)  # type: ignore[arg-type]
        with torch.no_grad():
            for i in range(L):
                clt.W_enc[i].copy_(enc[i][f"W_enc_{i}"].T)
                clt.b_enc[i].copy_(enc[i][f"b_enc_{i}"])
                clt.b_dec[i * d:(i + 1) * d].copy_(enc[i][f"b_dec_{i}"])
                if f"threshold_{i}" in enc[i]:
                    clt.log_threshold[i].copy_(enc[i][f"threshold_{i}"].clamp_min(1e-30).log())
                if dec[i].shape != (F, L - i, d):
                    raise DictionaryFormatError(f"W_dec_{i} has shape {tuple(dec[i].shape)}, expected {(F, L - i, d)}")
                clt.W_dec[i].copy_(dec[i])
        return clt


def _count(folder: Path) -> int:
    n = 0
    while (folder / f"W_enc_{n}.safetensors").is_file():
        n += 1
    if n == 0:
        raise DictionaryFormatError(f"{folder} holds no W_enc_0.safetensors")
    return n


class CLTSet(TranscoderSet):
    """The `TranscoderSet` view of a cross-layer transcoder (model units).

    Example:
        >>> clt = CrossLayerTranscoder(CLTConfig.make(n_layers=2, d_model=4, features_per_layer=8), seed=0)
        >>> s = CLTSet(clt)
        >>> s.kind, s.n_layers, s.d_sae(1), s.decoder_vectors(0, torch.tensor([1, 2])).shape
        ('cross_layer', 2, 8, torch.Size([2, 2, 4]))
        >>> acts = [s.encode(layer, torch.randn(5, 4)) for layer in range(2)]
        >>> s.decode_to(1, acts).shape
        torch.Size([5, 4])
    """

    kind = "cross_layer"

    def __init__(self, clt: CrossLayerTranscoder) -> None:
        super().__init__()
        self.clt = clt
        self.n_layers, self.d_model = clt.cfg.n_layers, clt.cfg.d_model

    def d_sae(self, layer: int) -> int:
        return self.clt.cfg.features_per_layer

    def encode(self, layer: int, x: Tensor) -> Tensor:
        c = self.clt.cfg
        pre = (x.to(self.clt.W_enc.dtype) * c.input_scale) @ self.clt.W_enc[layer] + self.clt.b_enc[layer]
        if c.activation == "topk":
            vals, idx = pre.topk(c.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        return pre * (pre > self.clt.log_threshold[layer].exp())

    def encoder_vectors(self, layer: int, feats: Tensor) -> Tensor:
        return (self.clt.W_enc[layer][:, feats].T * self.clt.cfg.input_scale).detach()

    def decoder_vectors(self, layer: int, feats: Tensor) -> Tensor:
        return (self.clt.W_dec[layer][feats] / self.clt.cfg.output_scale).detach()

    def decode_to(self, layer: int, acts: list[Tensor]) -> Tensor:
        c = self.clt.cfg
        d = c.d_model
        out = self.clt.b_dec[layer * d:(layer + 1) * d].expand(acts[0].shape[0], d)
        for src in range(layer + 1):
            out = out + acts[src].to(out.dtype) @ self.clt.W_dec[src][:, layer - src]
        return out / c.output_scale  # type: ignore[operator]

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        return self.clt.save(path, force=force)
