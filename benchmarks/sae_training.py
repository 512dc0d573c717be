"""SAE training throughput: mechscope vs SAELens vs a minimal PyTorch loop, side by side in one run.

Measures tokens per second of full optimizer steps (forward, backward, gradient clipping, Adam)
on stored activations (random data of the right shape) for ReLU-L1, TopK and BatchTopK, and the float32
matmul rate of this machine for the shapes of one training step, so that the dense ReLU-L1 step
can be read as a fraction of the matmul rate:

    fraction = (5 * 2 * batch * d_in * d_sae / step_seconds) / matmul_flops_per_second

(a dense step is 5 matmuls of `batch x d_in x d_sae`: encoder and decoder forward, the decoder's
weight and input gradients, the encoder's weight gradient).

BatchTopK is timed with its batch-wide selection (`per_token_warmup=0`), against TopK with the same `k`: `batchtopk_vs_topk` is BatchTopK's tokens per second
over TopK's (goal >= 0.8).

Usage:
    python benchmarks/sae_training.py [--quick] [--d-in 576] [--expansion 16] [--batch 4096] [--k 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from common import add_arguments, goal, print_table, setup, time_interleaved, write_result
from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.trainer import Trainer, TrainerConfig


def ours(arch: str, d_in: int, d_sae: int, k: int, data: list[torch.Tensor]) -> Callable[[], None]:
    extra = {"k": k} if arch in ("topk", "batchtopk") else {"l1_coefficient": 5.0, "decoder_norm": "weighted"}
    if arch == "batchtopk":
        extra["per_token_warmup"] = 0.0  # time the batch-wide selection, not the warm-up's per-token one
    sae = make_dictionary(arch, d_in=d_in, d_sae=d_sae, seed=0, **extra)
    trainer = Trainer(sae, TrainerConfig(total_steps=10**6, lr=1e-4, progress=False, log_every=10**6,
                                         dead_window_tokens=10**9))
    it = iter(range(10**9))
    return lambda: trainer.train_step(data[next(it) % len(data)])


def saelens(arch: str, d_in: int, d_sae: int, k: int, data: list[torch.Tensor]) -> Callable[[], None]:
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    coefficients: dict[str, float] = {}
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    elif arch == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
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
    add_arguments(p, repeats=5)
    a = p.parse_args()
    repeats = setup(a)
    if a.quick:
        a.d_in, a.expansion, a.batch = 64, 4, 256
    d_sae = a.d_in * a.expansion
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(a.batch, a.d_in, generator=gen) for _ in range(2)]
    print(f"d_in {a.d_in}, d_sae {d_sae}, batch {a.batch}, k {a.k}, threads {torch.get_num_threads()}")
    x, w_enc = torch.randn(a.batch, a.d_in), torch.randn(a.d_in, d_sae)
    f, w_dec, g_out = torch.randn(a.batch, d_sae), torch.randn(d_sae, a.d_in), torch.randn(a.batch, a.d_in)

    def five_matmuls() -> None:  # the 5 float32 matmuls of a dense training step (same shapes and layouts)
        x @ w_enc
        f @ w_dec
        f.t() @ g_out
        g_out @ w_dec.t()
        x.t() @ f

    candidates = {"5 dense matmuls": five_matmuls}
    for arch in ("relu", "topk"):
        for name, build in (("mechscope", ours), ("saelens", saelens), ("minimal", minimal)):
            candidates[f"{arch}/{name}"] = build(arch, a.d_in, d_sae, a.k, data)
    for name, build in (("mechscope", ours), ("saelens", saelens)):
        candidates[f"batchtopk/{name}"] = build("batchtopk", a.d_in, d_sae, a.k, data)
    times = time_interleaved(candidates, repeats=repeats)
    print_table(f"SAE training step, {repeats} interleaved repeats", times, "relu/mechscope")
    dense_flops = 5 * 2 * a.batch * a.d_in * d_sae
    rate = dense_flops / times["5 dense matmuls"]["median_s"]

    def s(name: str) -> float:
        return times[name]["median_s"]

    summary = {"relu_fraction_of_matmul_rate": dense_flops / s("relu/mechscope") / rate,
               "relu_vs_saelens": s("relu/saelens") / s("relu/mechscope"),
               "relu_vs_minimal": s("relu/minimal") / s("relu/mechscope"),
               "topk_vs_saelens": s("topk/saelens") / s("topk/mechscope"),
               "topk_vs_minimal": s("topk/minimal") / s("topk/mechscope"),
               "batchtopk_vs_topk": s("topk/mechscope") / s("batchtopk/mechscope"),
               "batchtopk_vs_saelens": s("batchtopk/saelens") / s("batchtopk/mechscope")}
    rows = [[arch, *(f"{a.batch / s(f'{arch}/{name}'):,.0f}" if f"{arch}/{name}" in times else "-"
                     for name in ("mechscope", "saelens", "minimal"))]
            for arch in ("relu", "topk", "batchtopk")]
    write_result("sae_training", a, None, {
        "settings": {"d_in": a.d_in, "d_sae": d_sae, "batch": a.batch, "k": a.k}, "timings": times,
        "matmul_flops_per_s": rate, "summary": summary,
        "goals": [goal("TopK: SAELens step / mechscope step", summary["topk_vs_saelens"], 1.0, ">="),
                  goal("ReLU-L1: SAELens step / mechscope step", summary["relu_vs_saelens"], 1.0, ">="),
                  goal("BatchTopK tokens/s / TopK tokens/s (mechscope)", summary["batchtopk_vs_topk"], 0.8, ">=")],
        "table": {"columns": ["architecture", "mechscope tokens/s", "SAELens tokens/s", "minimal PyTorch tokens/s"],
                  "rows": rows,
                  "caption": f"d_in {a.d_in}, {d_sae} latents, batch {a.batch}, k {a.k}; median of {repeats} interleaved "
                             f"repeats, {torch.get_num_threads()} threads. The dense ReLU-L1 step runs at "
                             f"{summary['relu_fraction_of_matmul_rate']:.2f} of this machine's float32 matmul rate "
                             f"({rate / 1e9:.1f} GFLOP/s, measured in the same run)."}})


if __name__ == "__main__":
    main()
