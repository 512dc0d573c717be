"""SAE training throughput: mechscope vs SAELens vs a minimal PyTorch loop, side by side in one run.

Measures tokens per second of full optimizer steps (forward, backward, gradient clipping, Adam)
on stored activations (random data of the right shape) for ReLU-L1 and TopK, and the float32
matmul rate of this machine for the shapes of one training step, so that the dense ReLU-L1 step
can be read as a fraction of the matmul rate:

    fraction = (5 * 2 * batch * d_in * d_sae / step_seconds) / matmul_flops_per_second

(a dense step is 5 matmuls of `batch x d_in x d_sae`: encoder and decoder forward, the decoder's
weight and input gradients, the encoder's weight gradient).

Usage:
    python benchmarks/sae_training.py [--d-in 576] [--expansion 16] [--batch 4096] [--k 32]
                                      [--steps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.trainer import Trainer, TrainerConfig


def timed(step: Callable[[], None], steps: int, warmup: int = 1) -> float:
    """Best (smallest) seconds of `step()` over `steps` calls after `warmup` calls.

    The best time is the least disturbed by other processes on a shared machine; every number in
    the report (matmul rate included) uses it, so ratios compare like with like.
    """
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_rate(batch: int, d_in: int, d_sae: int, repeats: int) -> float:
    """FLOP/s of the 5 float32 matmuls of a dense training step (same shapes and layouts)."""
    x, w_enc = torch.randn(batch, d_in), torch.randn(d_in, d_sae)
    f, w_dec = torch.randn(batch, d_sae), torch.randn(d_sae, d_in)
    g_out = torch.randn(batch, d_in)

    def five() -> None:
        x @ w_enc
        f @ w_dec
        f.t() @ g_out
        g_out @ w_dec.t()
        x.t() @ f

    return 5 * 2 * batch * d_in * d_sae / timed(five, repeats)


def ours(arch: str, d_in: int, d_sae: int, k: int, data: list[torch.Tensor]) -> Callable[[], None]:
    extra = {"k": k} if arch in ("topk", "batchtopk") else {"l1_coefficient": 5.0, "decoder_norm": "weighted"}
    sae = make_dictionary(arch, d_in=d_in, d_sae=d_sae, seed=0, **extra)
    trainer = Trainer(sae, TrainerConfig(total_steps=10**6, lr=1e-4, progress=False, log_every=10**6,
                                         dead_window_tokens=10**9))
    it = iter(range(10**9))
    return lambda: trainer.train_step(data[next(it) % len(data)])


def saelens(arch: str, d_in: int, d_sae: int, k: int, data: list[torch.Tensor]) -> Callable[[], None]:
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
        coefficients: dict[str, float] = {}
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=5.0))
        coefficients = {"l1": 5.0}
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    since_fired = torch.zeros(d_sae)
    it = iter(range(10**9))

    def step() -> None:  # the body of SAELens SAETrainer._train_step
        i = next(it)
        out = sae.training_forward_pass(TrainStepInput(sae_in=data[i % len(data)], coefficients=coefficients,
                                                       dead_neuron_mask=dead, n_training_steps=i, is_logging_step=False))
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return step


def minimal(arch: str, d_in: int, d_sae: int, k: int, data: list[torch.Tensor]) -> Callable[[], None]:
    """A plain PyTorch SAE step with no extras (no dead tracking, no clipping)."""
    gen = torch.Generator().manual_seed(0)
    W_dec = torch.nn.Parameter(torch.randn(d_sae, d_in, generator=gen) / d_in**0.5)
    W_enc = torch.nn.Parameter(W_dec.detach().t().clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(d_sae)), torch.nn.Parameter(torch.zeros(d_in))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-4)
    it = iter(range(10**9))

    def step() -> None:
        x = data[next(it) % len(data)]
        pre = (x - b_dec) @ W_enc + b_enc
        if arch == "topk":
            vals, idx = pre.topk(k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
            loss = ((f @ W_dec + b_dec - x) ** 2).sum(-1).mean()
        else:
            f = pre.relu()
            loss = ((f @ W_dec + b_dec - x) ** 2).sum(-1).mean() + 5.0 * (f * W_dec.norm(dim=1)).sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="measured steps per configuration (best reported)")
    p.add_argument("--json", type=str, default=None)
    a = p.parse_args()
    d_sae = a.d_in * a.expansion
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(a.batch, a.d_in, generator=gen) for _ in range(2)]
    print(f"d_in {a.d_in}, d_sae {d_sae}, batch {a.batch}, k {a.k}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    rate = matmul_rate(a.batch, a.d_in, d_sae, max(a.steps, 3))
    results: dict[str, dict[str, float]] = {}
    for arch in ("relu", "topk"):
        for name, build in (("mechscope", ours), ("saelens", saelens), ("minimal", minimal)):
            seconds = timed(build(arch, a.d_in, d_sae, a.k, data), a.steps)
            results[f"{arch}/{name}"] = {"seconds_per_step": seconds, "tokens_per_s": a.batch / seconds}
            print(f"  {arch:5s} {name:10s} {a.batch / seconds:10.0f} tokens/s  ({seconds:.3f} s/step)", flush=True)
    # BatchTopK against TopK (goal: >= 0.8x TopK's tokens/s), timed interleaved so load skews both alike
    pair = {arch: ours(arch, a.d_in, d_sae, a.k, data) for arch in ("topk", "batchtopk")}
    best = {arch: float("inf") for arch in pair}
    for _ in range(a.steps):
        for arch, step in pair.items():
            best[arch] = min(best[arch], timed(step, 1))
    results["batchtopk/mechscope"] = {"seconds_per_step": best["batchtopk"], "tokens_per_s": a.batch / best["batchtopk"]}
    print(f"  batchtopk mechscope {a.batch / best['batchtopk']:10.0f} tokens/s  ({best['batchtopk']:.3f} s/step), "
          f"TopK interleaved {a.batch / best['topk']:.0f} tokens/s", flush=True)
    rate = max(rate, matmul_rate(a.batch, a.d_in, d_sae, max(a.steps, 3)))  # measured before and after
    print(f"float32 matmul rate (training-step shapes, best of before/after): {rate / 1e9:.1f} GFLOP/s")
    dense_flops = 5 * 2 * a.batch * a.d_in * d_sae
    summary = {
        "relu_fraction_of_matmul_rate": dense_flops / results["relu/mechscope"]["seconds_per_step"] / rate,
        "relu_vs_saelens": results["relu/saelens"]["seconds_per_step"] / results["relu/mechscope"]["seconds_per_step"],
        "relu_vs_minimal": results["relu/minimal"]["seconds_per_step"] / results["relu/mechscope"]["seconds_per_step"],
        "topk_vs_saelens": results["topk/saelens"]["seconds_per_step"] / results["topk/mechscope"]["seconds_per_step"],
        "topk_vs_minimal": results["topk/minimal"]["seconds_per_step"] / results["topk/mechscope"]["seconds_per_step"],
        "batchtopk_throughput_vs_topk": best["topk"] / best["batchtopk"],
    }
    for key, value in summary.items():
        print(f"{key}: {value:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"settings": vars(a), "matmul_flops_per_s": rate, "results": results, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
