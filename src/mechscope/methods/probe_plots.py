"""Picture of a probe report: held-out score and control score per layer.

Example:
    >>> plot_probe_report(report, "probes.png")     # doctest: +SKIP
"""

from __future__ import annotations

import os

from matplotlib.figure import Figure

from mechscope.core.files import save_figure
from mechscope.methods.probes import ProbeReport


def plot_probe_report(
    report: ProbeReport, path: str | os.PathLike | None = None, title: str | None = None, force: bool = False
) -> Figure:
    """Line plot of the held-out score (accuracy or R^2) and control score per layer.

    The gap between the two lines, shaded, is the selectivity; the dotted line is chance
    (majority class) for classification. Saves to ``path`` (PNG, or SVG by suffix) when given,
    never over a file that mechscope did not write unless ``force``.

    Example:
        >>> import torch
        >>> from mechscope.methods.probes import fit_probes_by_layer
        >>> _ = torch.manual_seed(0)
        >>> labels = [i % 2 for i in range(40)]
        >>> acts = {layer: torch.randn(40, 4) + layer * torch.tensor(labels)[:, None] for layer in range(3)}
        >>> report = fit_probes_by_layer(acts, labels, [f"w{i % 8}" for i in range(40)])
        >>> fig = plot_probe_report(report, "probes.png", title="a toy property")
        >>> type(fig).__name__
        'Figure'
    """
    layers = sorted(report.layers)
    scores = [report.layers[lay].score for lay in layers]
    fig = Figure(figsize=(max(4.0, 0.25 * len(layers) + 2.5), 3.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(layers, scores, marker="o", ms=3, label=report.metric)
    controls = [report.layers[lay].control_score for lay in layers]
    if all(c is not None for c in controls):
        ax.plot(layers, controls, marker="s", ms=3, label=f"control {report.metric}")
        ax.fill_between(layers, controls, scores, alpha=0.15, label="selectivity")
    if report.task == "classification":
        ax.axhline(report.layers[layers[0]].chance, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"held-out {report.metric}")
    ax.set_title(
        title or f"Linear probes ({report.n_train} train / {report.n_held_out} held out)", fontsize=10
    )
    ax.legend(fontsize=8)
    if path is not None:
        save_figure(path, fig, force, dpi=120)
    return fig
