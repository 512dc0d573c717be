"""Cost of caching activations, side by side in one run, on the default model.

Batch 8 x 64 tokens, float32, CPU. Every time is a ratio to the plain Hugging Face forward
pass. TransformerLens is built from the same weights (its HookedTransformer, no weight
processing); nnsight wraps a copy of the same HF model. Run: `python benchmarks/forward_overhead.py`.
"""

from __future__ import annotations

import argparse

import torch

import mechscope
from anchors import hooked_transformer, nnsight_model, optional_anchor
from common import add_arguments, cell, goal, print_table, setup, time_interleaved, write_result
from mechscope.core.attention import using_implementation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pos", type=int, default=64)
    add_arguments(parser, repeats=7)
    args = parser.parse_args()
    repeats = setup(args)
    if args.quick:
        args.batch, args.pos = 1, 8
    model = mechscope.load_model(dtype=torch.float32, device="cpu")
    ids = torch.randint(100, model.cfg.d_vocab, (args.batch, args.pos))
    hf = model.hf_model
    resid = [n for n in model.hook_names() if n.endswith("hook_resid_post")]
    no_pattern = [n for n in model.hook_names() if not n.endswith("hook_pattern")]

    def hf_eager() -> object:
        with using_implementation(hf, "eager"):
            return hf(input_ids=ids, use_cache=False)

    candidates = {
        "HF forward (sdpa)": lambda: hf(input_ids=ids, use_cache=False),
        "HF forward (eager attention)": hf_eager,
        "mechscope run_with_cache, residual stream only": lambda: model.run_with_cache(ids, names=resid),
        "mechscope run_with_cache, every hook but patterns": lambda: model.run_with_cache(ids, names=no_pattern),
        "mechscope run_with_cache, every hook point": lambda: model.run_with_cache(ids),
    }
    tl, why_not_tl = optional_anchor(hooked_transformer, model)
    if tl is not None:
        candidates["TransformerLens run_with_cache, residual only"] = lambda: tl.run_with_cache(
            ids, names_filter=lambda n: n.endswith("hook_resid_post"))
        candidates["TransformerLens run_with_cache, every hook"] = lambda: tl.run_with_cache(ids)
    nn_model, why_not_nn = optional_anchor(nnsight_model, model)
    if nn_model is not None:
        layers = nn_model.model.layers

        def nnsight_resid() -> object:
            saved: list[object] = []  # nnsight re-runs the block; results must land in an outer object
            with nn_model.trace(ids):
                for layer in layers:
                    saved.append(layer.output.save())
            return saved

        candidates["nnsight trace, residual only"] = nnsight_resid
    times = time_interleaved(candidates, repeats=repeats)
    print_table(f"forward overhead, {model.cfg.name}, batch {args.batch} x {args.pos} tokens, float32, "
                f"{torch.get_num_threads()} threads", times, "HF forward (sdpa)")
    if tl is None:
        print(f"TransformerLens: {why_not_tl}")
    if nn_model is None:
        print(f"nnsight: {why_not_nn}")
    # The cached values themselves must agree with HF before any time means anything.
    _, cache = model.run_with_cache(ids, names=resid)
    hidden = hf(input_ids=ids, output_hidden_states=True).hidden_states
    diff = max((cache[resid[i]] - hidden[i + 1]).abs().max().item() for i in range(model.cfg.n_layers - 1))
    print(f"\nmax |mechscope resid_post - HF hidden_states| = {diff:.3g}")
    if tl is not None:
        _, tl_cache = tl.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
        diff = max((cache[n] - tl_cache[n]).abs().max().item() / max(1.0, tl_cache[n].abs().max().item())
                   for n in resid)
        print(f"max relative |mechscope - TransformerLens| on resid_post = {diff:.3g}")
    base = times["HF forward (sdpa)"]["median_s"]
    every = times["mechscope run_with_cache, every hook point"]["median_s"] / base
    rows = [[name, cell(t["median_s"], 4), cell(t["spread"]), cell(t["median_s"] / base)] for name, t in times.items()]
    write_result("forward_overhead", args, model, {
        "settings": {"batch": args.batch, "pos": args.pos, "dtype": "float32"}, "timings": times,
        "goals": [goal("cache every hook point / HF forward", every, 1.10, "<=")],
        "anchors_failed": {k: v for k, v in (("TransformerLens", why_not_tl), ("nnsight", why_not_nn)) if v},
        "table": {"columns": ["what", "median s", "spread", "x HF forward"], "rows": rows,
                  "caption": f"{model.cfg.name}, batch {args.batch} x {args.pos} tokens, float32, median of {repeats} "
                             f"interleaved repeats, {torch.get_num_threads()} threads"}})


if __name__ == "__main__":
    main()
