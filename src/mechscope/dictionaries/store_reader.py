"""Read an activation store (see :mod:`mechscope.dictionaries.store`) as shuffled training batches.

Only shards listed in the manifest are read. Shuffling is two-level and seeded: the shard
order is permuted each epoch, and rows are mixed in a buffer that spans several shards.
`batches` reads a single-site store (or the first site); `site_batches` reads chosen sites of a
multi-site store as row-aligned tuples, for transcoders and cross-layer transcoders.

Example:
    >>> reader = open_store("out/acts")                       # doctest: +SKIP
    >>> for x in reader.batches(4096, seed=0):                # doctest: +SKIP
    ...     x.shape
    torch.Size([4096, 576])
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from mechscope.core.errors import unknown_name_message
from mechscope.core.files import sha256_file
from mechscope.dictionaries.errors import DictionaryFormatError
from mechscope.dictionaries.store import STORE_DTYPES, read_manifest, site_key
from mechscope.dictionaries.streaming import rebatch

logger = logging.getLogger(__name__)


@dataclass
class StoreReader:
    """A completed (or partial) activation store on disk.

    Attributes: `folder`, `manifest` (the parsed JSON), `d` (activation width), `n_tokens`
    (rows in the listed shards), `hook_name`.

    Example:
        >>> manifest = {"d": 8, "n_tokens": 100, "hook_name": "blocks.0.hook_resid_post",
        ...             "hook_names": ["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"], "ds": [8, 8]}
        >>> store = StoreReader(Path("acts"), manifest)             # normally from open_store(folder)
        >>> store.d, store.n_tokens, store.site_index("blocks.0.hook_mlp_out"), store.ds
        (8, 100, 1, [8, 8])
        >>> next(open_store("out/acts").batches(4096)).shape       # doctest: +SKIP
        torch.Size([4096, 576])
    """

    folder: Path
    manifest: dict[str, Any]

    @property
    def d(self) -> int:
        """Activation width."""
        return int(self.manifest["d"])

    @property
    def n_tokens(self) -> int:
        """Number of activation rows in the completed shards."""
        return int(self.manifest["n_tokens"])

    @property
    def hook_name(self) -> str:
        """The (first) hook site the activations were read at."""
        return str(self.manifest["hook_name"])

    @property
    def hook_names(self) -> list[str]:
        """Every site of the store, in shard-key order (`site_key(i)` holds `hook_names[i]`)."""
        return list(self.manifest["hook_names"])

    @property
    def ds(self) -> list[int]:
        """Width of each site, aligned with `hook_names`."""
        return [int(d) for d in self.manifest["ds"]]

    def site_index(self, site: str | int) -> int:
        """Position of a site given by hook name or index (a clear error naming the store's sites)."""
        names = self.hook_names
        if isinstance(site, int) and not isinstance(site, bool):
            if 0 <= site < len(names):
                return site
            raise DictionaryFormatError(f"{self.folder}: site index {site} out of range (the store has {len(names)})")
        if site not in names:
            raise DictionaryFormatError(f"{self.folder}: " + unknown_name_message("site", str(site), names))
        return names.index(site)

    def shard_files(self) -> list[Path]:
        """Paths of the completed shards, in corpus order."""
        return [self.folder / s["file"] for s in self.manifest["shards"]]

    def load_shard(self, index: int, key: str = "acts") -> Tensor:
        """Tensor `key` (`"acts"` [n, d] or `"tokens"` [n]) of shard `index`; clear errors on a bad file."""
        entry = self.manifest["shards"][index]
        path = self.folder / entry["file"]
        if not path.is_file():
            raise DictionaryFormatError(f"{path}: shard listed in the manifest is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                t = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise DictionaryFormatError(f"{path}: unreadable shard ({exc})") from exc
        if t.shape[0] != entry["n_tokens"]:
            raise DictionaryFormatError(f"{path}: holds {t.shape[0]} rows, the manifest says {entry['n_tokens']}")
        return t

    def verify(self) -> None:
        """Check every listed shard against the sha256 in the manifest (raises `DictionaryFormatError`)."""
        for entry, path in zip(self.manifest["shards"], self.shard_files(), strict=True):
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                raise DictionaryFormatError(f"{path}: missing or its sha256 does not match the manifest")

    def all_activations(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Every row `[n_tokens, d]` of the first site in corpus order (for small stores and tests)."""
        return torch.cat([self.load_shard(i).to(dtype) for i in range(len(self.manifest["shards"]))])

    def _rows(self, index: int, sites: list[int], dtype: torch.dtype) -> Tensor:
        """Shard `index`'s rows of `sites`, concatenated along the features: `[n, sum_i d_i]`."""
        parts = [self.load_shard(index, site_key(i)).to(dtype) for i in sites]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def site_batches(self, batch_size: int, sites: Sequence[str | int] | None = None, *, seed: int = 0,
                     shuffle: bool = True, buffer_tokens: int = 262_144, epochs: int | None = 1,
                     dtype: torch.dtype = torch.float32, drop_last: bool = True) -> Iterator[tuple[Tensor, ...]]:
        """Row-aligned batches `([batch_size, d_a], [batch_size, d_b], ...)` of `sites` (default: all of them).

        Sites are hook names or indices into `hook_names`. Shuffling as in `batches` (the same
        `seed` gives the same rows as `batches` would), each row of every site from the same
        token: a pair feeds a transcoder directly, `Trainer.fit(reader.site_batches(4096, [x_site, y_site]))`.

        Example:
            >>> x, t = next(reader.site_batches(1024, ["blocks.3.ln2.hook_out",   # doctest: +SKIP
            ...                                       "blocks.3.hook_mlp_out"]))
        """
        chosen = [self.site_index(s) for s in (sites if sites is not None else range(len(self.hook_names)))]
        if not chosen:
            raise ValueError("site_batches needs at least one site")
        widths = [self.ds[i] for i in chosen]
        for batch in self._batches(batch_size, chosen, seed, shuffle, buffer_tokens, epochs, dtype, drop_last):
            yield tuple(batch.split(widths, dim=1))

    def batches(self, batch_size: int, *, seed: int = 0, shuffle: bool = True, buffer_tokens: int = 262_144,
                epochs: int | None = 1, dtype: torch.dtype = torch.float32,
                drop_last: bool = True) -> Iterator[Tensor]:
        """Batches `[batch_size, d]` of activations, shuffled across shards with a seeded buffer.

        `epochs=None` repeats forever (each epoch with a new shard order and mixing). The same
        `seed` gives the same batches, so a resumed trainer can skip the ones it used.

        Example:
            >>> next(reader.batches(1024, seed=0)).shape   # doctest: +SKIP
            torch.Size([1024, 576])
        """
        return self._batches(batch_size, [0], seed, shuffle, buffer_tokens, epochs, dtype, drop_last)

    def _batches(self, batch_size: int, sites: list[int], seed: int, shuffle: bool, buffer_tokens: int,
                 epochs: int | None, dtype: torch.dtype, drop_last: bool) -> Iterator[Tensor]:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        gen = torch.Generator().manual_seed(seed)
        n_shards = len(self.manifest["shards"])
        if n_shards == 0:
            raise DictionaryFormatError(f"{self.folder}: the store has no completed shards")
        epoch = 0
        while epochs is None or epoch < epochs:
            order = torch.randperm(n_shards, generator=gen).tolist() if shuffle else range(n_shards)
            chunks = (self._rows(i, sites, dtype) for i in order)
            yield from rebatch(chunks, batch_size, buffer_tokens if shuffle else 0, gen, drop_last=drop_last)
            epoch += 1

    def throughput(self, batch_size: int = 4096, min_tokens: int | None = None, **kwargs: Any) -> float:
        """Measured reading rate in tokens per second, shard loading and shuffling included.

        Reads at least `min_tokens` rows (default: two passes over the store, and at least
        1M rows), copying each batch to contiguous memory as a trainer would receive it.

        Example:
            >>> reader.throughput() > 1e5   # doctest: +SKIP
            True
        """
        want = min_tokens if min_tokens is not None else max(2 * self.n_tokens, 1_000_000)
        n_batches = max(1, want // batch_size)
        start = time.perf_counter()
        it = self.batches(batch_size, epochs=None, **kwargs)
        for _ in range(n_batches):
            next(it).contiguous().sum()
        return n_batches * batch_size / (time.perf_counter() - start)


def open_store(folder: str | os.PathLike[str]) -> StoreReader:
    """Open the activation store in `folder` (reads and checks its manifest).

    Example:
        >>> open_store("out/acts").n_tokens   # doctest: +SKIP
        500000
    """
    path = Path(folder)
    manifest = read_manifest(path)
    if manifest.get("dtype") not in STORE_DTYPES:
        raise DictionaryFormatError(f"{path}: unknown store dtype {manifest.get('dtype')!r}")
    if not manifest.get("complete"):
        logger.warning("%s is incomplete (%d of %d tokens); reading the completed shards", path,
                       manifest["n_tokens"], manifest.get("target_tokens", 0))
    return StoreReader(path, manifest)
