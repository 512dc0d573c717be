"""The report's patching section: the resid_pre layer x position heatmap for a prompt pair.

Example:
    >>> section = patching_section(model, "The Eiffel Tower is in the city of",
    ...                            "The Colosseum is in the city of", " Paris", " Rome")  # doctest: +SKIP
    >>> sorted(section)                                                                   # doctest: +SKIP
    ['html', 'json', 'title']
"""

from __future__ import annotations

import html
from typing import Any


def patching_section(model: Any, clean: str, corrupt: str, answer: str, wrong: str | None = None,
                     top_k: int = 8) -> dict[str, Any]:
    """{"title", "html", "json"}: denoising activation patching of resid_pre by layer and position.

    Without `wrong` the metric is the log-probability of `answer`.

    Example:
        >>> from mechscope import load_model
        >>> part = patching_section(load_model(), "The Eiffel Tower is in the city of",             # doctest: +SKIP
        ...                         "The Colosseum is in the city of", " Paris", " Rome")
        >>> sorted(part)                                                                           # doctest: +SKIP
        ['html', 'json', 'title']
    """
    from mechscope.methods.patching import patch_sweep

    metric = None if wrong is not None else "logprob"
    result = patch_sweep(model, clean, corrupt, metric, answer=answer, wrong=wrong, site="resid_pre",
                         by="layer,pos")
    name = "logit difference" if wrong is not None else "log-probability"
    intro = (f"<p>Clean <code>{html.escape(clean)}</code>, corrupted <code>{html.escape(corrupt)}</code>; "
             f"metric: {name} of <code>{html.escape(repr(answer))}</code>"
             + (f" over <code>{html.escape(repr(wrong))}</code>" if wrong is not None else "")
             + f" (clean {result.clean:.3f}, corrupted {result.corrupt:.3f}). Each cell patches the clean "
             "residual stream at one layer and position into the corrupted run; 1 = clean answer restored.</p>")
    data = result.to_dict()
    data.pop("provenance", None)
    return {"title": "Activation patching (resid_pre)", "html": intro + result.html_fragment(k=top_k), "json": data}
