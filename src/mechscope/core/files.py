"""File helpers shared by every layer: content hashes, JSONL rows, atomic writes and the write guard.

The write guard is the one place that decides what mechscope may write. A file is *ours* when it
is a JSON object with a `provenance` block, an HTML/SVG file carrying `MARKER`, a PNG tagged
`Software: mechscope`, or any file inside a folder that holds `OWNER_FILE`. Anything else that
already exists is kept unless the caller passes `force=True` (the CLI's `--force`).

Example:
    >>> from pathlib import Path
    >>> p = Path(__import__("tempfile").mkdtemp()) / "a.jsonl"
    >>> _ = p.write_text('{"text": "hi"}\\n\\n{"text": "yo"}\\n')
    >>> [(n, row["text"]) for n, row in iter_jsonl(p)]
    [(1, 'hi'), (3, 'yo')]
    >>> write_text(p, "mine")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mechscope.core.errors.OutputExistsError: ... exists and was not written by mechscope; choose another path or pass --force.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mechscope.core.errors import BadInputError, OutputExistsError

MARKER = "<!-- written by mechscope -->"
OWNER_FILE = ".mechscope"
PathLike = str | os.PathLike[str]


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks.

    Example:
        >>> from pathlib import Path
        >>> _ = Path("hello.txt").write_bytes(b"hello")
        >>> sha256_file("hello.txt")[:16]
        '2cf24dba5fb0a30e'
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def iter_jsonl(path: PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; a bad line raises ValueError naming it.

    Example:
        >>> from pathlib import Path
        >>> _ = Path("rows.jsonl").write_text('{"a": 1}\\n\\n{"a": 2}\\n')
        >>> list(iter_jsonl("rows.jsonl"))
        [(1, {'a': 1}), (3, {'a': 2})]
    """
    with Path(path).open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc


def written_by_mechscope(path: PathLike) -> bool:
    """True when `path` is a file mechscope wrote (see the module docstring for the rules).

    Example:
        >>> from pathlib import Path
        >>> _ = Path("theirs.txt").write_text("not ours")
        >>> _ = write_json("ours.json", {"provenance": {}, "value": 1})
        >>> written_by_mechscope("theirs.txt"), written_by_mechscope("ours.json")
        (False, True)
    """
    path = Path(path)
    if (path.parent / OWNER_FILE).is_file():
        return True
    try:
        if path.suffix == ".json":
            value = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(value, dict) and "provenance" in value
        if path.suffix in (".html", ".svg"):
            return MARKER in path.read_text(errors="ignore")[:4096]
        if path.suffix == ".png":
            return b"mechscope" in path.read_bytes()[:2048]
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return False


def check_writable(path: PathLike, force: bool = False) -> Path:
    """Return `path` if mechscope may write it: absent, ours, or `force`; otherwise raise OutputExistsError.

    Example:
        >>> from pathlib import Path
        >>> check_writable("new.json")
        PosixPath('new.json')
        >>> _ = Path("notes.txt").write_text("someone else's")
        >>> check_writable("notes.txt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mechscope.core.errors.OutputExistsError: notes.txt exists and was not written by mechscope; ...
        >>> check_writable("notes.txt", force=True)
        PosixPath('notes.txt')
    """
    target = Path(path)
    if target.is_dir():
        raise OutputExistsError(f"{target} is a folder; give a file path.")
    if target.exists() and not force and not written_by_mechscope(target):
        raise OutputExistsError(f"{target} exists and was not written by mechscope; choose another path or pass --force.")
    return target


def claim_output_dir(folder: PathLike, force: bool = False) -> Path:
    """Create `folder` (or accept it when empty or already ours) and mark it as mechscope's.

    A non-empty folder without `OWNER_FILE` is refused unless `force`. Files that mechscope
    then writes inside it count as ours, so a rerun may replace them.

    Example:
        >>> folder = claim_output_dir("run1")
        >>> sorted(p.name for p in folder.iterdir())
        ['.mechscope']
        >>> _ = write_text(folder / "notes.txt", "ours now")   # files inside a claimed folder count as ours
        >>> written_by_mechscope(folder / "notes.txt")
        True
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} is a file; give a folder path.")
    owned = (folder / OWNER_FILE).is_file()
    if folder.is_dir() and not owned and any(folder.iterdir()) and not force:
        raise OutputExistsError(
            f"{folder} already holds files that mechscope did not write; choose an empty or new folder or pass --force."
        )
    folder.mkdir(parents=True, exist_ok=True)
    if not owned:
        (folder / OWNER_FILE).write_text("This folder was written by mechscope.\n")
    return folder


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` through a temporary file and `os.replace`, so readers never see half a file.

    No ownership check: for files that mechscope owns by construction (manifests, checkpoints).

    Example:
        >>> atomic_write_bytes("sub/data.bin", b"\\x00\\x01").read_bytes()
        b'\\x00\\x01'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: PathLike, value: Any) -> Path:
    """`atomic_write_bytes` of indented JSON (tensors and arrays become lists).

    Example:
        >>> import torch
        >>> print(atomic_write_json("meta.json", {"w": torch.tensor([1, 2])}).read_text())
        {
          "w": [
            1,
            2
          ]
        }
    """
    return atomic_write_bytes(path, (json.dumps(value, indent=2, default=_jsonable) + "\n").encode())


def write_bytes(path: PathLike, data: bytes, force: bool = False) -> Path:
    """Guarded, atomic write: refuse to replace a file that mechscope did not write unless `force`.

    Example:
        >>> write_bytes("blob.bin", b"abc").read_bytes()
        b'abc'
    """
    return atomic_write_bytes(check_writable(path, force), data)


def write_text(path: PathLike, text: str, force: bool = False) -> Path:
    """`write_bytes` of UTF-8 text.

    Example:
        >>> write_text("note.txt", "héllo").read_text(encoding="utf-8")
        'héllo'
    """
    return write_bytes(path, text.encode("utf-8"), force)


def write_json(path: PathLike, result: dict[str, Any], force: bool = False) -> Path:
    """Guarded write of a result, which must carry a `provenance` block, as indented JSON.

    Example:
        >>> import json
        >>> path = write_json("result.json", {"provenance": {"model": "toy"}, "score": 0.5})
        >>> json.loads(path.read_text())["score"]
        0.5
        >>> write_json("bare.json", {"score": 0.5})
        Traceback (most recent call last):
        ...
        ValueError: every JSON result carries a provenance block
    """
    if "provenance" not in result:
        raise ValueError("every JSON result carries a provenance block")
    return write_bytes(path, (json.dumps(result, indent=2, default=_jsonable) + "\n").encode(), force)


def figure_png(fig: Any, dpi: int = 110, close: bool = False) -> bytes:
    """A matplotlib figure as PNG bytes, tagged `Software: mechscope` so later runs know it is ours.

    `close=True` closes the figure afterwards (pyplot keeps every open figure alive).

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> fig, ax = plt.subplots()
        >>> figure_png(fig)[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
        >>> plt.close(fig)
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": "mechscope"})
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buffer.getvalue()


def figure_svg(fig: Any) -> bytes:
    """A matplotlib figure as SVG bytes carrying `MARKER` after the XML declaration.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> fig, ax = plt.subplots()
        >>> MARKER.encode() in figure_svg(fig)
        True
        >>> plt.close(fig)
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    head, _, rest = buffer.getvalue().partition(b"\n")
    return head + b"\n" + MARKER.encode() + b"\n" + rest


def save_figure(path: PathLike, fig: Any, force: bool = False, dpi: int = 110) -> Path:
    """Guarded write of a figure: SVG when `path` ends in `.svg`, PNG otherwise.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> fig, ax = plt.subplots()
        >>> path = save_figure("plot.svg", fig)
        >>> written_by_mechscope(path)
        True
        >>> plt.close(fig)
    """
    data = figure_svg(fig) if Path(path).suffix.lower() == ".svg" else figure_png(fig, dpi)
    return write_bytes(path, data, force)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
