"""The `provenance` block every JSON result carries: what model, weights, dtype and code made it."""

from __future__ import annotations

import hashlib
import platform
from typing import Any

import torch
import transformers

# The one place that says which mechscope this is (the package root re-exports it).
__version__ = "0.1.0"


def weights_hash(model: Any) -> str:
    """sha256 over the model's parameters and buffers (names, shapes, dtypes, bytes); cached per model.

    Example: `weights_hash(model)[:12]` -> '3f1c0a9be2d4'.
    """
    cached = getattr(model, "_weights_sha256", None)
    if cached:
        return cached
    digest = hashlib.sha256()
    hf_model = getattr(model, "hf_model", model)
    for name, tensor in sorted(hf_model.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        data = tensor.detach().cpu().contiguous()
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    value = digest.hexdigest()
    model._weights_sha256 = value
    return value


def provenance(model: Any, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance dict for a result computed on `model` (a `HookedModel`).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> block = provenance(model, seed=0, prompts=3)
        >>> block["model"], block["family"], block["seed"], block["prompts"], len(block["weights_sha256"])
        ('tiny', 'llama', 0, 3, 64)
    """
    block = {
        "model": model.cfg.name,
        "family": model.cfg.family,
        "weights_sha256": weights_hash(model),
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "attn_implementation": model.attn_implementation,
        "mechscope_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python": platform.python_version(),
        "seed": seed,
    }
    if getattr(model, "source", None):
        block["source"] = {k: v for k, v in model.source.items() if k in ("source", "source_sha256", "path")}
    block.update(extra)
    return block
