"""Text corpora: the default offline corpus, local files, and packing into token contexts.

The default corpus is text that every Python install carries, so activation stores,
dictionaries and lenses can be trained with no network:

1. ``pydoc``: the interpreter's documentation topics (``pydoc_data.topics.topics``), one
   document per topic, topics sorted by name.
2. ``stdlib``: standard-library docstrings, one document per module: the module
   docstring followed by the docstrings of the public classes and functions the module
   defines (methods are left out). Modules come from ``sys.stdlib_module_names`` plus
   their submodules, sorted by dotted name. Modules with side effects or test suites are
   never imported (see ``STDLIB_SKIP_PREFIXES``), nor private ones; modules that fail to
   import on this platform are skipped and logged at DEBUG level.

Measured size on CPython 3.11.7 (default tokenizer: SmolLM2-135M-Instruct)::

    part     documents   characters   tokens
    pydoc           79      464,891    112,951
    stdlib         484      911,762    242,274
    default        563    1,376,653    355,225

Other Python versions carry other text; :func:`corpus_fingerprint` tells corpora apart.

For more text, ``packages=("numpy", "torch", "transformers")`` appends the docstrings of
installed third-party packages. Those are read from the source files with :mod:`ast`
(nothing is imported), one document per file, files sorted by path. Their size depends
on the installed versions; measured with the default tokenizer::

    package              documents   characters     tokens
    numpy 2.4.6                163    1,534,711    483,553
    torch 2.13.0             1,537    4,765,053  1,289,769
    transformers 5.23.0      2,219    9,618,926  2,657,091

Other sources: a path to a ``.txt`` file (one document per file), a ``.jsonl`` file (one
document per line, read from ``text_field``), a ``.parquet`` file (one document per
row; needs ``pyarrow``), a folder (all such files below it, sorted), a list of paths, a
Hugging Face ``datasets.Dataset`` object, a folder written by
``Dataset.save_to_disk``, or ``"hf:NAME[:SPLIT]"`` for a dataset already in the local
Hugging Face cache.

Example:
    >>> docs = list(iter_documents("default"))          # doctest: +SKIP
    >>> len(docs)                                        # doctest: +SKIP
    563
    >>> train = iter_documents("default", split="train")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from mechscope.core.corpus_builtin import (  # noqa: F401  (re-exported: part of the corpus API)
    STDLIB_SKIP_PREFIXES,
    iter_package_docstrings,
    iter_pydoc_topics,
    iter_stdlib_docstrings,
    stdlib_module_names,
)
from mechscope.core.files import iter_jsonl

logger = logging.getLogger(__name__)

Split = Literal["train", "held_out"]
Source = str | os.PathLike | Sequence[str | os.PathLike] | Any

DEFAULT_HELD_OUT_FRACTION = 0.05
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")

# ----------------------------------------------------------------------------- local files


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict) or text_field not in row:
            raise ValueError(f"{path}:{lineno}: no {text_field!r} field")
        yield str(row[text_field])


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from exc
    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {pf.schema_arrow.names})")
    for batch in pf.iter_batches(columns=[text_field]):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield str(value)


def _iter_hf(dataset: Iterable[Any], text_field: str) -> Iterator[str]:
    for row in dataset:
        yield str(row[text_field])


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("dataset_dict.json", "state.json"))


def _iter_path(path: Path, text_field: str) -> Iterator[str]:
    if not path.exists():
        raise FileNotFoundError(f"corpus path {path} does not exist")
    if _is_saved_dataset(path):
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            for split in sorted(ds):
                yield from _iter_hf(ds[split], text_field)
        else:
            yield from _iter_hf(ds, text_field)
        return
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in FILE_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"no {'/'.join(FILE_SUFFIXES)} files under {path}")
        for f in files:
            yield from _iter_path(f, text_field)
        return
    if path.suffix == ".txt":
        yield path.read_text(encoding="utf-8")
    elif path.suffix == ".jsonl":
        yield from _iter_jsonl(path, text_field)
    elif path.suffix == ".parquet":
        yield from _iter_parquet(path, text_field)
    else:
        raise ValueError(f"unsupported corpus file {path}: expected one of {FILE_SUFFIXES}")


# ----------------------------------------------------------------------------- public API


def _iter_source(source: Source, text_field: str, packages: Sequence[str]) -> Iterator[str]:
    if isinstance(source, str) and source in ("default", "pydoc", "stdlib"):
        if source in ("default", "pydoc"):
            yield from iter_pydoc_topics()
        if source in ("default", "stdlib"):
            yield from iter_stdlib_docstrings()
    elif isinstance(source, str) and source.startswith("hf:"):
        import datasets

        name, _, split = source[3:].partition(":")
        yield from _iter_hf(datasets.load_dataset(name, split=split or "train"), text_field)
    elif isinstance(source, (str, os.PathLike)):
        yield from _iter_path(Path(source), text_field)
    elif isinstance(source, Sequence):
        for item in source:
            yield from _iter_path(Path(item), text_field)
    elif hasattr(source, "column_names") and hasattr(source, "__iter__"):
        yield from _iter_hf(source, text_field)
    else:
        raise TypeError(f"unsupported corpus source {source!r}")
    for package in packages:
        yield from iter_package_docstrings(package)


def held_out_score(document: str, seed: int = 0) -> float:
    """A number in [0, 1) fixed by the document's text and ``seed``.

    ``score = int(sha256(f"{seed}:" + text)[:16], 16) / 16**16``. A document is held out
    when ``score < held_out_fraction``, so the split does not move when documents are
    added or reordered, and duplicate documents always fall on the same side.

    Example:
        >>> 0.0 <= held_out_score("hello") < 1.0
        True
    """
    digest = hashlib.sha256(f"{seed}:{document}".encode()).hexdigest()
    return int(digest[:16], 16) / 16**16


def iter_documents(
    source: Source = "default",
    *,
    packages: Sequence[str] = (),
    text_field: str = "text",
    split: Split | None = None,
    held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION,
    split_seed: int = 0,
) -> Iterator[str]:
    """Yield documents (non-empty strings) from a corpus source in a deterministic order.

    Args:
        source: ``"default"`` (pydoc topics then stdlib docstrings), ``"pydoc"``,
            ``"stdlib"``, a path or list of paths (``.txt``, ``.jsonl``, ``.parquet``,
            folders, ``save_to_disk`` folders), ``"hf:NAME[:SPLIT]"``, or a
            ``datasets.Dataset``.
        packages: installed packages whose docstrings are appended (e.g. ``("numpy",)``).
        text_field: field or column holding the text in JSONL, parquet and datasets.
        split: ``None`` for all documents, else ``"train"`` or ``"held_out"``
            (see :func:`held_out_score`).
        held_out_fraction: expected fraction of documents in the held-out split.
        split_seed: salt of the split hash.

    Example:
        >>> docs = list(iter_documents("pydoc", split="held_out"))
        >>> 0 < len(docs) < 79
        True
    """
    if split not in (None, "train", "held_out"):
        raise ValueError(f"split must be None, 'train' or 'held_out', got {split!r}")
    if not 0.0 <= held_out_fraction <= 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1], got {held_out_fraction}")
    for doc in _iter_source(source, text_field, packages):
        if not doc.strip():
            continue
        if split is not None:
            is_held_out = held_out_score(doc, split_seed) < held_out_fraction
            if is_held_out != (split == "held_out"):
                continue
        yield doc


def corpus_fingerprint(source: Source = "default", **kwargs: Any) -> str:
    """SHA-256 hex digest identifying the exact document stream of a source.

    ``sha256(concat over documents of (len(utf8) as 8 bytes big-endian + utf8))``;
    keyword arguments are those of :func:`iter_documents`, so a split has its own
    fingerprint. Two corpora share a fingerprint only when they yield the same documents
    in the same order.

    Example:
        >>> len(corpus_fingerprint("pydoc"))
        64
    """
    h = hashlib.sha256()
    for doc in iter_documents(source, **kwargs):
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _separator_id(tokenizer: Any) -> int:
    for attr in ("eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError("tokenizer has neither an EOS nor a BOS token to separate documents")


def iter_token_contexts(
    tokenizer: Any,
    source: Source = "default",
    context_length: int = 128,
    *,
    batch_size: int = 32,
    max_contexts: int | None = None,
    prepend_bos: bool = True,
    tokenize_batch: int = 64,
    **document_kwargs: Any,
) -> Iterator[Tensor]:
    """Pack a corpus into fixed-length contexts of token ids, yielded in batches.

    Documents are tokenized without special tokens and concatenated, each preceded by a
    separator (the tokenizer's EOS id, else its BOS id). The stream is cut into rows of
    ``context_length`` tokens; with ``prepend_bos`` each row starts with the BOS id (the
    separator when there is no BOS) followed by ``context_length - 1`` stream tokens.
    The final incomplete row is dropped. Rows are grouped into LongTensors of shape
    ``[batch, context_length]`` with ``batch <= batch_size`` (only the last is smaller).

    Example:
        >>> for ids in iter_token_contexts(tok, "pydoc", 128, max_contexts=64):  # doctest: +SKIP
        ...     ids.shape
        torch.Size([32, 128])
    """
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2, got {context_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    sep = _separator_id(tokenizer)
    bos = getattr(tokenizer, "bos_token_id", None)
    bos = sep if bos is None else int(bos)
    body = context_length - 1 if prepend_bos else context_length

    buffer: list[int] = []
    rows: list[list[int]] = []
    emitted = 0

    def drain() -> Iterator[Tensor]:
        nonlocal buffer, rows, emitted
        while len(buffer) >= body:
            if max_contexts is not None and emitted + len(rows) >= max_contexts:
                break
            row = buffer[:body]
            buffer = buffer[body:]
            rows.append([bos, *row] if prepend_bos else row)
            if len(rows) == batch_size:
                emitted += len(rows)
                yield torch.tensor(rows, dtype=torch.long)
                rows = []

    def done() -> bool:
        return max_contexts is not None and emitted + len(rows) >= max_contexts

    pending: list[str] = []
    docs = iter_documents(source, **document_kwargs)
    for doc in docs:
        pending.append(doc)
        if len(pending) < tokenize_batch:
            continue
        for ids in tokenizer(pending, add_special_tokens=False)["input_ids"]:
            buffer.append(sep)
            buffer.extend(ids)
        pending = []
        yield from drain()
        if done():
            break
    if pending and not done():
        for ids in tokenizer(pending, add_special_tokens=False)["input_ids"]:
            buffer.append(sep)
            buffer.extend(ids)
        yield from drain()
    if rows:
        emitted += len(rows)
        yield torch.tensor(rows, dtype=torch.long)


def token_contexts(
    tokenizer: Any, source: Source = "default", context_length: int = 128, **kwargs: Any
) -> Tensor:
    """All packed contexts of :func:`iter_token_contexts` as one LongTensor ``[n, context_length]``.

    Example:
        >>> ids = token_contexts(tok, "pydoc", 64, max_contexts=10)   # doctest: +SKIP
        >>> ids.shape                                                  # doctest: +SKIP
        torch.Size([10, 64])
    """
    batches = list(iter_token_contexts(tokenizer, source, context_length, **kwargs))
    if not batches:
        return torch.empty(0, context_length, dtype=torch.long)
    return torch.cat(batches)
