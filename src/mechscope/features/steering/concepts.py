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
    """A latent, its contrastive score, and its mean per-text peak activation on concept and baseline texts.

    Example:
        >>> c = ConceptLatent(latent=7, score=1.5, concept_peak=2.0, baseline_peak=0.5)
        >>> c.latent, c.concept_peak - c.baseline_peak == c.score
        (7, True)
    """

    latent: int
    score: float
    concept_peak: float
    baseline_peak: float


@torch.no_grad()
def peak_activations(model: Any, sae: Dictionary, texts: Sequence[str]) -> Tensor:
    """Per text, each latent's largest activation over the tokens after the first: `[n_texts, d_sae]`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> peak_activations(model, sae, ["the cat sat", "a dog ran on the mat"]).shape      # [n_texts, d_sae]
        torch.Size([2, 32])
    """
    if not texts:
        raise MechscopeError("No texts given.")
    batch = model.tokenize(list(texts))
    feats = sae_features(model, sae, batch).float()
    mask = batch.attention_mask.to(feats.device).bool().clone()
    mask[:, 0] = False  # the first token (often BOS) has outsized activations in most models
    return feats.masked_fill(~mask[..., None], float("-inf")).amax(1).clamp_min(0)


def concept_latents(model: Any, sae: Dictionary, concept: Sequence[str], baseline: Sequence[str],
                    n: int = 10) -> list[ConceptLatent]:
    """The `n` latents that fire most on `concept` texts beyond what they do on `baseline` texts.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> top = concept_latents(model, sae, ["the cat sat", "the cat ran"], ["a dog sat", "a dog ran"], n=3)
        >>> len(top), top[0].score >= top[1].score >= top[2].score
        (3, True)
    """
    on, off = peak_activations(model, sae, concept).mean(0), peak_activations(model, sae, baseline).mean(0)
    score = on - off
    top = score.topk(min(n, score.numel()))
    return [ConceptLatent(int(i), float(s), float(on[i]), float(off[i])) for s, i in zip(*top, strict=True)]


def database_latents(path: str, query: str, sae: Dictionary | None = None, n: int = 5) -> list[dict[str, Any]]:
    """Latents of a feature database (`mechscope features collect`) matching `query`, best first.

    Explanations and top tokens are searched. With `sae`, the database must describe a dictionary
    of the same width.

    Example:
        >>> hits = database_latents("features.db", "bridge", n=3)      # doctest: +SKIP
        >>> [hit["latent"] for hit in hits]                            # doctest: +SKIP
        [1234, 877, 15]
    """
    from mechscope.features.database import FeatureDatabase

    with FeatureDatabase.open(path) as db:
        if sae is not None and db.meta().get("d_sae") not in (None, sae.cfg.d_sae):
            raise MechscopeError(f"{path} describes a dictionary of {db.meta()['d_sae']} latents, "
                                 f"not this one of {sae.cfg.d_sae}.")
        hits = db.search(query, limit=n)
    if not hits:
        raise MechscopeError(f"No latent in {path} matches {query!r}.")
    return hits
