"""Report sections that need only the core: tokens, next-token predictions, residual-stream norms."""

from __future__ import annotations

import html
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mechscope.apps.output import figure_png, png_data_uri  # noqa: E402
from mechscope.apps.report.document import Section  # noqa: E402
from mechscope.core.hooked import HookedModel  # noqa: E402


def top_predictions(model: HookedModel, logits: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """Top-k next tokens at the last position: token, id, probability, logit.

    Example:
        >>> from mechscope import load_model
        >>> model = load_model()                                            # doctest: +SKIP
        >>> top_predictions(model, model("The Eiffel Tower is in the city of"), k=1)[0]["token"]   # doctest: +SKIP
        ' Paris'
    """
    probs = logits[0, -1].float().softmax(-1)
    values, ids = probs.topk(k)
    return [
        {"token": model.to_str_tokens([int(i)])[0], "id": int(i), "prob": float(p), "logit": float(logits[0, -1, i])}
        for p, i in zip(values, ids, strict=True)
    ]


def tokens_section(model: HookedModel, context: dict[str, Any]) -> Section:
    """The report's tokens section: the prompt's tokens and their ids.

    Example:
        >>> from mechscope import load_model
        >>> model = load_model()                                            # doctest: +SKIP
        >>> tokens_section(model, {"prompt": "The Eiffel Tower"}).data["tokens"]   # doctest: +SKIP
        ['The', ' E', 'iff', 'el', ' Tower']
    """
    ids = model.to_tokens(context["prompt"])[0]
    pieces = model.to_str_tokens(ids)
    cells = " ".join(f"<span class='tok' title='id {int(i)}'>{html.escape(p)}</span>" for p, i in zip(pieces, ids, strict=True))
    return Section("tokens", "Tokens", f"<p>{len(pieces)} tokens: {cells}</p>",
                   {"tokens": pieces, "ids": ids.tolist()})


def predictions_section(model: HookedModel, context: dict[str, Any]) -> Section:
    """The report's predictions section: the top `context['top_k']` next tokens with probability and logit.

    Example:
        >>> from mechscope import load_model
        >>> model = load_model()                                            # doctest: +SKIP
        >>> predictions_section(model, {"prompt": "The Eiffel Tower is in the city of", "top_k": 3}).title   # doctest: +SKIP
    """
    with torch.no_grad():
        logits = model(context["prompt"])
    top = top_predictions(model, logits, context.get("top_k", 10))
    rows = "".join(
        f"<tr><td>{n + 1}</td><td><span class='tok'>{html.escape(t['token'])}</span></td>"
        f"<td>{t['prob']:.4f}</td><td>{t['logit']:.3f}</td></tr>" for n, t in enumerate(top)
    )
    table = f"<table><tr><th>#</th><th>token</th><th>probability</th><th>logit</th></tr>{rows}</table>"
    return Section("predictions", "Next-token predictions", table, {"top": top})


def resid_norms_section(model: HookedModel, context: dict[str, Any]) -> Section:
    """L2 norm of the residual stream after each block, at every position, with a line plot.

    Example:
        >>> from mechscope import load_model
        >>> model = load_model()                                            # doctest: +SKIP
        >>> section = resid_norms_section(model, {"prompt": "The Eiffel Tower is in"})   # doctest: +SKIP
    """
    _, cache = model.run_with_cache(context["prompt"], names=lambda n: n.endswith("hook_resid_post"))
    norms = cache.stack("hook_resid_post")[:, 0].norm(dim=-1)  # [n_layers, pos]
    pieces = model.to_str_tokens(context["prompt"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    layers = list(range(model.cfg.n_layers))
    for pos, piece in enumerate(pieces):
        ax.plot(layers, norms[:, pos].tolist(), label=f"{pos}: {piece!r}", lw=2 if pos == len(pieces) - 1 else 1)
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("L2 norm")
    ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2)
    png = figure_png(fig, close=True)
    data = {"layers": layers, "tokens": pieces, "norms": [[round(v, 5) for v in row] for row in norms.tolist()],
            "mean_norm": [round(v, 5) for v in norms.mean(dim=1).tolist()]}
    return Section("resid_norms", "Residual-stream norms", f"<img alt='residual norms' src='{png_data_uri(png)}'>", data)


CORE_SECTIONS = (tokens_section, predictions_section, resid_norms_section)
