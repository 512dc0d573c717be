"""Report sections for the reading tools: the logit-lens grid and the head-classification table.

Each builder takes `(model, context)` like the other report sections and returns a `Section`
(an HTML fragment with an inline PNG, plus the JSON that holds its numbers).

Example:
    >>> section = lens_section(model, {"prompt": "The Eiffel Tower is in the city of"})  # doctest: +SKIP
    >>> section.data["layers"][-1]                                                       # doctest: +SKIP
    'blocks.29.hook_resid_post'
"""

from __future__ import annotations

import html
from typing import Any

from mechscope.apps.dashboard.views import heads_view
from mechscope.apps.output import figure_png, png_data_uri
from mechscope.apps.report.document import Section, view_box
from mechscope.core.hooked import HookedModel
from mechscope.methods.heads import THRESHOLDS, detect_heads, icl_score, max_seq_len, repeated_random_tokens
from mechscope.methods.lens import logit_lens
from mechscope.methods.reading_plots import heads_figure, lens_grid_figure


def lens_section(model: HookedModel, context: dict[str, Any]) -> Section:
    """Layer x position grid of the logit lens's top token (colour: its probability).

    Example:
        >>> from mechscope import load_model
        >>> model = load_model()                                            # doctest: +SKIP
        >>> lens_section(model, {"prompt": "The Eiffel Tower is in the city of", "answer": " Paris"}).key   # doctest: +SKIP
        'logit_lens'
    """
    targets = [context["answer"]] if context.get("answer") else []
    result = logit_lens(model, context["prompt"], k=3, targets=targets)
    image = png_data_uri(figure_png(lens_grid_figure(result), close=True))
    caption = ("Each cell: the top token when the residual stream before that block (last row: after the last "
               "block) is read through the model's final norm and unembedding.")
    body = f"<p>{html.escape(caption)}</p><img src='{image}' alt='logit lens grid'>"
    data = result.to_json()
    data.pop("provenance", None)  # the report carries one provenance block
    return Section("logit_lens", "Logit lens", body, data)


def heads_section(model: HookedModel, context: dict[str, Any]) -> Section:
    """Detector heatmaps and the table of labelled heads, on repeated random tokens.

    Example:
        >>> from mechscope import load_model
        >>> model = load_model()                                            # doctest: +SKIP
        >>> heads_section(model, {"prompt": "Hi", "heads_seq_len": 20}).key   # doctest: +SKIP
        'heads'
    """
    seq_len = min(int(context.get("heads_seq_len", 50)), max_seq_len(model))  # fits a short context
    ids = repeated_random_tokens(model, seq_len, int(context.get("heads_batch", 8)), seed=0)
    table = detect_heads(model, ids=ids)
    icl = icl_score(model, ids)
    image = png_data_uri(figure_png(heads_figure(table), close=True))
    labelled = [r for r in table if r.label != "other"]
    rows = "".join(
        f"<tr><td>{r.layer}.{r.head}</td><td>{html.escape(r.label)}</td><td>{r.prev_token:.2f}</td>"
        f"<td>{r.duplicate_token:.2f}</td><td>{r.induction:.2f}</td><td>{r.bos:.2f}</td><td>{r.entropy:.2f}</td></tr>"
        for r in sorted(labelled, key=lambda r: (r.label, r.layer, r.head)) if r.label != "bos"
    )
    n_bos = sum(r.label == "bos" for r in table)
    thresholds = ", ".join(f"{k} &ge; {v}" for k, v in THRESHOLDS.items())
    body = (
        f"<p>On {ids.shape[0]} sequences of {seq_len} random tokens repeated twice: loss {icl.loss_first_half:.2f} on "
        f"the first copy, {icl.loss_second_half:.2f} on the second (in-context-learning score "
        f"{icl.icl_score:+.2f} nats). Labels: {thresholds}; {n_bos} heads mostly attend to the first token.</p>"
        f"<img src='{image}' alt='head detector scores'>"
        "<table><tr><th>head</th><th>label</th><th>prev</th><th>dup</th><th>induction</th><th>bos</th>"
        f"<th>entropy</th></tr>{rows}</table>"
    )
    data = {"heads": [r.to_json() for r in table], "thresholds": THRESHOLDS,
            "icl": {"loss_first_half": icl.loss_first_half, "loss_second_half": icl.loss_second_half,
                    "icl_score": icl.icl_score}}
    rows = data["heads"]
    return Section("heads", "Attention heads", body + view_box("heads", "report-heads"), data,
                   views={"/api/heads/report-heads": heads_view("report-heads", rows)})


READING_SECTIONS = [lens_section, heads_section]
