"""Small file helpers shared across layers: content hashes and JSONL rows with line numbers.

Example:
    >>> from pathlib import Path
    >>> p = Path(__import__("tempfile").mkdtemp()) / "a.jsonl"
    >>> _ = p.write_text('{"text": "hi"}\\n\\n{"text": "yo"}\\n')
    >>> [(n, row["text"]) for n, row in iter_jsonl(p)]
    [(1, 'hi'), (3, 'yo')]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; a bad line raises ValueError naming it."""
    with Path(path).open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
