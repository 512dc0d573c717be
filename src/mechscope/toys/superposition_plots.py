"""Pictures of a superposition sweep: feature directions (m = 2) and norm/interference bars.

Figures are drawn with :class:`matplotlib.figure.Figure` (Agg canvas), never with pyplot,
so no GUI backend is touched.

Example:
    >>> result = train_superposition(SuperpositionConfig(n_features=5, d_hidden=2))  # doctest: +SKIP
    >>> plot_feature_directions(result, "directions.png")                              # doctest: +SKIP
    >>> plot_norms_and_superposition(result, "norms.png")                              # doctest: +SKIP
"""

from __future__ import annotations

import os

from matplotlib import cm, colormaps, colors
from matplotlib.figure import Figure

from mechscope.core.files import save_figure
from mechscope.toys.superposition import REPRESENTED_NORM, SuperpositionResult


def plot_feature_directions(
    result: SuperpositionResult, path: str | os.PathLike | None = None, force: bool = False
) -> Figure:
    """One panel per sparsity with each feature's direction ``W_i`` in the 2-d bottleneck.

    Arrows are coloured by importance (dark = most important). Needs ``d_hidden == 2``.
    Saves to ``path`` (``.svg`` by suffix, else PNG) when given; a file that mechscope did not
    write is kept unless ``force``.

    Example:
        >>> from mechscope.toys.superposition import SuperpositionConfig, train_superposition
        >>> result = train_superposition(SuperpositionConfig(n_features=5, d_hidden=2, sparsities=(0.0, 0.9),
        ...     instances_per_sparsity=1, steps=10, batch_size=64, eval_samples=64))
        >>> fig = plot_feature_directions(result, "directions.png")
        >>> os.path.exists("directions.png")
        True
    """
    if result.config.d_hidden != 2:
        raise ValueError(
            f"feature directions can be drawn for d_hidden == 2 only, got {result.config.d_hidden}"
        )
    n_panels = len(result.results)
    fig = Figure(figsize=(2.6 * n_panels, 3.0), layout="constrained")
    cmap = colormaps["viridis"]
    n = result.config.n_features
    for idx, res in enumerate(result.results):
        ax = fig.add_subplot(1, n_panels, idx + 1)
        W = res.W.numpy()
        for i in range(n):
            color = cmap(i / max(n - 1, 1))
            ax.plot([0, W[0, i]], [0, W[1, i]], color=color, lw=1.5)
            ax.scatter([W[0, i]], [W[1, i]], color=color, s=12, zorder=3)
        lim = max(1.2, float(abs(W).max()) * 1.1)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"S = {res.sparsity:g}\n{res.n_represented}/{n} features", fontsize=9)
    fig.suptitle(f"Feature directions, n = {n}, m = 2", fontsize=10)
    if path is not None:
        save_figure(path, fig, force, dpi=120)
    return fig


def plot_norms_and_superposition(
    result: SuperpositionResult, path: str | os.PathLike | None = None, force: bool = False
) -> Figure:
    """Per sparsity, a bar of ``||W_i||`` for each feature coloured by its interference.

    Colour runs from black (no interference, the feature owns its direction) to yellow
    (interference >= 1). The dashed line is the represented threshold ``||W_i|| = 0.5``.

    Example:
        >>> from mechscope.toys.superposition import SuperpositionConfig, train_superposition
        >>> result = train_superposition(SuperpositionConfig(n_features=5, d_hidden=2, sparsities=(0.0, 0.9),
        ...     instances_per_sparsity=1, steps=10, batch_size=64, eval_samples=64))
        >>> fig = plot_norms_and_superposition(result)
        >>> type(fig).__name__
        'Figure'
    """
    n_panels = len(result.results)
    n = result.config.n_features
    fig = Figure(figsize=(2.2 * n_panels + 1.0, 0.18 * n + 2.0), layout="constrained")
    norm = colors.Normalize(vmin=0.0, vmax=1.0)
    cmap = colormaps["plasma"]
    for idx, res in enumerate(result.results):
        ax = fig.add_subplot(1, n_panels, idx + 1)
        ax.barh(range(n), res.norms, color=[cmap(norm(min(v, 1.0))) for v in res.interference])
        ax.axvline(REPRESENTED_NORM, color="grey", ls="--", lw=0.8)
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(0, max(1.2, max(res.norms) * 1.05))
        ax.set_title(f"S = {res.sparsity:g}\n{res.dims_per_feature:.2f} dims/feature", fontsize=9)
        ax.set_xlabel("||W_i||", fontsize=8)
        if idx == 0:
            ax.set_ylabel("feature (by importance)", fontsize=8)
        else:
            ax.set_yticks([])
    fig.suptitle(f"Feature norms, n = {n}, m = {result.config.d_hidden}", fontsize=10)
    mappable = cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=fig.axes, label="interference", shrink=0.8)
    if path is not None:
        save_figure(path, fig, force, dpi=120)
    return fig
