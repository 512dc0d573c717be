"""Writing results from the apps: figures as tagged PNG bytes; files go through `core.files`'s guard."""

from __future__ import annotations

import base64
import io
from typing import Any

from mechscope.core.files import MARKER, write_bytes, write_json, write_text

__all__ = ["MARKER", "figure_png", "png_data_uri", "write_bytes", "write_json", "write_text"]


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes, tagged so later runs know mechscope wrote it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": "mechscope"})
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
