"""Benchmark: activation-patching sweeps on the default model, side by side with the anchors.

The Eiffel Tower / Colosseum pair (9 tokens each), metric = logit difference ' Paris' - ' Rome'
at the last token, scores = normalized recovery. Measured in one run:

- mechscope `patch_sweep` (resid_pre by layer x position) and `patch_heads` (z by layer x head);
- a naive loop, one `run_with_hooks` forward per cell (`patch_loop`);
- TransformerLens `HookedTransformer` patching (`get_act_patch_resid_pre`,
  `get_act_patch_attn_head_out_all_pos`), built offline from the loaded HF weights;
- TransformerLens `TransformerBridge` with the same patching functions, where it loads;
- attribution patching of every site against one plain forward + backward pass.

Usage:
    python benchmarks/patching.py [--skip-anchors] [--png docs/images/patching_resid_pre.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mechscope  # noqa: E402
from mechscope.methods.metrics import LogitDiff  # noqa: E402
from mechscope.methods.patching import patch_heads, patch_loop, patch_sweep  # noqa: E402
from mechscope.methods.patching.attribution import attribution_every_site  # noqa: E402

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Colosseum is in the city of"
ANSWER, WRONG = " Paris", " Rome"


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def hooked_transformer(model: Any) -> Any:
    """TransformerLens HookedTransformer with the loaded SmolLM2 weights, no weight processing, offline."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    with tempfile.TemporaryDirectory() as folder:
        model.hf_model.config.save_pretrained(folder)
        cfg_dict = loading.convert_hf_model_config(folder)
    cfg_dict.update(dtype=torch.float32, device="cpu", default_prepend_bos=False, tokenizer_prepends_bos=False)
    fields = HookedTransformerConfig.__dataclass_fields__
    cfg = HookedTransformerConfig(**{k: v for k, v in cfg_dict.items() if k in fields})
    tl = HookedTransformer(cfg, tokenizer=model.tokenizer, move_to_device=False)
    tl.load_and_process_state_dict(convert_llama_weights(model.hf_model, cfg), fold_ln=False,
                                   center_writing_weights=False, center_unembed=False, fold_value_biases=False,
                                   refactor_factored_attn_matrices=False)
    return tl.eval()


def bridge(model: Any) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    b = TransformerBridge.boot_transformers("HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=model.hf_model,
                                            tokenizer=model.tokenizer, device="cpu", dtype=torch.float32)
    if hasattr(b, "enable_compatibility_mode"):
        b.enable_compatibility_mode(disable_warnings=True)
    return b


def tl_sweeps(tl: Any, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor, metric: LogitDiff) -> dict[str, Any]:
    from transformer_lens import patching

    with torch.no_grad():
        clean_logits, clean_cache = tl.run_with_cache(clean_ids)
        clean_value = float(metric(clean_logits).mean())
        corrupt_value = float(metric(tl(corrupt_ids)).mean())

    def recovery(logits: torch.Tensor) -> torch.Tensor:
        return (metric(logits).mean() - corrupt_value) / (clean_value - corrupt_value)

    with torch.no_grad():
        t_resid, resid = timed(lambda: patching.get_act_patch_resid_pre(tl, corrupt_ids, clean_cache, recovery))
        t_heads, heads = timed(lambda: patching.get_act_patch_attn_head_out_all_pos(tl, corrupt_ids, clean_cache,
                                                                                     recovery))
    return {"resid_s": t_resid, "resid": resid.float(), "heads_s": t_heads, "heads": heads.float()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-anchors", action="store_true", help="skip TransformerLens (slow)")
    parser.add_argument("--skip-naive", action="store_true", help="skip the one-forward-per-cell loop")
    parser.add_argument("--png", default=None, help="write the resid_pre heatmap here")
    parser.add_argument("--json", default=None, help="write timings and differences here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = mechscope.load_model()
    clean_ids, corrupt_ids = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    print(f"model {model.cfg.name}, torch threads {torch.get_num_threads()}, dtype {model.dtype}")
    print(f"clean   {model.to_str_tokens(CLEAN)}\ncorrupt {model.to_str_tokens(CORRUPT)}")
    assert clean_ids.shape == corrupt_ids.shape, "prompts must have equal token counts"
    metric = LogitDiff(model.to_single_token(ANSWER), model.to_single_token(WRONG))
    kw = dict(answer=ANSWER, wrong=WRONG)
    report: dict[str, Any] = {}

    with torch.no_grad():
        t_fwd, _ = timed(lambda: model.hf_model(input_ids=clean_ids, use_cache=False), repeat=3)

    def fwd_bwd() -> None:
        embeds = model.hf_model.get_input_embeddings()(clean_ids).detach().requires_grad_(True)
        logits = model.hf_model(inputs_embeds=embeds, use_cache=False).logits
        metric(logits).sum().backward()

    t_fb, _ = timed(fwd_bwd, repeat=3)
    print(f"plain HF forward {t_fwd * 1e3:.1f} ms; forward + backward {t_fb * 1e3:.1f} ms")

    t_ms_resid, resid = timed(lambda: patch_sweep(model, CLEAN, CORRUPT, site="resid_pre", by="layer,pos", **kw))
    t_ms_heads, heads = timed(lambda: patch_heads(model, CLEAN, CORRUPT, by="layer,head", **kw))
    cells_resid, cells_heads = resid.scores.numel(), heads.scores.numel()
    print(f"mechscope resid_pre layer x pos ({cells_resid} cells): {t_ms_resid:.2f} s "
          f"({t_ms_resid / t_fwd:.0f} plain forwards)")
    print(f"mechscope z layer x head ({cells_heads} cells): {t_ms_heads:.2f} s ({t_ms_heads / t_fwd:.0f} plain forwards)")
    print(f"  clean logit diff {resid.clean:.4f}, corrupt {resid.corrupt:.4f}")
    if args.png:
        resid.plot(args.png, title="SmolLM2-135M: patching clean resid_pre into 'The Colosseum is in the city of'\n"
                                   f"recovery of logit diff ' Paris' - ' Rome' (clean {resid.clean:.2f}, "
                                   f"corrupt {resid.corrupt:.2f})")
        print(f"wrote {args.png}")
    report["mechscope"] = {"resid_s": t_ms_resid, "heads_s": t_ms_heads, "forward_s": t_fwd, "fwd_bwd_s": t_fb,
                           "clean": resid.clean, "corrupt": resid.corrupt}

    t_attr, attr = timed(lambda: attribution_every_site(model, CLEAN, CORRUPT, **kw))
    print(f"attribution patching, every site ({len(attr)} sites): {t_attr:.2f} s = "
          f"{t_attr / t_fb:.2f} x (forward + backward)")
    report["attribution"] = {"every_site_s": t_attr, "ratio_to_fwd_bwd": t_attr / t_fb}

    if not args.skip_naive:
        t_loop_resid, loop_resid = timed(lambda: patch_loop(model, CLEAN, CORRUPT, site="resid_pre",
                                                            by="layer,pos", **kw))
        t_loop_heads, loop_heads = timed(lambda: patch_loop(model, CLEAN, CORRUPT, site="z", by="layer,head", **kw))
        d_r = float((loop_resid - resid.scores).abs().max())
        d_h = float((loop_heads - heads.scores).abs().max())
        print(f"naive loop resid_pre: {t_loop_resid:.2f} s (mechscope {t_loop_resid / t_ms_resid:.1f}x faster), "
              f"max |diff| {d_r:.2e}")
        print(f"naive loop heads:     {t_loop_heads:.2f} s (mechscope {t_loop_heads / t_ms_heads:.1f}x faster), "
              f"max |diff| {d_h:.2e}")
        report["naive"] = {"resid_s": t_loop_resid, "heads_s": t_loop_heads, "resid_max_diff": d_r,
                           "heads_max_diff": d_h}

    if not args.skip_anchors:
        for name, build in (("HookedTransformer", hooked_transformer), ("TransformerBridge", bridge)):
            try:
                anchor = build(model)
                out = tl_sweeps(anchor, clean_ids, corrupt_ids, metric)
            except Exception as err:  # noqa: BLE001 - report and go on with the other anchors
                print(f"{name}: could not run ({type(err).__name__}: {str(err)[:200]})")
                report[name] = {"error": f"{type(err).__name__}: {err}"}
                continue
            d_r = float((out["resid"] - resid.scores).abs().max())
            d_h = float((out["heads"] - heads.scores).abs().max())
            print(f"{name} resid_pre: {out['resid_s']:.2f} s (mechscope {out['resid_s'] / t_ms_resid:.1f}x faster), "
                  f"max |diff| {d_r:.2e}")
            print(f"{name} heads:     {out['heads_s']:.2f} s (mechscope {out['heads_s'] / t_ms_heads:.1f}x faster), "
                  f"max |diff| {d_h:.2e}")
            report[name] = {"resid_s": out["resid_s"], "heads_s": out["heads_s"], "resid_max_diff": d_r,
                            "heads_max_diff": d_h}
            del anchor

    torch.set_printoptions(precision=2, sci_mode=False, linewidth=160)
    print("resid_pre recovery (rows = layers 0, 5, 10, ..., columns = tokens):")
    print(resid.labels[1])
    print(resid.scores[::5])
    print("top heads:", [(r["layer"], r["head"], round(r["score"], 3)) for r in heads.top(5)])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({**report, "resid_scores": resid.scores.tolist(), "labels": resid.labels}, handle, indent=1)


if __name__ == "__main__":
    main()
