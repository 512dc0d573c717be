"""Collecting probe inputs from a model: one site's activation at each example's read position.

Example:
    >>> hooks = site_hook_names(model, "resid_post")                        # doctest: +SKIP
    >>> acts = collect_activations(model, texts, positions, hooks)          # doctest: +SKIP
    >>> acts[12].shape                                                      # doctest: +SKIP
    torch.Size([236, 576])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechscope.core import names
from mechscope.core.errors import MechscopeError, require_finite


def site_hook_names(model: Any, site: str, layers: list[int] | None = None) -> dict[int, str]:
    """Layer -> hook name of `site` ('resid_post', 'hook_resid_post' or a full block name's suffix).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> site_hook_names(model, "resid_post"), site_hook_names(model, "mlp_out", layers=[1])
        ({0: 'blocks.0.hook_resid_post', 1: 'blocks.1.hook_resid_post'}, {1: 'blocks.1.hook_mlp_out'})
    """
    suffix = names.short_site(site) if not site.startswith("blocks.") else names.suffix_of(site)
    chosen = range(model.cfg.n_layers) if layers is None else layers
    return {layer: model.check_name(names.block(layer, suffix)) for layer in chosen}


@torch.no_grad()
def collect_activations(model: Any, texts: list[str], positions: list[int], hook_names: dict[int, str],
                        batch_size: int = 16) -> dict[int, Tensor]:
    """Activations [n, d_model] per layer at each text's read position; the pass stops after the last layer needed.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> acts = collect_activations(model, ["the cat sat", "a dog"], [2, 1], site_hook_names(model, "resid_post"))
        >>> {layer: tuple(a.shape) for layer, a in acts.items()}       # [n_texts, d_model] per layer
        {0: (2, 16), 1: (2, 16)}
    """
    chunks: dict[int, list[Tensor]] = {layer: [] for layer in hook_names}
    last_layer = max(hook_names) + 1
    for start in range(0, len(texts), batch_size):
        batch = model.tokenize(texts[start:start + batch_size])
        where = torch.tensor(positions[start:start + batch_size])
        too_far = where >= batch.lengths
        if too_far.any():
            raise MechscopeError(f"read position beyond the text at example {start + int(too_far.nonzero()[0])}")
        _, cache = model.run_with_cache(batch, names=list(hook_names.values()),
                                        stop_at_layer=last_layer if last_layer < model.cfg.n_layers else None)
        rows = torch.arange(len(where))
        for layer, name in hook_names.items():
            chunks[layer].append(cache[name][rows, where.to(cache[name].device)].float().cpu())
            require_finite(chunks[layer][-1], f"The activation {name} (examples {start}..{start + len(where) - 1})")
    return {layer: torch.cat(parts) for layer, parts in chunks.items()}
