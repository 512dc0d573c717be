"""Lower precision: bfloat16 and float16 against float32, for caching, patching and SAE training.

On the default model, each dtype where the device runs it:

- accuracy against float32: logits of the Eiffel Tower prompt and of 4 random 64-token
  prompts (max and mean |diff|, top-1 agreement, KL(float32 || dtype)); every cached
  residual (max |diff| relative to the float32 activation's largest magnitude); the
  resid_pre layer x position patching scores (max |diff| of normalized recovery) and
  attribution patching scores;
- speed, interleaved across dtypes: the plain HF forward, `run_with_cache` of every hook,
  the resid_pre sweep;
- SAE training: a TopK SAE on synthetic activations, float32 against `torch.autocast` at the
  lower dtype around each `Trainer.train_step` (parameters and optimizer stay float32):
  seconds per step and the final loss.

A dtype the device cannot run is recorded with the error, not skipped silently. Writes
benchmarks/results/precision.json.

Usage:
    python benchmarks/precision.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from common import add_arguments, cell, goal, load, print_table, setup, time_interleaved, write_result
from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.trainer import Trainer, TrainerConfig
from mechscope.methods.patching import patch_sweep
from mechscope.methods.patching.attribution import attribution_sweep

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Colosseum is in the city of"
KW = dict(answer=" Paris", wrong=" Rome")
LOWER = (torch.bfloat16, torch.float16)


def name_of(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def accuracy(reference: Any, model: Any, prompts: torch.Tensor) -> dict[str, float]:
    """How far `model` (a lower dtype) lies from `reference` (float32) on logits, cache and patching scores."""
    with torch.no_grad():
        ref_logits = reference(prompts).float()
        logits = model(prompts).float()
        _, ref_cache = reference.run_with_cache(prompts, names=lambda n: "resid" in n)
        _, cache = model.run_with_cache(prompts, names=lambda n: "resid" in n)
    kl = torch.nn.functional.kl_div(logits.log_softmax(-1), ref_logits.log_softmax(-1), log_target=True,
                                    reduction="none").sum(-1)
    cache_diff = max(float((cache[n].float() - ref_cache[n]).abs().max() / ref_cache[n].abs().max())
                     for n in ref_cache)
    scores = {}
    for label, fn in (("resid_pre sweep", lambda m: patch_sweep(m, CLEAN, CORRUPT, by="layer,pos", **KW)),
                      ("attribution", lambda m: attribution_sweep(m, CLEAN, CORRUPT, by="layer,pos", **KW))):
        ref, low = fn(reference), fn(model)
        scores[label] = float((low.scores - ref.scores).abs().max())
    return {"logits_max_abs_diff": float((logits - ref_logits).abs().max()),
            "logits_mean_abs_diff": float((logits - ref_logits).abs().mean()),
            "top1_agreement": float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
            "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "cache_max_rel_diff": cache_diff,
            "patching_scores_max_abs_diff": scores["resid_pre sweep"],
            "attribution_scores_max_abs_diff": scores["attribution"]}


def sae_training(arch: str, dtype: torch.dtype | None, d_in: int, batch: int, steps: int) -> tuple[Callable[[], None],
                                                                                      Callable[[], float]]:
    """(one training step, final loss) of an SAE (`relu` or `topk`) on fixed synthetic data; `dtype` None = float32."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(4 * d_in, d_in, generator=g)
    data = [(torch.rand(batch, 4 * d_in, generator=g) < 0.02).float() @ basis for _ in range(4)]
    extra = {"k": 16} if arch == "topk" else {"l1_coefficient": 1.0}
    sae = make_dictionary(arch, d_in=d_in, d_sae=8 * d_in, seed=0, **extra)
    trainer = Trainer(sae, TrainerConfig(total_steps=steps, lr_warmup_steps=0, sparsity_warmup_steps=0,
                                         progress=False, log_every=10**9, dead_window_tokens=10**9))
    trainer._initialise([(x, None) for x in data])
    counter = iter(range(10**9))
    last: dict[str, float] = {}

    def step() -> None:
        x = data[next(counter) % len(data)]
        if dtype is None:
            last.update(trainer.train_step(x))
        else:
            with torch.autocast("cuda" if x.is_cuda else "cpu", dtype=dtype):
                last.update(trainer.train_step(x))

    def loss() -> float:
        """Fraction of variance unexplained on the first batch, in float32."""
        with torch.no_grad():
            x = data[0]
            error = (sae(x).reconstruction.float() - x).pow(2).sum()
            return float(error / (x - x.mean(0)).pow(2).sum())

    return step, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, repeats=3)
    parser.add_argument("--sae-steps", type=int, default=30)
    args = parser.parse_args()
    repeats = setup(args)
    reference = load(quick=args.quick)
    g = torch.Generator().manual_seed(0)
    prompts = torch.cat([torch.nn.functional.pad(reference.to_tokens(CLEAN), (0, 55), value=13),
                         torch.randint(1000, 30000, (4, 64), generator=g)])
    if args.quick:
        prompts = prompts[:2, :16]
    models: dict[str, Any] = {"float32": reference}
    failed: dict[str, str] = {}
    acc: dict[str, dict[str, float]] = {}
    for dtype in LOWER:
        try:
            model = load(quick=args.quick, dtype=dtype)
            acc[name_of(dtype)] = accuracy(reference, model, prompts)
            models[name_of(dtype)] = model
        except Exception as err:  # noqa: BLE001 - a dtype the device cannot run is reported, not hidden
            failed[name_of(dtype)] = f"{type(err).__name__}: {str(err)[:300]}"
            print(f"{name_of(dtype)}: {failed[name_of(dtype)]}")
    ids = prompts[:1, :9]
    candidates: dict[str, Callable[[], object]] = {}
    for label, model in models.items():
        def forward(model: Any = model) -> object:
            with torch.no_grad():
                return model.hf_model(input_ids=ids, use_cache=False)

        candidates[f"{label} HF forward"] = forward
        candidates[f"{label} run_with_cache"] = lambda model=model: model.run_with_cache(ids)
        candidates[f"{label} resid_pre sweep"] = lambda model=model: patch_sweep(model, CLEAN, CORRUPT,
                                                                                 by="layer,pos", **KW)
    d_in, sae_batch = (64, 256) if args.quick else (reference.cfg.d_model, 2048)
    losses: dict[str, Callable[[], float]] = {}
    for arch in ("relu", "topk"):
        for dtype in (None, *LOWER):
            label = "float32" if dtype is None else name_of(dtype)
            step, loss = sae_training(arch, dtype, d_in, sae_batch, args.sae_steps + repeats + 2)
            try:
                step()
            except Exception as err:  # noqa: BLE001 - e.g. sparse kernels without a bfloat16 version on CPU
                failed[f"{arch} SAE training {label}"] = f"{type(err).__name__}: {str(err)[:300]}"
                continue
            candidates[f"{label} {arch} SAE train step"], losses[f"{label} {arch}"] = step, loss
    times = time_interleaved(candidates, repeats=repeats)
    print_table(f"precision, {reference.cfg.name}, {repeats} interleaved repeats", times, "float32 HF forward")
    for step in (v for k, v in candidates.items() if k.endswith("SAE train step")):
        for _ in range(args.sae_steps):
            step()
    sae_loss = {label: fn() for label, fn in losses.items()}

    def speed(label: str, what: str) -> float | None:
        key = f"{label} {what}"
        return times["float32 " + what]["median_s"] / times[key]["median_s"] if key in times else None

    rows, goals = [], []
    for label in ("float32", *(name_of(d) for d in LOWER)):
        a = acc.get(label, {})
        rows.append([label, cell(a.get("logits_max_abs_diff"), 3) if a else "0",
                     cell(a.get("top1_agreement"), 3) if a else "1", f"{a.get('kl_mean', 0):.1e}",
                     f"{a.get('patching_scores_max_abs_diff', 0):.1e}",
                     *(cell(speed(label, w)) for w in ("HF forward", "run_with_cache", "resid_pre sweep",
                                                         "relu SAE train step", "topk SAE train step")),
                     cell(sae_loss.get(f"{label} relu"), 4), cell(sae_loss.get(f"{label} topk"), 4)])
        if a:
            goals.append(goal(f"{label}: resid_pre patching scores max |diff| from float32",
                              a["patching_scores_max_abs_diff"], 0.05, "<=", "recovery"))
    write_result("precision", args, reference, {
        "settings": {"prompts": list(prompts.shape), "sae_d_in": d_in, "sae_batch": sae_batch,
                     "sae_steps": args.sae_steps},
        "timings": times, "accuracy": acc, "sae_final_loss": sae_loss, "failed": failed, "goals": goals,
        "table": {"columns": ["dtype", "max abs logit diff", "top-1 agreement", "mean KL", "patching max diff",
                              "forward speed-up", "cache speed-up", "sweep speed-up", "ReLU SAE step speed-up",
                              "TopK SAE step speed-up", "ReLU SAE FVU", "TopK SAE FVU"],
                  "rows": rows,
                  "caption": f"{reference.cfg.name} on {reference.device}, against float32; speed-up = float32 time / "
                             f"dtype time, median of {repeats} interleaved repeats, {torch.get_num_threads()} threads. "
                             f"SAE training: torch.autocast around each step, FVU after {args.sae_steps} more steps; "
                             "- = the device has no kernel for it (see `failed`)."}})


if __name__ == "__main__":
    main()
