"""Dead latents of a TopK SAE on the default model with AuxK on raw pre-activations vs ReLU'd ones.

Caches `--tokens` activations of layer 15's residual stream (pydoc + stdlib docstrings), trains the
same TopK SAE twice from the same seed and batches: with mechscope's AuxK (the dead latents' raw
pre-activations, as OpenAI and SAELens) and with the earlier variant that applied a ReLU first
(so a latent whose pre-activation stays negative gets no AuxK gradient). Reports the dead
fraction (no firing in the last `dead_window` training tokens) and the fraction of latents that
never fire on held-out tokens. Writes `benchmarks/results/auxk_dead_fraction.json`.

Usage:
    python scripts/auxk_dead_fraction.py [--tokens 40960] [--expansion 8] [--k 32] [--steps 400] [--batch 512]
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

import mechscope
from mechscope.core.files import atomic_write_json
from mechscope.dictionaries import TopKSAE, make_dictionary
from mechscope.dictionaries.sparse_ops import SparsePattern, sparse_decode
from mechscope.dictionaries.streaming import iter_site_batches
from mechscope.dictionaries.trainer import Trainer, TrainerConfig

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "auxk_dead_fraction.json"


def relu_aux_k_loss(self, x_n, pre, dead_mask, residual):  # the earlier AuxK: ReLU before decoding
    n_dead = int(dead_mask.sum())
    if n_dead == 0 or self.cfg.aux_k_coefficient == 0:
        return residual.new_zeros(())
    k_aux = min(int(self.cfg.aux_k), n_dead)
    vals, cols = pre.masked_fill(~dead_mask, float("-inf")).topk(k_aux, dim=-1, sorted=False)
    rows = torch.arange(pre.shape[0]).repeat_interleave(k_aux)
    pattern = SparsePattern.build(rows, cols.reshape(-1), pre.shape[0], self.cfg.d_sae)
    e_hat = sparse_decode(pattern, self._sparse_acts(x_n, pattern, vals.reshape(-1)), self.W_dec)
    denom = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return self.cfg.aux_k_coefficient * self._mse(e_hat, residual) / denom


def train(rows: torch.Tensor, held_out: torch.Tensor, args: argparse.Namespace, relu_first: bool) -> dict:
    sae = make_dictionary("topk", d_in=rows.shape[1], d_sae=args.expansion * rows.shape[1], k=args.k, seed=0)
    if relu_first:
        sae._aux_k_loss = relu_aux_k_loss.__get__(sae, TopKSAE)
    gen = torch.Generator().manual_seed(0)
    batches = (rows[torch.randint(0, rows.shape[0], (args.batch,), generator=gen)] for _ in range(args.steps))
    trainer = Trainer(sae, TrainerConfig(total_steps=args.steps, progress=False, log_every=args.steps,
                                         dead_window_tokens=args.dead_window))
    result = trainer.fit(batches)
    with torch.no_grad():
        fired = (sae.encode(held_out) > 0).any(0)
    return {"dead_fraction_training": result.metrics["dead_fraction"],
            "never_fire_on_held_out": float((~fired).double().mean()),
            "explained_variance_last_batch": result.metrics["explained_variance"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=40_960)
    p.add_argument("--held-out", type=int, default=8192)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--dead-window", type=int, default=20_480)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    model = mechscope.load_model()
    rows = torch.cat(list(iter_site_batches(model, "blocks.15.hook_resid_post", source="default", split=None,
                                            batch_size=1024, max_tokens=args.tokens + args.held_out)))
    rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(1))]
    train_rows, held_out = rows[: args.tokens], rows[args.tokens:]
    results = {}
    for name, relu_first in (("relu_then_auxk (before)", True), ("raw_preacts (now)", False)):
        results[name] = train(train_rows, held_out, args, relu_first)
        print(name, {k: round(v, 4) for k, v in results[name].items()}, flush=True)
    atomic_write_json(args.out, {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "results": results, "provenance": {
        "model": model.cfg.name, "mechscope_version": mechscope.__version__, "torch_version": torch.__version__,
        "python": platform.python_version(), "seed": 0}})


if __name__ == "__main__":
    main()
