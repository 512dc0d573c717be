"""Automated interpretability: explain latents with a language model and score the explanations.

Example:
    >>> from mechscope.features.autointerp import explain_latent, make_client, score_explanation
    >>> client = make_client("local")                                     # doctest: +SKIP
    >>> eid = explain_latent(db, 12, client)                              # doctest: +SKIP
    >>> score_explanation(db, eid, client)["detection"].value             # doctest: +SKIP
"""

from mechscope.features.autointerp.client import (
    ChatModel,
    LanguageModelError,
    LocalChat,
    OpenAIChat,
    make_client,
)
from mechscope.features.autointerp.explain import explain_latent, select_latents
from mechscope.features.autointerp.score import (
    METHODS,
    Score,
    balanced_accuracy,
    held_out,
    pooled_pearson,
    score_explanation,
)

__all__ = ["METHODS", "ChatModel", "LanguageModelError", "LocalChat", "OpenAIChat", "Score", "balanced_accuracy",
           "explain_latent", "held_out", "make_client", "pooled_pearson", "score_explanation", "select_latents"]
