"""Writing results from the apps: the guarded writers and tagged figures of `core.files`, and inline images."""

from __future__ import annotations

import base64

from mechscope.core.files import MARKER, figure_png, write_bytes, write_json, write_text

__all__ = ["MARKER", "figure_png", "png_data_uri", "write_bytes", "write_json", "write_text"]


def png_data_uri(png: bytes) -> str:
    """PNG bytes as a `data:` URI, for an `<img src=...>` inside a self-contained HTML page.

    Example:
        >>> png_data_uri(b"\\x89PNG")
        'data:image/png;base64,iVBORw=='
    """
    return "data:image/png;base64," + base64.b64encode(png).decode()
