"""Train and evaluate whole-model transcoder sets (per-layer or cross-layer) on MLP input/output pairs.

`collect_mlp_pairs` streams every layer's MLP input and output for the same tokens from the
model (`iter_sites_batches`) into memory: `n_tokens * n_layers * d_model * 8` bytes (about
0.57 GB for 4096 tokens of SmolLM2-135M). The trainers run the existing `Trainer` for
`epochs` passes over them, shuffled; `evaluate_layers` reports per layer the normalised MSE
(`sum ||y - y_hat||^2 / sum ||y - mean(y)||^2` over held-out tokens), L0 and the fraction of
features that never fire on them.

Example:
    >>> data = collect_mlp_pairs(model, n_tokens=4096)                          # doctest: +SKIP
    >>> tcs = train_per_layer(data, d_sae=1024, architecture="jumprelu")        # doctest: +SKIP
    >>> evaluate_layers(tcs, collect_mlp_pairs(model, 1024, skip_tokens=4096))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechscope.core import names
from mechscope.core.errors import MechscopeError
from mechscope.dictionaries.base import make_dictionary
from mechscope.dictionaries.clt import CLTConfig, CLTSet, CrossLayerTranscoder
from mechscope.dictionaries.streaming import iter_sites_batches
from mechscope.dictionaries.trainer import Trainer, TrainerConfig
from mechscope.dictionaries.transcoder_set import PerLayerTranscoders, TranscoderSet, mlp_input_hook


@dataclass
class MlpPairs:
    """`inputs` and `outputs` `[n_tokens, n_layers, d_model]` of every MLP, row-aligned by token.

    Example:
        >>> data = MlpPairs(torch.randn(10, 2, 4), torch.randn(10, 2, 4), "tiny",
        ...                 ["blocks.0.ln2.hook_normalized", "blocks.1.ln2.hook_normalized"])
        >>> train, held_out = data.split(8)
        >>> len(train.inputs), len(held_out.outputs)
        (8, 2)
    """

    inputs: Tensor
    outputs: Tensor
    model_name: str
    input_hooks: list[str]

    def split(self, n: int) -> tuple[MlpPairs, MlpPairs]:
        """The first `n` tokens and the rest (e.g. training and held-out tokens)."""
        if not 0 < n < len(self.inputs):
            raise MechscopeError(f"cannot split {len(self.inputs)} tokens at {n}: the corpus is too small")
        return (MlpPairs(self.inputs[:n], self.outputs[:n], self.model_name, self.input_hooks),
                MlpPairs(self.inputs[n:], self.outputs[n:], self.model_name, self.input_hooks))


def collect_mlp_pairs(model: Any, n_tokens: int, *, skip_tokens: int = 0, context_length: int = 128,
                      source: Any = "default", seed: int = 0) -> MlpPairs:
    """`n_tokens` tokens (after skipping `skip_tokens`, e.g. the training tokens for a held-out set).

    Example:
        >>> data = collect_mlp_pairs(model, n_tokens=4096, context_length=128)       # doctest: +SKIP
        >>> data.inputs.shape                                                         # doctest: +SKIP
        torch.Size([4096, 30, 576])
    """
    L = model.cfg.n_layers
    sites = [mlp_input_hook(model, layer) for layer in range(L)] + [names.mlp_out(layer) for layer in range(L)]
    total = skip_tokens + n_tokens
    batches = iter_sites_batches(model, sites, source=source, context_length=context_length,
                                 batch_size=256, max_tokens=total, seed=seed)  # small: a partial last batch is dropped
    rows: list[Tensor] = []
    seen = 0
    for parts in batches:
        stacked = torch.stack(parts, 1)  # [batch, 2L, d]
        take = stacked[max(0, skip_tokens - seen):]
        seen += stacked.shape[0]
        if len(take):
            rows.append(take)
    data = torch.cat(rows)[:n_tokens] if rows else torch.zeros(0, 2 * L, model.cfg.d_model)
    if len(data) == 0:
        raise MechscopeError(f"the corpus holds no tokens after the first {skip_tokens}: use a larger corpus "
                             "or fewer tokens")
    return MlpPairs(data[:, :L].contiguous(), data[:, L:].contiguous(), model.cfg.name, sites[:L])


def _epochs(x: Tensor, y: Tensor, batch_size: int, epochs: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]


def _steps(n: int, batch_size: int, epochs: int) -> int:
    return max(1, (n // batch_size) * epochs)


def train_per_layer(data: MlpPairs, *, d_sae: int, architecture: str = "jumprelu", epochs: int = 4,
                    batch_size: int = 512, lr: float = 1e-3, seed: int = 0, progress: bool = True,
                    target_l0: float | None = None, **dictionary_fields: Any) -> PerLayerTranscoders:
    """One transcoder per layer (any registered architecture), trained by `Trainer` (`target_l0`: its
    L0 controller steers each layer's sparsity coefficient to that L0; penalty architectures only).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> data = MlpPairs(torch.randn(64, 2, 4), torch.randn(64, 2, 4), "tiny", ["a", "b"])
        >>> tcs = train_per_layer(data, d_sae=8, architecture="topk", k=2, epochs=1, batch_size=16, progress=False)
        >>> tcs.n_layers, tcs.output_hook(1), tcs.transcoders[0].cfg.hook_name
        (2, 'blocks.1.hook_mlp_out', 'a')
    """
    n, L, d = data.inputs.shape
    transcoders = []
    for layer in tqdm(range(L), desc="layers", disable=not progress):
        t = make_dictionary(architecture, d_in=d, d_sae=d_sae, d_out=d, seed=seed + layer,
                            hook_name=data.input_hooks[layer], hook_name_out=names.mlp_out(layer),
                            model_name=data.model_name, **dictionary_fields)
        config = TrainerConfig(total_steps=_steps(n, batch_size, epochs), lr=lr, progress=False, seed=seed,
                               log_every=10_000, target_l0=target_l0)
        Trainer(t, config).fit(_epochs(data.inputs[:, layer], data.outputs[:, layer], batch_size, epochs, seed))
        transcoders.append(t.eval())
    return PerLayerTranscoders(transcoders)


def train_clt(data: MlpPairs, *, features_per_layer: int, activation: str = "jumprelu", epochs: int = 4,
              batch_size: int = 512, lr: float = 1e-3, seed: int = 0, progress: bool = True,
              **config_fields: Any) -> CLTSet:
    """A cross-layer transcoder on the concatenated pairs, trained by `Trainer`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> data = MlpPairs(torch.randn(64, 2, 4), torch.randn(64, 2, 4), "tiny", ["a", "b"])
        >>> s = train_clt(data, features_per_layer=8, epochs=1, batch_size=16, progress=False)
        >>> s.kind, s.n_layers, s.d_sae(0)
        ('cross_layer', 2, 8)
    """
    n, L, d = data.inputs.shape
    cfg = CLTConfig.make(L, d, features_per_layer, activation=activation, model_name=data.model_name, **config_fields)
    clt = CrossLayerTranscoder(cfg, seed=seed)
    # dead features are the pre-activation loss's job: the generic resampler does not know the CLT's layout
    config = TrainerConfig(total_steps=_steps(n, batch_size, epochs), lr=lr, progress=progress, seed=seed,
                           log_every=50, resample_every=0)
    Trainer(clt, config).fit(_epochs(data.inputs.reshape(n, L * d), data.outputs.reshape(n, L * d),
                                     batch_size, epochs, seed))
    return CLTSet(clt.eval())


@torch.no_grad()
def evaluate_layers(tcs: TranscoderSet, data: MlpPairs, chunk: int = 1024) -> list[dict[str, float]]:
    """Per layer: `normalised_mse`, `l0` and `dead_fraction` on held-out pairs (module docstring).

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> tcs = PerLayerTranscoders([make_dictionary("topk", d_in=4, d_sae=8, d_out=4, k=2,
        ...                                            hook_name_out=f"blocks.{i}.hook_mlp_out") for i in range(2)])
        >>> rows = evaluate_layers(tcs, MlpPairs(torch.randn(32, 2, 4), torch.randn(32, 2, 4), "tiny", ["a", "b"]))
        >>> [(r["layer"], 0 < r["l0"] <= 2) for r in rows], sorted(rows[0])     # TopK(2), then ReLU
        ([(0, True), (1, True)], ['dead_fraction', 'l0', 'layer', 'normalised_mse'])
    """
    n, L, _ = data.inputs.shape
    err = torch.zeros(L)
    var = torch.zeros(L)
    l0 = torch.zeros(L)
    fired = [torch.zeros(tcs.d_sae(layer), dtype=torch.bool) for layer in range(L)]
    mean = data.outputs.mean(0)
    for i in range(0, n, chunk):
        x, y = data.inputs[i:i + chunk], data.outputs[i:i + chunk]
        acts = [tcs.encode(layer, x[:, layer]).float() for layer in range(L)]
        recon = tcs.reconstruct(acts, [x[:, layer] for layer in range(L)])
        for layer in range(L):
            err[layer] += (recon[layer].float() - y[:, layer]).pow(2).sum()
            var[layer] += (y[:, layer] - mean[layer]).pow(2).sum()
            active = acts[layer] > 0
            l0[layer] += active.sum()
            fired[layer] |= active.any(0)
    return [{"layer": layer, "normalised_mse": float(err[layer] / var[layer]), "l0": float(l0[layer] / n),
             "dead_fraction": float(1 - fired[layer].float().mean())} for layer in range(L)]
