"""The latents most active on a prompt, annotated from a feature database.

Example:
    >>> top_latents(model, sae, "The year 1984 was", position=-1, n=5, db=db)[0]["latent"]   # doctest: +SKIP
    812
"""

from __future__ import annotations

from typing import Any

import torch

from mechscope.dictionaries import Dictionary
from mechscope.features.collect import encode_contexts
from mechscope.features.database import FeatureDatabase


def top_latents(model: Any, dictionary: Dictionary, text: str, *, position: int = -1, n: int = 10,
                db: FeatureDatabase | None = None) -> list[dict[str, Any]]:
    """The `n` latents of largest activation at `position` of `text`, with density and newest explanation.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> rows = top_latents(model, sae, "the cat sat", n=3)
        >>> len(rows), rows[0]["act"] >= rows[-1]["act"] > 0, rows[0]["explanation"]    # no database: no annotation
        (3, True, None)
    """
    ids = model.to_tokens(text)[:1].cpu()
    acts, _ = encode_contexts(model, dictionary, ids)
    T = ids.shape[1]
    if not -T <= position < T:
        raise IndexError(f"position {position} is outside a prompt of {T} tokens")
    row = acts[0, position]
    top = torch.topk(row, min(n, int((row > 0).sum())))
    out = []
    for latent, act in zip(top.indices.tolist(), top.values.tolist(), strict=True):
        item: dict[str, Any] = {"latent": int(latent), "act": float(act), "density": float("nan"), "explanation": None}
        if db is not None:
            info = db.con.execute("SELECT density FROM latents WHERE latent = ?", (int(latent),)).fetchone()
            item["density"] = float(info[0]) if info else float("nan")
            expl = db.explanations(int(latent))
            item["explanation"] = expl[0]["text"] if expl else None
        out.append(item)
    return out
