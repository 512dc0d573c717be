"""Benchmark: activation-patching sweeps and attribution patching on the default model, with the anchors.

The Eiffel Tower / Colosseum pair (9 tokens each), metric = logit difference ' Paris' - ' Rome'
at the last token, scores = normalized recovery. Timed interleaved in one run:

- mechscope `patch_sweep` (resid_pre by layer x position) and `patch_heads` (z by layer x head),
  and attribution patching of every site (`attribution_every_site`);
- the floor of each sweep: one plain HF forward (logits at the last position only, the one
  the metric reads) over a batch holding as many layer x token
  units as the sweep strictly needs (`engine.floor_work`: the suffix from each patched
  position, from the patched layer up);
- the plain HF forward, and forward + backward (to the input embeddings, no weight gradients);
- a naive loop, one `run_with_hooks` forward per cell (`patch_loop`);
- TransformerLens `HookedTransformer` and `TransformerBridge` patching
  (`get_act_patch_resid_pre`, `get_act_patch_attn_head_out_all_pos`), built from the same weights.

The scores are compared once, outside the timings. Results: benchmarks/results/patching.json.

Usage:
    python benchmarks/patching.py [--quick] [--repeats 3] [--skip-anchors] [--skip-naive] [--png PATH]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from anchors import (
    floor_forward,
    floor_rows,
    hf_forward,
    hf_forward_backward,
    hooked_transformer,
    tl_recovery,
    transformer_bridge,
)
from common import add_arguments, cell, goal, load, print_table, setup, time_interleaved, write_result
from mechscope.methods.patching import PairRuns, patch_heads, patch_loop, patch_sweep
from mechscope.methods.patching.attribution import attribution_every_site

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Colosseum is in the city of"
ANSWER, WRONG = " Paris", " Rome"
KW = dict(answer=ANSWER, wrong=WRONG)
SWEEPS = {"resid_pre": ("resid_pre", ("layer", "pos")), "z": ("z", ("layer", "head"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, repeats=3)
    parser.add_argument("--skip-anchors", action="store_true", help="skip TransformerLens")
    parser.add_argument("--skip-naive", action="store_true", help="skip the one-forward-per-cell loop")
    parser.add_argument("--png", default=None, help="also write the resid_pre heatmap here")
    args = parser.parse_args()
    repeats = setup(args)
    model = load(quick=args.quick)
    clean_ids, corrupt_ids = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    print(f"model {model.cfg.name}, {model.cfg.n_layers} layers, threads {torch.get_num_threads()}, "
          f"tokens {model.to_str_tokens(CLEAN)}")
    resid = patch_sweep(model, CLEAN, CORRUPT, site="resid_pre", by="layer,pos", **KW)
    metric = PairRuns(model, CLEAN, CORRUPT, **KW).metric
    floors = {name: floor_rows(model, CLEAN, CORRUPT, site, by, **KW) for name, (site, by) in SWEEPS.items()}
    candidates: dict[str, Callable[[], object]] = {
        "HF forward": hf_forward(model, clean_ids),
        "HF forward + backward": hf_forward_backward(model, clean_ids, metric),
        "floor resid_pre": floor_forward(model, corrupt_ids.repeat(floors["resid_pre"][1], 1), floors["resid_pre"][2]),
        "floor z": floor_forward(model, corrupt_ids.repeat(floors["z"][1], 1), floors["z"][2]),
        "mechscope resid_pre": lambda: patch_sweep(model, CLEAN, CORRUPT, site="resid_pre", by="layer,pos", **KW),
        "mechscope z": lambda: patch_heads(model, CLEAN, CORRUPT, by="layer,head", **KW),
        "mechscope attribution": lambda: attribution_every_site(model, CLEAN, CORRUPT, **KW),
    }
    scores: dict[str, torch.Tensor] = {"mechscope resid_pre": resid.scores,
                                       "mechscope z": patch_heads(model, CLEAN, CORRUPT, by="layer,head", **KW).scores}
    if not args.skip_naive:
        for name, (site, by) in SWEEPS.items():
            candidates[f"naive {name}"] = loop = (lambda site=site, by=by: patch_loop(
                model, CLEAN, CORRUPT, site=site, by=by, **KW))
            scores[f"naive {name}"] = loop()
    anchors_failed: dict[str, str] = {}
    if not args.skip_anchors:
        from transformer_lens import patching

        for anchor, build in (("HookedTransformer", hooked_transformer), ("TransformerBridge", transformer_bridge)):
            try:
                tl = build(model)
                cache, recovery = tl_recovery(tl, clean_ids, corrupt_ids, metric)

                def resid_fn(tl: Any = tl, cache: Any = cache, recovery: Any = recovery) -> torch.Tensor:
                    with torch.no_grad():
                        return patching.get_act_patch_resid_pre(tl, corrupt_ids, cache, recovery)

                def heads_fn(tl: Any = tl, cache: Any = cache, recovery: Any = recovery) -> torch.Tensor:
                    with torch.no_grad():
                        return patching.get_act_patch_attn_head_out_all_pos(tl, corrupt_ids, cache, recovery)

                scores[f"{anchor} resid_pre"], scores[f"{anchor} z"] = resid_fn().float(), heads_fn().float()
                candidates[f"{anchor} resid_pre"], candidates[f"{anchor} z"] = resid_fn, heads_fn
            except Exception as err:  # noqa: BLE001 - record the reason, go on with the other anchor
                anchors_failed[anchor] = f"{type(err).__name__}: {str(err)[:300]}"
                print(f"{anchor}: could not run ({anchors_failed[anchor]})")
    # The naive loops and the anchors already ran once for their scores: that run is their warm-up.
    already_run = [name for name in candidates if name in scores and not name.startswith("mechscope")]
    times = time_interleaved(candidates, repeats=repeats, warm=already_run)
    print_table(f"patching, {model.cfg.name}, {repeats} interleaved repeats", times, "HF forward")
    if args.png:
        resid.plot(args.png, title=f"{model.cfg.name}: clean resid_pre patched into {CORRUPT!r}\nrecovery of logit "
                                   f"diff {ANSWER!r} - {WRONG!r} (clean {resid.clean:.2f}, corrupt {resid.corrupt:.2f})")

    def median(name: str) -> float | None:
        return times[name]["median_s"] if name in times else None

    def ratio(a: str, b: str) -> float | None:
        x, y = median(a), median(b)
        return None if x is None or y is None else x / y

    def diff(a: str, b: str) -> float | None:
        if a not in scores or b not in scores:
            return None
        return float((scores[a] - scores[b]).abs().max())

    goals, rows = [], []
    for name in SWEEPS:
        ours = f"mechscope {name}"
        goals += [goal(f"{name}: HookedTransformer / mechscope", ratio(f"HookedTransformer {name}", ours), 30, ">="),
                  goal(f"{name}: TransformerBridge / mechscope", ratio(f"TransformerBridge {name}", ours), 10, ">="),
                  goal(f"{name}: mechscope / floor", ratio(ours, f"floor {name}"), 1.5, "<="),
                  goal(f"{name}: max |mechscope - naive loop|", diff(ours, f"naive {name}"), 1e-5, "<=", "recovery"),
                  goal(f"{name}: max |mechscope - HookedTransformer|", diff(ours, f"HookedTransformer {name}"), 1e-4,
                       "<=", "recovery")]
        label = "resid_pre, layer x pos" if name == "resid_pre" else "z, layer x head"
        rows.append([label, str(scores[ours].numel()), cell(median(ours)),
                     f"{cell(median(f'floor {name}'))} ({cell(ratio(ours, f'floor {name}'))}x)",
                     *(f"{cell(median(f'{a} {name}'), 1)} ({cell(ratio(f'{a} {name}', ours), 1)}x)"
                       for a in ("naive", "HookedTransformer", "TransformerBridge")),
                     f"{diff(ours, f'naive {name}') or 0:.1e} / {diff(ours, f'HookedTransformer {name}') or 0:.1e}"])
    attribution = ratio("mechscope attribution", "HF forward + backward")
    goals.append(goal("attribution every site / (forward + backward)", attribution, 3, "<="))
    rows.append(["attribution patching, every site", "-", cell(median("mechscope attribution")),
                 f"{cell(median('HF forward + backward'))} ({cell(attribution)}x fwd+bwd)", "-", "-", "-", "-"])
    table = {"columns": ["sweep", "cells", "mechscope s", "floor s (ratio)", "naive loop s (x)",
                         "HookedTransformer s (x)", "TransformerBridge s (x)", "max diff loop / TL"],
             "rows": rows,
             "caption": f"{model.cfg.name}, Eiffel Tower / Colosseum ({resid.shape[1]} tokens), median of {repeats} "
                        f"interleaved repeats, {torch.get_num_threads()} threads. (x) = anchor time / mechscope time."}
    write_result("patching", args, model, {
        "settings": {"clean": CLEAN, "corrupt": CORRUPT, "answer": ANSWER, "wrong": WRONG},
        "timings": times, "goals": goals, "table": table, "anchors_failed": anchors_failed,
        "floor_work": {name: {"layer_tokens": w, "forward_rows": r, "logits_rows": k} for name, (w, r, k) in floors.items()},
        "max_abs_diff": {f"{a} vs {b}": diff(a, b) for a in scores for b in scores if a < b},
        "resid_pre_scores": resid.scores.tolist(), "labels": resid.labels,
    })


if __name__ == "__main__":
    main()
