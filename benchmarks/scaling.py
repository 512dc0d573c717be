"""Scaling curves: how cost grows with prompt length and batch size, against the plain forward pass.

For each model (the default SmolLM2-135M and Gemma 3 270M), prompt length (8, 32, 128, 512
tokens) and batch size (1, 4), timed interleaved in one run:

- the plain HF forward (the unit), and forward + backward to the input embeddings;
- caching every hook point (`run_with_cache`);
- attribution patching of every site (`attribution_every_site`);
- SAE encoding of every position: the residual stream at the middle layer (run stopped
  there) through a TopK SAE of 16 x d_model latents, k = 32;
- a resid_pre layer x position sweep (`patch_sweep`) with its floor (one plain forward over
  as many layer x token units as the sweep strictly needs, unembedding the last position
  only, `anchors.floor_forward`), for prompts up to
  `--sweep-max-len` tokens (default 128; its cost grows with the square of the length) and
  batch 1; at 512 tokens a resid_pre sweep by layer (all positions) under a memory cap.

Peak memory of each operation is measured once, separately (resident set above its size
before the call on CPU; `max_memory_allocated` on CUDA). Writes benchmarks/results/scaling.json
and scaling.png.

Usage:
    python benchmarks/scaling.py [--quick] [--repeats 3] [--models default,gemma3-270m] [--lengths 8,32,128,512]
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from typing import Any

import torch

from anchors import floor_forward, floor_rows, hf_forward, hf_forward_backward
from common import (
    RESULTS,
    add_arguments,
    cell,
    goal,
    load,
    peak_memory_mb,
    setup,
    time_interleaved,
    write_result,
)
from mechscope.core.files import write_bytes
from mechscope.dictionaries import make_dictionary
from mechscope.methods.patching import patch_sweep
from mechscope.methods.patching.attribution import attribution_every_site
from mechscope.methods.patching.sweep import site_name

OPS = ("cache every hook", "attribution every site", "SAE encode every position", "resid_pre sweep")


def prompt_pair(model: Any, batch: int, n_pos: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Random clean ids, corrupted ids differing at a few early positions, and two answer tokens."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1000, min(model.cfg.d_vocab, 30000), (batch, n_pos), generator=g)
    corrupt = clean.clone()
    changed = list(range(1, min(4, n_pos - 1)))
    corrupt[:, changed] = torch.randint(1000, 30000, (batch, len(changed)), generator=g)
    return clean, corrupt, 1001, 1002


def candidates_for(model: Any, batch: int, n_pos: int, sweep: bool, memory_mb: float) -> dict[str, Callable[[], object]]:
    clean, corrupt, answer, wrong = prompt_pair(model, batch, n_pos)
    kw = dict(answer=answer, wrong=wrong)
    middle = model.cfg.n_layers // 2
    sae = make_dictionary("topk", d_in=model.cfg.d_model, d_sae=16 * model.cfg.d_model, k=32, seed=0)
    sae = sae.to(model.dtype)

    def logit_diff(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, answer] - logits[:, -1, wrong]

    def sae_encode() -> object:
        with torch.no_grad():
            _, cache = model.run_with_cache(clean, names=[site_name("resid_pre", middle)], stop_at_layer=middle + 1)
            return sae.encode(cache[site_name("resid_pre", middle)].reshape(-1, model.cfg.d_model))

    out = {"HF forward": hf_forward(model, clean), "HF forward + backward": hf_forward_backward(model, clean, logit_diff),
           "cache every hook": lambda: model.run_with_cache(clean),
           "attribution every site": lambda: attribution_every_site(model, clean, corrupt, **kw),
           "SAE encode every position": sae_encode}
    if sweep:
        out["resid_pre sweep"] = lambda: patch_sweep(model, clean, corrupt, by="layer,pos", memory_mb=memory_mb, **kw)
        _, rows, n_logits = floor_rows(model, clean, corrupt, "resid_pre", ("layer", "pos"), **kw)
        out["resid_pre sweep floor"] = floor_forward(model, corrupt[:1].repeat(rows, 1), n_logits)
    return out


def long_prompt_goal(model: Any, n_pos: int, cap_mb: float) -> dict[str, Any]:
    """A resid_pre sweep by layer over a long prompt: its peak memory against the cap (25% slack for the estimate)."""
    clean, corrupt, answer, wrong = prompt_pair(model, 1, n_pos)
    peak = peak_memory_mb(lambda: patch_sweep(model, clean, corrupt, answer=answer, wrong=wrong, by="layer",
                                              memory_mb=cap_mb), str(model.device))
    return goal(f"{model.cfg.name} {n_pos}-token resid_pre sweep by layer: peak MiB within --max-memory {cap_mb:g}",
                peak, cap_mb * 1.25, "<=", "MiB")


def plot(points: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({p["model"] for p in points})
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for column, name in enumerate(models):
        for op in (*OPS, "HF forward + backward"):
            for batch in sorted({p["batch"] for p in points}):
                rows = [p for p in points if p["model"] == name and p["batch"] == batch and op in p["ratio"]]
                if not rows:
                    continue
                label = f"{op} (batch {batch})"
                lengths = [p["n_pos"] for p in rows]
                axes[0][column].plot(lengths, [p["ratio"][op] for p in rows], marker="o", label=label)
                axes[1][column].plot(lengths, [p["peak_mb"].get(op) or 0 for p in rows], marker="o", label=label)
        for row, ylabel in ((0, "time / plain HF forward"), (1, "peak extra memory (MiB)")):
            ax = axes[row][column]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("prompt length (tokens)")
            ax.set_ylabel(ylabel)
            ax.set_title(name, fontsize=9)
            ax.grid(alpha=0.3)
        axes[0][column].legend(fontsize=6)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": "mechscope"})
    plt.close(fig)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, repeats=3)
    parser.add_argument("--models", default="default,gemma3-270m")
    parser.add_argument("--lengths", default="8,32,128,512")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--sweep-max-len", type=int, default=128)
    parser.add_argument("--max-memory", type=float, default=512, help="memory cap of one patching pass (MiB)")
    args = parser.parse_args()
    repeats = setup(args)
    if args.quick:
        args.models, args.lengths, args.batches, args.sweep_max_len = "default", "8,32", "1", 32
    points, goals, table_rows = [], [], []
    model = None
    for name in args.models.split(","):
        model = load(None if name == "default" else name, quick=args.quick)
        for batch in (int(b) for b in args.batches.split(",")):
            for n_pos in (int(n) for n in args.lengths.split(",")):
                sweep = batch == 1 and n_pos <= args.sweep_max_len
                candidates = candidates_for(model, batch, n_pos, sweep, args.max_memory)
                print(f"{model.cfg.name}: batch {batch} x {n_pos} tokens", flush=True)
                times = time_interleaved(candidates, repeats=repeats)
                peaks = {op: peak_memory_mb(fn, str(model.device)) for op, fn in candidates.items()
                         if op != "resid_pre sweep floor"}
                base = times["HF forward"]["median_s"]
                ratio = {op: t["median_s"] / base for op, t in times.items()}
                point = {"model": model.cfg.name, "batch": batch, "n_pos": n_pos, "timings": times, "ratio": ratio,
                         "peak_mb": peaks}
                if sweep:
                    floor = times["resid_pre sweep"]["median_s"] / times["resid_pre sweep floor"]["median_s"]
                    point["sweep_over_floor"] = floor
                    goals.append(goal(f"{model.cfg.name} {n_pos} tokens: resid_pre sweep / floor", floor, 1.5, "<="))
                attribution = times["attribution every site"]["median_s"] / times["HF forward + backward"]["median_s"]
                goals.append(goal(f"{model.cfg.name} batch {batch} x {n_pos}: attribution / (forward + backward)",
                                  attribution, 3, "<="))
                points.append(point)
                table_rows.append([model.cfg.name, str(batch), str(n_pos), cell(base, 3),
                                   *(cell(ratio.get(op)) for op in OPS[:3]),
                                   f"{cell(ratio.get('resid_pre sweep'), 1)} ({cell(point.get('sweep_over_floor'))}x)",
                                   cell(peaks["HF forward"], 0), cell(peaks["cache every hook"], 0)])
        if not args.quick:
            goals.append(long_prompt_goal(model, max(int(n) for n in args.lengths.split(",")), args.max_memory))
    png = RESULTS / ("quick" if args.quick else "") / "scaling.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(png, plot(points))
    ops = [f"{op} (x fwd)" for op in OPS[:3]]
    write_result("scaling", args, model, {
        "settings": {"models": args.models, "lengths": args.lengths, "batches": args.batches,
                     "sweep_max_len": args.sweep_max_len, "max_memory_mb": args.max_memory},
        "points": points, "goals": goals, "plot": png.name,
        "table": {"columns": ["model", "batch", "tokens", "HF forward s", *ops, "resid sweep (x fwd, x floor)",
                              "peak MiB fwd", "peak MiB cache"],
                  "rows": table_rows,
                  "caption": f"Cost against the plain forward as prompts grow; median of {repeats} interleaved repeats, "
                             f"{torch.get_num_threads()} threads; resid sweeps up to {args.sweep_max_len} tokens; peak MiB: "
                             "the resident set's peak above its size before the call, measured once per operation "
                             "after the heap's free pages are handed back. Plot: benchmarks/results/scaling.png"}})


if __name__ == "__main__":
    main()
