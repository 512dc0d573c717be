"""`PatchResult`: the scores of a patching experiment with the labels of every axis.

Scores are normalized recovery for activation patching, `(patched - corrupt) / (clean -
corrupt)`, and the same quantity estimated to first order for attribution patching. Axes
are named (`by`), e.g. `("layer", "pos")` with labels `[[0, 1, ...], ["The", " E", ...]]`.

Example:
    >>> import torch
    >>> r = PatchResult(torch.tensor([[0.1, 0.9], [0.0, 1.0]]), by=("layer", "pos"),
    ...                 labels=[[0, 1], ["A", "B"]], site="resid_pre", method="activation",
    ...                 mode="denoise", clean=2.0, corrupt=-1.0)
    >>> r.top(1)
    [{'layer': 1, 'pos': 'B', 'index': [1, 1], 'score': 1.0}]
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.core.files import MARKER, check_writable, save_figure, write_bytes, write_text

log = logging.getLogger(__name__)


@dataclass
class PatchResult:
    """Scores `[*axis sizes]` with axis names `by`, labels per axis, and the run's context.

    Example:
        >>> import torch
        >>> result = PatchResult(torch.tensor([[0.1, 0.9], [0.0, 0.2]]), ("layer", "pos"), [[0, 1], ["The", " cat"]],
        ...                      site="resid_pre", method="activation", mode="denoise", clean=3.0, corrupt=-1.0)
        >>> result.shape, result[0, 1].item()
        ((2, 2), 0.8999999761581421)
        >>> result.top(1)                                                          # doctest: +ELLIPSIS
        [{...'score': 0.899...}]
    """

    scores: Tensor
    by: tuple[str, ...]
    labels: list[list[Any]]
    site: str
    method: str
    mode: str
    clean: float
    corrupt: float
    metric: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scores.dim() != len(self.by) or len(self.labels) != len(self.by):
            raise ValueError(f"scores have {self.scores.dim()} axes; by={self.by} and {len(self.labels)} label lists.")
        for axis, (size, labels) in enumerate(zip(self.scores.shape, self.labels, strict=True)):
            if size != len(labels):
                raise ValueError(f"Axis {self.by[axis]!r} has {size} scores but {len(labels)} labels.")

    def __getitem__(self, index: Any) -> Tensor:
        return self.scores[index]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.scores.shape)

    def top(self, k: int = 10, by_abs: bool = False) -> list[dict[str, Any]]:
        """The `k` highest-scoring cells (largest `|score|` with `by_abs`), labelled, best first."""
        flat = self.scores.reshape(-1).float().nan_to_num(nan=float("-inf"))
        order = (flat.abs() if by_abs else flat).argsort(descending=True)[:k]
        rows = []
        for flat_index in order.tolist():
            index = list(torch.unravel_index(torch.tensor(flat_index), self.shape))
            index = [int(i) for i in index]
            row: dict[str, Any] = {name: self.labels[a][i] for a, (name, i) in enumerate(zip(self.by, index, strict=True))}
            row["index"] = index
            row["score"] = float(self.scores.reshape(-1)[flat_index])
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict: site, method, mode, by, labels, scores (nested lists), clean, corrupt, ..."""
        return {
            "site": self.site,
            "method": self.method,
            "mode": self.mode,
            "by": list(self.by),
            "labels": self.labels,
            "scores": _finite(self.scores.float().tolist()),
            "clean": _finite(float(self.clean)),
            "corrupt": _finite(float(self.corrupt)),
            "metric": self.metric,
            **self.extra,
            "provenance": self.provenance,
        }

    def to_json(self, path: str | Path | None = None, force: bool = False) -> str:
        """The result as JSON text; also written to `path` when given (never over a foreign file unless `force`)."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            write_text(path, text, force)
            log.info("wrote %s", path)
        return text

    # -- pictures ------------------------------------------------------------------------------
    def figure(self, title: str | None = None) -> Any:
        """A matplotlib figure (Agg): a heatmap per 2-D slice, diverging colours centred at 0."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        scores = self.scores.float()
        by, labels = list(self.by), list(self.labels)
        if scores.dim() == 1:
            scores, by, labels = scores[None], ["", *by], [[""], *labels]
        if scores.dim() == 3 and scores.shape[0] > 4:  # e.g. layer x head x pos: one row per (layer, head)
            rows = [f"{a}.{b}" for a in labels[0] for b in labels[1]]
            scores, by, labels = scores.reshape(-1, scores.shape[2]), [f"{by[0]}.{by[1]}", by[2]], [rows, labels[2]]
        panels = [(None, scores)] if scores.dim() == 2 else [(lab, scores[i]) for i, lab in enumerate(labels[0])]
        if scores.dim() > 3:
            raise ValueError("plot() draws results with at most 3 axes; index the scores first.")
        row_axis, col_axis = (by[-2], by[-1])
        row_labels, col_labels = labels[-2], labels[-1]
        limit = float(scores.abs().nan_to_num().max()) or 1.0
        width = min(4 + 0.45 * len(col_labels), 22)
        height = min(1.5 + 0.22 * len(row_labels), 12)
        fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
        for ax, (panel, data) in zip(axes[0], panels, strict=True):
            image = ax.imshow(data.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto",
                              interpolation="nearest")
            ax.set_xticks(range(len(col_labels)), [_tick(x) for x in col_labels], rotation=60, ha="right",
                          fontsize=8)
            step = max(1, len(row_labels) // 30)
            ax.set_yticks(range(0, len(row_labels), step), [_tick(x) for x in row_labels[::step]], fontsize=8)
            ax.set_xlabel(col_axis)
            ax.set_ylabel(row_axis)
            if panel is not None:
                ax.set_title(f"{by[0]} {panel}", fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.04)
        value = "recovery" if self.method == "activation" else "estimated recovery"
        fig.suptitle(title or f"{self.method} patching ({self.mode}) of {self.site}: {value}\n"
                     f"metric clean {self.clean:.3f}, corrupt {self.corrupt:.3f}", fontsize=10)
        fig.tight_layout()
        return fig

    def png_bytes(self, title: str | None = None, dpi: int = 110) -> bytes:
        """The heatmap as PNG bytes."""
        import matplotlib.pyplot as plt

        fig = self.figure(title)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": "mechscope"})
        plt.close(fig)
        return buffer.getvalue()

    def html_fragment(self, title: str | None = None, k: int = 10) -> str:
        """An HTML fragment: the heatmap (PNG inline, base64) and a table of the top cells."""
        png = base64.b64encode(self.png_bytes(title)).decode()
        head = "".join(f"<th>{html.escape(a)}</th>" for a in self.by)
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(repr(r[a]))}</td>" for a in self.by)
            + f"<td>{r['score']:.4f}</td></tr>" for r in self.top(k)
        )
        return (f'<figure><img alt="patching heatmap" src="data:image/png;base64,{png}"/></figure>\n'
                f"<table><tr>{head}<th>score</th></tr>{rows}</table>")

    def plot(self, path: str | Path, title: str | None = None, force: bool = False) -> Path:
        """Write the heatmap to `path`: PNG or SVG by suffix, or a standalone `.html` page.

        A file that mechscope did not write is kept unless `force` (see `mechscope.core.files`).
        """
        path = check_writable(path, force)
        if path.suffix.lower() in (".html", ".htm"):
            body = self.html_fragment(title)
            write_text(path, f"<!doctype html>\n{MARKER}\n<html><head><meta charset='utf-8'><title>"
                             f"{html.escape(self.site)}</title></head><body>{body}</body></html>", force)
        elif path.suffix.lower() == ".svg":
            import matplotlib.pyplot as plt

            fig = self.figure(title)
            save_figure(path, fig, force)
            plt.close(fig)
        else:
            write_bytes(path, self.png_bytes(title), force)
        log.info("wrote %s", path)
        return path


def _tick(label: Any) -> str:
    return repr(label)[1:-1] if isinstance(label, str) else str(label)


def _finite(values: Any) -> Any:
    """JSON has no NaN: write None for non-finite numbers."""
    if isinstance(values, list):
        return [_finite(v) for v in values]
    return values if values == values and values not in (float("inf"), float("-inf")) else None
