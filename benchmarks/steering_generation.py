"""Generation speed with steering against plain Hugging Face `generate`, side by side in one run.

Greedy decoding with the KV cache, the same prompts and the same number of new tokens for every
candidate (no early stop), float32 on the default model. Candidates: HF `generate`; mechscope
`generate` with no intervention; with `Add` of a vector at one residual site (every position);
with `Clamp` of one latent of a TopK SAE (random weights, the default SAE's shape: 9,216 latents,
k=32) at the same site. Reported as tokens per second and as a ratio to HF (goal: steering at
least 0.9x). Run: `python benchmarks/steering_generation.py [--quick]`.
"""

from __future__ import annotations

import argparse

import torch

from common import add_arguments, goal, load, print_table, setup, time_interleaved, write_result
from mechscope.dictionaries import make_dictionary
from mechscope.features.steering import Add, Clamp, generate
from mechscope.features.steering.generate import left_pad

PROMPTS = ["The Eiffel Tower is in the city of", "I went to the market and bought", "Once upon a time, there was a",
           "The best way to learn a language is", "In the morning, the weather was", "My favourite food is",
           "The scientist opened the box and found", "When the train arrived, everyone"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="prompts per call (at most 8)")
    parser.add_argument("--new-tokens", type=int, default=32)
    add_arguments(parser, repeats=5)
    args = parser.parse_args()
    repeats = setup(args)
    batch, new = (2, 4) if args.quick else (args.batch, args.new_tokens)
    model = load(quick=args.quick)
    prompts = PROMPTS[:batch]
    layer = model.cfg.n_layers // 2
    site = f"blocks.{layer}.hook_resid_post"
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    sae = make_dictionary("topk", d_in=model.cfg.d_model, d_sae=16 * model.cfg.d_model, k=32, hook_name=site, seed=0)
    ids, mask, _ = left_pad(model, prompts)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else model.tokenizer.eos_token_id

    def hf_generate() -> object:
        return model.hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                       do_sample=False, pad_token_id=pad)

    def ours(interventions: list) -> object:
        return generate(model, prompts, interventions, max_new_tokens=new, stop_at_eos=False, batch_size=batch)

    with torch.no_grad():
        same = torch.equal(hf_generate()[:, ids.shape[1]:], ours([]).tokens)
        times = time_interleaved({
            "HF generate": hf_generate,
            "mechscope generate, no intervention": lambda: ours([]),
            f"mechscope generate, Add at {site}": lambda: ours([Add(vector, 4.0, hook_name=site)]),
            f"mechscope generate, Clamp one latent of a {sae.cfg.d_sae}-latent TopK SAE": lambda: ours(
                [Clamp(sae, 123, 10.0)]),
        }, repeats=repeats)
    print_table(f"greedy generation, {batch} prompts x {new} new tokens", times, "HF generate")
    tokens = batch * new
    rate = {name: tokens / t["median_s"] for name, t in times.items()}
    hf_rate = rate["HF generate"]
    ratios = {name: r / hf_rate for name, r in rate.items()}
    rows = [[name, f"{r:.1f}", f"{ratios[name]:.2f}x"] for name, r in rate.items()]
    add_ratio = ratios[f"mechscope generate, Add at {site}"]
    print(f"unsteered tokens equal HF generate's: {same}")
    write_result("steering_generation", args, model, {
        "settings": {"batch": batch, "new_tokens": new, "site": site, "greedy": True, "kv_cache": True},
        "timings": times, "tokens_per_s": rate, "ratio_to_hf": ratios, "unsteered_tokens_equal_hf": same,
        "goals": [goal("Add steering vs HF generate (tokens/s)", add_ratio, 0.9, ">=")],
        "table": {"columns": ["what", "tokens/s", "vs HF generate"], "rows": rows,
                  "caption": f"Greedy generation with the KV cache, {batch} prompts x {new} new tokens."},
    })


if __name__ == "__main__":
    main()
