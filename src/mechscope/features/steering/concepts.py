"""Finding the dictionary latents of a concept by their activations on concept texts against baseline texts.

`concept_latents` scores each latent by `mean_i max_t f(concept_i)_t - mean_j max_t f(baseline_j)_t`
(per text, the largest activation over its tokens after the first; then averaged over texts), and
returns the best. A feature database (`mechscope features collect`) answers "which latents fire on
this word" over a whole corpus; this is the quick, contrastive answer on a handful of texts.

Example:
    >>> concept_latents(model, sae, ["the Golden Gate Bridge", "a suspension bridge"],
    ...                 ["the kitchen table", "a long meeting"], n=3)[0].latent        # doctest: +SKIP
    4021
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from mechscope.core.errors import MechscopeError
from mechscope.dictionaries.base import Dictionary
from mechscope.dictionaries.splice import sae_features


class ConceptLatent(NamedTuple):
    """A latent, its contrastive score, and its mean per-text peak activation on concept and baseline texts."""

    latent: int
    score: float
    concept_peak: float
    baseline_peak: float


@torch.no_grad()
def peak_activations(model: Any, sae: Dictionary, texts: Sequence[str]) -> Tensor:
    """Per text, each latent's largest activation over the tokens after the first: `[n_texts, d_sae]`."""
    if not texts:
        raise MechscopeError("No texts given.")
    batch = model.tokenize(list(texts))
    feats = sae_features(model, sae, batch).float()
    mask = batch.attention_mask.to(feats.device).bool().clone()
    mask[:, 0] = False  # the first token (often BOS) has outsized activations in most models
    return feats.masked_fill(~mask[..., None], float("-inf")).amax(1).clamp_min(0)


def concept_latents(model: Any, sae: Dictionary, concept: Sequence[str], baseline: Sequence[str],
                    n: int = 10) -> list[ConceptLatent]:
    """The `n` latents that fire most on `concept` texts beyond what they do on `baseline` texts."""
    on, off = peak_activations(model, sae, concept).mean(0), peak_activations(model, sae, baseline).mean(0)
    score = on - off
    top = score.topk(min(n, score.numel()))
    return [ConceptLatent(int(i), float(s), float(on[i]), float(off[i])) for s, i in zip(*top, strict=True)]


def database_latents(path: str, query: str, sae: Dictionary | None = None, n: int = 5) -> list[dict[str, Any]]:
    """Latents whose explanations or top tokens in a feature database (`mechscope features collect`) match
    `query`, best first; with `sae`, the database must describe a dictionary of the same width."""
    from mechscope.features.database import FeatureDatabase

    with FeatureDatabase.open(path) as db:
        if sae is not None and db.meta().get("d_sae") not in (None, sae.cfg.d_sae):
            raise MechscopeError(f"{path} describes a dictionary of {db.meta()['d_sae']} latents, "
                                 f"not this one of {sae.cfg.d_sae}.")
        hits = db.search(query, limit=n)
    if not hits:
        raise MechscopeError(f"No latent in {path} matches {query!r}.")
    return hits
