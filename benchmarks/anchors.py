"""The anchor libraries, built offline from an already loaded mechscope model's weights.

Each builder returns the anchor, or raises; callers record the reason and go on.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import torch


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
        return (metric(logits).mean() - corrupt_value) / (clean_value - corrupt_value)

    return clean_cache, recovery
