"""Tuned lens (Belrose et al. 2023): one learned affine translator per layer before the unembedding.

For the residual `h` at `blocks.{l}.hook_resid_pre` the tuned lens reads

    p_tuned(h) = softmax(unembed(h + A_l h + b_l))

with `A_l` [d_model, d_model] and `b_l` [d_model] initialized to zero, so a fresh lens is the
logit lens. The final residual (`resid_post` of the last block) has no translator: there
the lens is exact. Training (`mechscope.methods.tuned_lens_train`) minimizes
KL(p_final || p_tuned) over a corpus; `evaluate_lenses` compares both lenses on held-out text.

On disk a lens is a folder: `config.json` (schema version, model name and weights hash,
sites, training record) and `lens.safetensors` (`{l}.weight`, `{l}.bias` per translator).

Example:
    >>> lens = TunedLens.for_model(model)                              # doctest: +SKIP
    >>> result = logit_lens(model, "Hello", translator=lens, lens="tuned")  # doctest: +SKIP
    >>> lens.save("smollm-lens"); lens = TunedLens.load("smollm-lens", model)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from mechscope.core import names
from mechscope.core.errors import MechscopeError
from mechscope.core.files import atomic_write_bytes, atomic_write_json, claim_output_dir
from mechscope.core.hooked import HookedModel
from mechscope.core.provenance import weights_hash
from mechscope.core.scores import kl_divergence

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "lens.safetensors"


@dataclass
class TunedLensConfig:
    """What a saved lens belongs to and how it was trained.

    Example:
        >>> cfg = TunedLensConfig(model_name="tiny", weights_sha256="ab12", d_model=16,
        ...                       sites=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"])
        >>> cfg.d_model, len(cfg.sites)
        (16, 2)
    """

    model_name: str
    weights_sha256: str
    d_model: int
    sites: list[str]
    schema_version: int = SCHEMA_VERSION
    training: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TunedLensConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            log.warning("Ignoring unknown tuned-lens config keys: %s", ", ".join(unknown))
        if data.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise MechscopeError(f"This tuned lens has schema_version {data['schema_version']}; "
                                 f"this mechscope reads up to {SCHEMA_VERSION}.")
        missing = [f for f in ("model_name", "weights_sha256", "d_model", "sites") if f not in data]
        if missing:
            raise MechscopeError(f"Tuned-lens config lacks {', '.join(missing)}.")
        return cls(**{k: v for k, v in data.items() if k in known})


class TunedLens(nn.Module):
    """Affine translators `h -> h + A h + b`, one per residual site (a `Translator` for `logit_lens`).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> lens = TunedLens.for_model(model)
        >>> resid = torch.randn(1, 3, 16)
        >>> torch.equal(lens.translate(lens.sites[0], resid), resid)        # starts as the identity (the logit lens)
        True
        >>> path = lens.save("lens")
        >>> TunedLens.load("lens", model).sites == lens.sites
        True
    """

    def __init__(self, config: TunedLensConfig) -> None:
        super().__init__()
        self.config = config
        self.translators = nn.ModuleList(nn.Linear(config.d_model, config.d_model) for _ in config.sites)
        self._index = {site: i for i, site in enumerate(config.sites)}
        with torch.no_grad():
            for layer in self.translators:
                layer.weight.zero_()
                layer.bias.zero_()

    @classmethod
    def for_model(cls, model: HookedModel) -> TunedLens:
        """A fresh lens (equal to the logit lens) with translators at `resid_pre` of every block."""
        sites = [names.resid_pre(layer) for layer in range(model.cfg.n_layers)]
        config = TunedLensConfig(model.cfg.name, weights_hash(model), model.cfg.d_model, sites)
        return cls(config).to(device=model.device, dtype=model.dtype)

    @property
    def sites(self) -> list[str]:
        return list(self.config.sites)

    def translate(self, site: str, resid: Tensor) -> Tensor:
        """`resid + A resid + b` for a site with a translator; `resid` unchanged otherwise."""
        index = self._index.get(site)
        if index is None:
            if site != self.config.sites[-1] and "resid_post" not in site:
                log.debug("No tuned-lens translator for %s; reading it as the logit lens does", site)
            return resid
        layer = self.translators[index]
        return resid + layer(resid.to(layer.weight.dtype)).to(resid.dtype)

    def forward(self, site: str, resid: Tensor) -> Tensor:
        return self.translate(site, resid)

    def check_model(self, model: HookedModel) -> None:
        """Raise when `model` differs in width; warn when its weights differ from those the lens was trained on."""
        if model.cfg.d_model != self.config.d_model:
            raise MechscopeError(f"This tuned lens has d_model {self.config.d_model}; the model has {model.cfg.d_model}.")
        for site in self.config.sites:
            model.check_name(site)
        if weights_hash(model) != self.config.weights_sha256:
            log.warning("Tuned lens was trained on %s (weights %s); this model's weights differ.",
                        self.config.model_name, self.config.weights_sha256[:12])

    def save(self, folder: str | os.PathLike[str], force: bool = False) -> Path:
        """Write `config.json` and `lens.safetensors` to `folder` (each file replaced atomically).

        `folder` must be new, empty or mechscope's; a folder of someone else's files needs `force`.
        """
        path = claim_output_dir(folder, force)
        tensors = {}
        for i, layer in enumerate(self.translators):
            tensors[f"{i}.weight"] = layer.weight.detach().cpu().contiguous()
            tensors[f"{i}.bias"] = layer.bias.detach().cpu().contiguous()
        atomic_write_bytes(path / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
        atomic_write_json(path / CONFIG_FILE, asdict(self.config))
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str], model: HookedModel | None = None) -> TunedLens:
        """Read a lens folder; with `model`, check it fits and move it to the model's device and dtype."""
        path = Path(folder)
        if not (path / CONFIG_FILE).exists() or not (path / WEIGHTS_FILE).exists():
            raise MechscopeError(f"{path} is not a tuned-lens folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}).")
        try:
            config = TunedLensConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
            tensors = load_file(str(path / WEIGHTS_FILE))
        except Exception as err:  # safetensors raises its own error type on a corrupt header
            raise MechscopeError(f"Could not read the tuned lens in {path}: {err}") from err
        lens = cls(config)
        expected = {f"{i}.{p}" for i in range(len(config.sites)) for p in ("weight", "bias")}
        if set(tensors) != expected:
            raise MechscopeError(f"{path / WEIGHTS_FILE} holds {sorted(tensors)[:4]}...; expected {len(expected)} "
                                 f"tensors for {len(config.sites)} sites (corrupt or truncated file?).")
        with torch.no_grad():
            for i, layer in enumerate(lens.translators):
                layer.weight.copy_(tensors[f"{i}.weight"])
                layer.bias.copy_(tensors[f"{i}.bias"])
        if model is not None:
            lens.check_model(model)
            lens = lens.to(device=model.device, dtype=model.dtype)
        return lens


@dataclass(frozen=True)
class LayerEval:
    """Held-out comparison at one site: mean KL to the final distribution and perplexity of each lens.

    Example:
        >>> row = LayerEval("blocks.3.hook_resid_post", kl_logit=2.5, kl_tuned=0.4, ppl_logit=80.0, ppl_tuned=30.0)
        >>> row.kl_tuned < row.kl_logit
        True
    """

    site: str
    kl_logit: float
    kl_tuned: float
    ppl_logit: float
    ppl_tuned: float


def evaluate_lenses(model: HookedModel, lens: TunedLens, ids: Tensor, batch_size: int = 4) -> list[LayerEval]:
    """Per-site KL(p_final || p_lens) in nats and next-token perplexity exp(mean CE) of both lenses.

    `ids`: held-out token contexts [n, pos]. The last row is the final residual, where both lenses
    equal the model (KL 0). Example: `evaluate_lenses(model, lens, token_contexts(tok, split="held_out"))`.
    """
    if ids.numel() == 0:
        raise MechscopeError("No held-out contexts to evaluate the lenses on (is the corpus's held-out split empty?).")
    sites = [*lens.sites, names.resid_post(model.cfg.n_layers - 1)]
    totals = {s: torch.zeros(4, dtype=torch.float64) for s in sites}
    count = 0
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            chunk = ids[start:start + batch_size].to(model.device)
            logits, cache = model.run_with_cache(chunk, names=sites)
            assert logits is not None
            targets = chunk[:, 1:]
            for site in sites:
                resid = cache[site]
                for j, lens_logits in enumerate((model.unembed(resid), model.unembed(lens.translate(site, resid)))):
                    kl = kl_divergence(logits, lens_logits)[:, :-1]
                    ce = nn.functional.cross_entropy(lens_logits[:, :-1].float().transpose(1, 2), targets,
                                                     reduction="none")
                    totals[site][j] += float(kl.sum())
                    totals[site][2 + j] += float(ce.sum())
            count += targets.numel()
    out = []
    for site in sites:
        kl_l, kl_t, ce_l, ce_t = (float(v) / count for v in totals[site])
        out.append(LayerEval(site, kl_l, kl_t, math.exp(ce_l), math.exp(ce_t)))
    return out
