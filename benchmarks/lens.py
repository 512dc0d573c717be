"""Logit lens over all layers and positions of a 64-token prompt on the default model, side by side.

Three ways to get the lens log-probabilities [n_layers + 1, 64, d_vocab] (resid_pre of every
block plus the final residual), timed in one run, interleaved:

- mechscope: `iter_lens_logits` (one cached forward pass, each row unembedded in turn);
- hand-written: plain HF `output_hidden_states=True`, then `lm_head(norm(h))` per layer;
- TransformerLens: `cache.accumulated_resid(apply_ln=True)` then `unembed`, on a HookedTransformer
  built from the same weights (no weight processing).

Also checks that the three agree (max abs difference of log-probabilities). Every time is a
ratio to the hand-written version. Run: `python benchmarks/lens.py`.
"""

from __future__ import annotations

import argparse

import torch

import mechscope
from anchors import hooked_transformer, optional_anchor
from common import add_arguments, cell, print_table, setup, time_interleaved, write_result
from mechscope.methods.lens import iter_lens_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pos", type=int, default=64)
    add_arguments(parser, repeats=5)
    args = parser.parse_args()
    repeats = setup(args)
    if args.quick:
        args.pos = 8
    model = mechscope.load_model(dtype=torch.float32, device="cpu")
    ids = torch.randint(100, model.cfg.d_vocab, (1, args.pos))
    hf = model.hf_model

    def ours() -> torch.Tensor:
        return torch.stack([torch.log_softmax(lg[0], -1) for _, lg, _ in iter_lens_logits(model, ids)])

    def hand() -> torch.Tensor:
        hidden = hf(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        # hidden_states[-1] is already normed by HF; the others are raw residuals (resid_pre of each block)
        rows = [hf.lm_head(hf.model.norm(h)) for h in hidden[:-1]]
        rows.append(hf.lm_head(hidden[-1]))
        return torch.stack([torch.log_softmax(r[0], -1) for r in rows])

    candidates = {"hand-written (HF hidden states)": hand, "mechscope iter_lens_logits": ours}
    tl, why = optional_anchor(hooked_transformer, model)
    if tl is not None:
        def transformer_lens() -> torch.Tensor:
            _, cache = tl.run_with_cache(ids, names_filter=lambda n: "resid" in n or "ln_final" in n)
            stack = cache.accumulated_resid(apply_ln=True)  # [n_layers + 1, batch, pos, d_model]
            return torch.log_softmax(tl.unembed(stack[:, 0]), -1)

        candidates["TransformerLens accumulated_resid + unembed"] = transformer_lens
    else:
        print(f"TransformerLens skipped: {why}")
    diffs = {}
    with torch.inference_mode():
        reference = hand()
        for name, fn in candidates.items():
            diffs[name] = (fn() - reference).abs().max().item()
            print(f"{name:<46} max |log p - hand-written| = {diffs[name]:.2e}")
        times = time_interleaved(candidates, repeats=repeats)
    print_table(f"logit lens, {model.cfg.n_layers + 1} rows x {args.pos} positions x {model.cfg.d_vocab} tokens, "
                f"CPU float32", times, baseline="hand-written (HF hidden states)")

    base = times["hand-written (HF hidden states)"]["median_s"]
    rows = [[name, cell(t["median_s"]), cell(t["median_s"] / base), f"{diffs[name]:.1e}"] for name, t in times.items()]
    write_result("lens", args, model, {
        "settings": {"pos": args.pos}, "timings": times, "max_abs_diff_logprob": diffs, "goals": [],
        "anchors_failed": {} if tl is not None else {"TransformerLens": why},
        "table": {"columns": ["what", "median s", "ratio", "max abs diff of log p"], "rows": rows,
                  "caption": f"logit lens, {model.cfg.n_layers + 1} rows x {args.pos} positions x full vocabulary, "
                             f"median of {repeats} interleaved repeats"}})


if __name__ == "__main__":
    main()
