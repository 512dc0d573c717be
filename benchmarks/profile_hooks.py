"""Where the cost of caching every hook point goes: a profile, in fractions of CPU time.

Profiles `run_with_cache` (every hook point) and the plain HF forward pass on the same
batch, with torch's profiler, and prints what share of the cached run each part takes
(attention scores and patterns, per-head results, norm pieces, the model's own forward).
Fractions, not wall-clock times, so a shared machine skews them little. The timings
that decide the 1.10x goal are `benchmarks/forward_overhead.py`'s.

Run: `python benchmarks/profile_hooks.py [--batch 8 --pos 64 --model gemma3-270m]`.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import mechscope
from mechscope.core import attention, runner, sites

# mechscope functions whose time is reported on its own line (wrapped in record_function).
PARTS = {
    "attention scores + pattern": (attention, "attention_scores", "pattern_from_scores"),
    "norm scale + normalized": (runner, "scale_of", "normalized_of"),
    "hook functions (mechscope)": (runner.HookRun, "_pre_hook", "_post_hook"),
}


def _labelled(label: str, fn):
    def wrapped(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)
    return wrapped


def _instrument() -> None:
    for label, (module, *fns) in PARTS.items():
        for name in fns:
            setattr(module, name, _labelled(label, getattr(module, name)))
    reader = sites._result_reader

    def result_reader(*args, **kwargs):
        return _labelled("per-head results (einsum)", reader(*args, **kwargs))

    sites._result_reader = result_reader


def _cpu_ms(prof, labels: list[str]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key in labels:
            totals[event.key] += event.cpu_time_total / 1e3
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pos", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    _instrument()
    model = mechscope.load_model(args.model) if args.model else mechscope.load_model()
    ids = torch.randint(100, model.cfg.d_vocab, (args.batch, args.pos), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.run_with_cache(ids)  # warm-up
        model.hf_model(input_ids=ids, use_cache=False)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeats):
                with record_function("plain HF forward"):
                    model.hf_model(input_ids=ids, use_cache=False)
                with record_function("run_with_cache, every hook"):
                    model.run_with_cache(ids)
    labels = ["plain HF forward", "run_with_cache, every hook", "per-head results (einsum)", *PARTS]
    ms = _cpu_ms(prof, labels)
    total = ms["run_with_cache, every hook"]
    print(f"model {model.cfg.name}, batch {args.batch} x {args.pos} tokens, {args.repeats} repeats (CPU time)")
    print(f"cached run / plain forward: {total / ms['plain HF forward']:.3f} "
          f"(CPU time; per-head results are computed when read, see `cache[...]` below)")
    for label in labels[2:]:
        print(f"  {label:<32} {100 * ms[label] / total:5.1f}% of the cached run")
    print("top operators:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
