"""What mechscope's timings are compared against: the plain HF forward, the floor of a patching sweep, and
the anchor libraries (TransformerLens, nnsight), built offline from an already loaded mechscope model's weights.

Each library builder returns the anchor, or raises; callers record the reason and go on.

Example:
    >>> run = hf_forward(model, model.to_tokens("Hello"))   # doctest: +SKIP
    >>> time_interleaved({"HF forward": run})                # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mechscope.core.scores import normalized_recovery
from mechscope.methods.patching import PairRuns
from mechscope.methods.patching.engine import floor_work, suffix_starts
from mechscope.methods.patching.sweep import site_cells, site_name


def hf_forward(model: Any, ids: torch.Tensor, logits_to_keep: int = 0) -> Callable[[], object]:
    """A call of the plain Hugging Face forward over `ids` (no hooks, no KV cache, no autograd): the unit.

    `logits_to_keep=1` unembeds the last position only (0: every position)."""
    def run() -> object:
        with torch.no_grad():
            return model.hf_model(input_ids=ids, use_cache=False, logits_to_keep=logits_to_keep)
    return run


def floor_forward(model: Any, ids: torch.Tensor, n_logits: int = 1) -> Callable[[], object]:
    """The floor of a sweep, timed: a plain forward over `ids` (as many rows as `floor_rows` says)
    unembedding its last position, plus the unembedding of `n_logits - rows` more final residuals,
    so that every cell gets the one logits row its metric reads (`n_logits`, from `floor_rows`).
    Unembedding the whole vocabulary at every position instead would count more than a sweep
    needs when cells are fewer than rows x positions."""
    hf = model.hf_model
    extra = torch.randn(max(0, n_logits - ids.shape[0]), model.cfg.d_model, dtype=model.dtype)

    def run() -> object:
        with torch.no_grad():
            out = hf(input_ids=ids, use_cache=False, logits_to_keep=1)
            if extra.shape[0]:
                hf.get_output_embeddings()(extra)
        return out
    return run


def hf_forward_backward(model: Any, ids: torch.Tensor, metric: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
    """A call of the plain HF forward and a backward of `metric(logits).sum()` to the input embeddings
    (no weight gradients): what one attribution pass cannot go below."""
    hf = model.hf_model

    def run() -> None:
        embeds = hf.get_input_embeddings()(ids).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = hf(inputs_embeds=embeds, use_cache=False).logits
            torch.autograd.grad(metric(logits).sum(), embeds)
    return run


def floor_rows(model: Any, clean: Any, corrupt: Any, site: str = "resid_pre", by: Sequence[str] = ("layer", "pos"),
               **answers: Any) -> tuple[int, int, int]:
    """The floor of a patching sweep of `site` by `by`: (its work in layer x token units, `engine.floor_work`,
    how many rows of one full plain forward hold that much work, and how many logits rows it reads:
    one per cell and pair)."""
    n_layers = model.cfg.n_layers
    runs = PairRuns(model, clean, corrupt, names=[site_name(site, i) for i in range(n_layers)], **answers)
    n_pos = runs.pair.n_pos
    cells, _ = site_cells(model, site, tuple(by), n_pos)
    starts = suffix_starts(cells, runs.metric, n_pos, runs.clean_acts, runs.corrupt_acts)
    work = floor_work(cells, starts, n_layers, n_pos, runs.pair.n_pairs)
    return work, max(1, math.ceil(work / (n_layers * n_pos))), len(cells) * runs.pair.n_pairs


def hooked_transformer(model: Any) -> Any:
    """TransformerLens's HookedTransformer with a Llama-family model's weights, no weight processing."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    with tempfile.TemporaryDirectory() as folder:
        model.hf_model.config.save_pretrained(folder)
        cfg_dict = loading.convert_hf_model_config(folder)
    cfg_dict.update(dtype=model.dtype, device="cpu", default_prepend_bos=False, tokenizer_prepends_bos=False)
    fields = HookedTransformerConfig.__dataclass_fields__
    cfg = HookedTransformerConfig(**{k: v for k, v in cfg_dict.items() if k in fields})
    tl = HookedTransformer(cfg, tokenizer=model.tokenizer, move_to_device=False)
    tl.load_and_process_state_dict(convert_llama_weights(model.hf_model, cfg), fold_ln=False,
                                   center_writing_weights=False, center_unembed=False, fold_value_biases=False,
                                   refactor_factored_attn_matrices=False)
    return tl.eval()


def transformer_bridge(model: Any) -> Any:
    """TransformerLens's TransformerBridge around a copy of the HF module (compatibility mode where it has one).

    A copy, because the bridge replaces submodules of the model it wraps.
    """
    from transformer_lens.model_bridge import TransformerBridge

    b = TransformerBridge.boot_transformers("HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=copy.deepcopy(model.hf_model),
                                            tokenizer=model.tokenizer, device="cpu", dtype=model.dtype)
    if hasattr(b, "enable_compatibility_mode"):
        b.enable_compatibility_mode(disable_warnings=True)
    return b


def nnsight_model(model: Any) -> Any:
    """nnsight's LanguageModel wrapping a copy of the HF module."""
    from nnsight import LanguageModel

    return LanguageModel(copy.deepcopy(model.hf_model), tokenizer=model.tokenizer)


def tl_recovery(tl: Any, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor, metric: Any) -> tuple[Any, Any]:
    """(clean cache, normalized-recovery function of logits), as TransformerLens's patching functions want them."""
    with torch.no_grad():
        clean_logits, clean_cache = tl.run_with_cache(clean_ids)
        clean_value = float(metric(clean_logits).mean())
        corrupt_value = float(metric(tl(corrupt_ids)).mean())

    def recovery(logits: torch.Tensor) -> torch.Tensor:
        return normalized_recovery(metric(logits).mean(), clean_value, corrupt_value)

    return clean_cache, recovery


def optional_anchor(build, model: Any):
    """`build(model)` (an anchor from this module), or None with a reason when its library is not installed."""
    try:
        return build(model), ""
    except ImportError as err:
        return None, f"not installed ({err})"
