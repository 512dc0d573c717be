"""Figures for the reading tools: the lens grid, head-score heatmaps, lens KL per layer, toy loss curves.

Each function returns a matplotlib `Figure` (Agg backend); `mechscope.core.files.figure_png`
turns it into tagged PNG bytes (`save_figure` writes it through the write guard).

Example:
    >>> fig = lens_grid_figure(logit_lens(model, "The Eiffel Tower is in the city of"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mechscope.core.names import parse_layer, suffix_of  # noqa: E402
from mechscope.methods.heads import DETECTORS, HeadScores, scores_tensor  # noqa: E402
from mechscope.methods.lens import LensResult  # noqa: E402


def _short(token: str, width: int = 8) -> str:
    text = token.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def row_label(site: str) -> str:
    """'blocks.3.hook_resid_pre' -> '3 resid_pre'.

    Example:
        >>> row_label("blocks.3.hook_resid_pre"), row_label("ln_final.hook_normalized")
        ('3 resid_pre', 'ln_final.normalized')
    """
    layer = parse_layer(site)
    suffix = suffix_of(site).replace("hook_", "")
    return suffix if layer is None else f"{layer} {suffix}"


def lens_grid_figure(result: LensResult, max_rows: int = 40) -> Figure:
    """Layer x position grid: cell colour = probability of the lens's top token, text = that token.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> from mechscope.methods.lens import logit_lens
        >>> fig = lens_grid_figure(logit_lens(model, torch.tensor([[1, 2, 3]]), k=1))
        >>> type(fig).__name__
        'Figure'
    """
    probs = result.top_probs[..., 0].float()
    rows = list(range(len(result.layers)))
    if len(rows) > max_rows:  # keep the first and last rows, thin the middle
        step = -(-len(rows) // max_rows)
        rows = sorted({*rows[::step], rows[-1]})
    n_pos = probs.shape[1]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * n_pos + 2), max(3.0, 0.32 * len(rows) + 1.5)))
    image = ax.imshow(probs[rows].numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for i, row in enumerate(rows):
        for pos in range(n_pos):
            colour = "white" if probs[row, pos] > 0.6 else "black"
            ax.text(pos, i, _short(result.top_tokens[row][pos][0]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_yticks(range(len(rows)), [row_label(result.layers[r]) for r in rows], fontsize=7)
    ax.set_xticks(range(n_pos), [_short(t) for t in result.tokens], rotation=60, ha="right", fontsize=7)
    ax.set_title(f"{result.lens} lens: top token and its probability")
    fig.colorbar(image, ax=ax, fraction=0.03, label="probability")
    fig.tight_layout()
    return fig


def heads_figure(table: Sequence[HeadScores]) -> Figure:
    """One heatmap per detector, layers x heads.

    Example:
        >>> from mechscope.methods.heads import HeadScores
        >>> row = dict(prev_token=0.8, duplicate_token=0.0, induction=0.1, bos=0.0, entropy=1.0, label="prev_token")
        >>> fig = heads_figure([HeadScores(layer=l, head=h, **row) for l in range(2) for h in range(3)])
        >>> len(fig.axes) >= 4                                      # one heatmap per detector
        True
    """
    fig, axes = plt.subplots(1, len(DETECTORS), figsize=(3.2 * len(DETECTORS), 0.18 * (table[-1].layer + 1) + 2.2),
                             squeeze=False)
    for ax, detector in zip(axes[0], DETECTORS, strict=True):
        grid = scores_tensor(table, detector)
        image = ax.imshow(grid.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(detector)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.02, label="mean attention")
    return fig


def lens_kl_figure(rows: Sequence[Any]) -> Figure:
    """Held-out KL to the final distribution per site, logit lens vs tuned lens (`LayerEval` rows).

    Example:
        >>> from mechscope.methods.tuned_lens import LayerEval
        >>> rows = [LayerEval(f"blocks.{i}.hook_resid_pre", 3.0 - i, 1.0 - i / 3, 90.0, 40.0) for i in range(3)]
        >>> type(lens_kl_figure(rows)).__name__
        'Figure'
    """
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([r.kl_logit for r in rows], label="logit lens", marker="o", ms=3)
    ax.plot([r.kl_tuned for r in rows], label="tuned lens", marker="o", ms=3)
    ax.set_xlabel("layer (resid_pre; last = final resid_post)")
    ax.set_ylabel("KL(final || lens), nats")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.legend()
    fig.tight_layout()
    return fig


def toy_history_figure(history: Sequence[dict[str, float]], chance: float) -> Figure:
    """Induction toy: training loss and loss on each copy of repeated sequences through training.

    Example:
        >>> history = [{"step": s, "train_loss": 3.0 - s / 100, "first_copy_loss": 3.0, "second_copy_loss": 3.0 - s / 50}
        ...            for s in (0, 50, 100)]
        >>> type(toy_history_figure(history, chance=3.0)).__name__
        'Figure'
    """
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, [h["train_loss"] for h in history], label="training loss")
    ax.plot(steps, [h["first_copy_loss"] for h in history], label="first copy")
    ax.plot(steps, [h["second_copy_loss"] for h in history], label="second (repeated) copy")
    ax.axhline(chance, color="grey", ls="--", lw=1, label="chance (ln n_tokens)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.legend()
    fig.tight_layout()
    return fig
