"""Writing results: JSON, PNG and HTML files, atomically, never over a file mechscope did not write.

A file is ours when it is a JSON object with a `provenance` block, or HTML/PNG/SVG written
next to such a result; anything else already at the path is kept unless `force=True`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mechscope.core.errors import MechscopeError

MARKER = "<!-- written by mechscope -->"


def _ours(path: Path) -> bool:
    if path.suffix == ".json":
        try:
            return "provenance" in json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return False
    if path.suffix in (".html", ".svg"):
        return MARKER in path.read_text(errors="ignore")[:4096]
    if path.suffix == ".png":
        return b"mechscope" in path.read_bytes()[:2048]
    return False


def write_bytes(path: str | os.PathLike[str], data: bytes, force: bool = False) -> Path:
    """Write `data` to `path` atomically; refuse to replace a file that mechscope did not write."""
    target = Path(path)
    if target.exists() and not force and not _ours(target):
        raise MechscopeError(f"{target} exists and was not written by mechscope; choose another path or pass --force.")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json(path: str | os.PathLike[str], result: dict[str, Any], force: bool = False) -> Path:
    """Write a result (which must carry `provenance`) as indented JSON."""
    if "provenance" not in result:
        raise ValueError("every JSON result carries a provenance block")
    return write_bytes(path, (json.dumps(result, indent=2, default=_jsonable) + "\n").encode(), force)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes, tagged so later runs know mechscope wrote it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": "mechscope"})
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
