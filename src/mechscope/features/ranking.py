"""Exact, order-free selections for feature collection: seeded hashes and per-group bottom-k ranking.

`mix_hash(seed, latent, index)` gives every (latent, token) a uniform, seeded priority;
`Ranked` keeps, per group (latent), the `k` entries of smallest (key, index) with a slab of
data per entry (a context window), so that what it keeps depends only on the whole stream,
never on how the stream was cut into chunks.

Example:
    >>> bottom_k(np.array([0, 0, 1]), np.array([2.0, 1.0, 3.0]), np.arange(3), k=1).tolist()
    [1, 2]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def mix_hash(seed: int, latent: np.ndarray, index: np.ndarray) -> np.ndarray:
    """A uint64 hash of (seed, latent, token index) (splitmix64 finaliser); uniform, seeded, order-free.

    Example:
        >>> int(mix_hash(0, np.array([1]), np.array([2]))[0]) == int(mix_hash(0, np.array([1]), np.array([2]))[0])
        True
    """
    with np.errstate(over="ignore"):
        z = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
             + latent.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             + index.astype(np.uint64) * np.uint64(0x94D049BB133111EB))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def bottom_k(group: np.ndarray, key: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """Positions of the `k` entries of smallest (key, index) in each group, ordered by (group, key, index).

    Example:
        >>> bottom_k(np.array([0, 0, 0, 1]), np.array([3.0, 1.0, 2.0, 5.0]), np.arange(4), k=2).tolist()
        [1, 2, 3]
    """
    order = lexsort((index, key, group))
    g = group[order]
    rank = np.arange(len(g)) - np.searchsorted(g, g, side="left")
    return order[rank < k]


def lexsort(keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """`np.lexsort(keys)` (the last key primary) for int64, uint64 and float64 keys, by stable radix sorts.

    Floats are ordered by their bits (so -0.0 sorts before 0.0; no NaN expected).

    Example:
        >>> lexsort((np.array([2, 1, 0]), np.array([0.5, -1.0, 0.5]))).tolist()
        [1, 2, 0]
    """
    order: torch.Tensor | None = None
    for key in keys:
        sortable = torch.from_numpy(_as_sortable_int64(key))
        if order is None:
            order = torch.sort(sortable, stable=True).indices
        else:
            order = order[torch.sort(sortable[order], stable=True).indices]
    assert order is not None
    return order.numpy()


def _as_sortable_int64(key: np.ndarray) -> np.ndarray:
    """int64 values in the same order as `key`."""
    if key.dtype == np.uint64:
        return (key ^ np.uint64(1 << 63)).view(np.int64)
    if key.dtype == np.float64:
        bits = key.view(np.int64)
        return bits ^ ((bits >> 63) & np.int64(0x7FFF_FFFF_FFFF_FFFF))
    return key.astype(np.int64, copy=False)


class Ranked:
    """Per-group bottom-k entries (`lat, key, idx, act`) with per-entry slabs (windows) kept in slots.

    A new entry is offered only if it beats its group's current k-th entry; only the groups
    that received survivors are re-ranked, and only surviving new entries get their slabs
    gathered, so a chunk costs little once the buffers are warm.

    Example:
        >>> ranked = Ranked(k=1, n_groups=2, key_dtype=np.float64, slab_shapes={"w": ((2,), np.float32)})
        >>> def gather(idx, lat):                          # the slab of each surviving entry
        ...     return {"w": np.stack([idx, lat], 1).astype(np.float32)}
        >>> ranked.merge(lat=np.array([0, 0, 1]), key=np.array([-3.0, -5.0, -1.0]), idx=np.array([0, 1, 2]),
        ...              act=np.array([3.0, 5.0, 1.0], np.float32), gather=gather)
        >>> ranked.arrays["idx"].tolist(), ranked.arrays["w"].tolist()     # group 0 keeps its smallest key (-5)
        ([1, 2], [[1.0, 0.0], [2.0, 1.0]])
    """

    KEYS = ("lat", "key", "idx", "act")

    def __init__(self, k: int, n_groups: int, key_dtype: type, slab_shapes: dict[str, tuple[tuple[int, ...], type]]):
        self.k, self.n_groups, self.key_dtype = k, n_groups, key_dtype
        self.lat = np.zeros(0, np.int64)
        self.key = np.zeros(0, key_dtype)
        self.idx = np.zeros(0, np.int64)
        self.act = np.zeros(0, np.float32)
        self.slot = np.zeros(0, np.int64)
        self.slabs = {name: np.zeros((0, *shape), dtype) for name, (shape, dtype) in slab_shapes.items()}
        self.free = np.zeros(0, np.int64)
        self._recount()

    def _recount(self) -> None:
        """Per-group count and k-th (largest kept) key and index."""
        self.count = np.bincount(self.lat, minlength=self.n_groups)
        self.kth_key = np.zeros(self.n_groups, self.key_dtype)
        self.kth_idx = np.zeros(self.n_groups, np.int64)
        if len(self.lat):
            order = lexsort((self.idx, self.key, self.lat))
            last = order[np.r_[self.lat[order][1:] != self.lat[order][:-1], True]]
            self.kth_key[self.lat[last]], self.kth_idx[self.lat[last]] = self.key[last], self.idx[last]

    def merge(self, lat: np.ndarray, key: np.ndarray, idx: np.ndarray, act: np.ndarray,
              gather: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]) -> None:
        """Offer new entries; `gather(idx, lat)` returns the slabs of the survivors."""
        full = self.count[lat] >= self.k
        thr_key, thr_idx = self.kth_key[lat], self.kth_idx[lat]
        ok = ~full | (key < thr_key) | ((key == thr_key) & (idx < thr_idx))
        if not ok.any():
            return
        lat, key, idx, act = lat[ok], key[ok], idx[ok], act[ok]
        touched = np.zeros(self.n_groups, bool)
        touched[lat] = True
        sel = touched[self.lat]
        n_sel = int(sel.sum())
        sub = {"lat": np.concatenate([self.lat[sel], lat]), "key": np.concatenate([self.key[sel], key]),
               "idx": np.concatenate([self.idx[sel], idx]), "act": np.concatenate([self.act[sel], act])}
        keep = bottom_k(sub["lat"], sub["key"], sub["idx"], self.k)
        old_slots = self.slot[sel]
        kept_old = np.zeros(n_sel, bool)
        kept_old[keep[keep < n_sel]] = True
        new_pos = keep[keep >= n_sel] - n_sel
        self.free = np.concatenate([self.free, old_slots[~kept_old]])
        slots_new = self._take_slots(len(new_pos))
        for name, values in gather(idx[new_pos], lat[new_pos]).items():
            self.slabs[name][slots_new] = values
        slot_sub = np.concatenate([old_slots, np.zeros(len(lat), np.int64)])
        slot_sub[n_sel + new_pos] = slots_new
        rest = ~sel
        self.lat = np.concatenate([self.lat[rest], sub["lat"][keep]])
        self.key = np.concatenate([self.key[rest], sub["key"][keep]])
        self.idx = np.concatenate([self.idx[rest], sub["idx"][keep]])
        self.act = np.concatenate([self.act[rest], sub["act"][keep]])
        self.slot = np.concatenate([self.slot[rest], slot_sub[keep]])
        kl = sub["lat"][keep]
        self.count[touched] = 0
        self.count += np.bincount(kl, minlength=self.n_groups)
        last = np.r_[kl[1:] != kl[:-1], True]
        self.kth_key[kl[last]] = sub["key"][keep][last]
        self.kth_idx[kl[last]] = sub["idx"][keep][last]

    def _take_slots(self, n: int) -> np.ndarray:
        if len(self.free) < n:
            size = len(next(iter(self.slabs.values())))
            grow = max(n - len(self.free), size)
            for name, slab in self.slabs.items():
                self.slabs[name] = np.concatenate([slab, np.zeros((grow, *slab.shape[1:]), slab.dtype)])
            self.free = np.concatenate([self.free, np.arange(size, size + grow)])
        taken, self.free = self.free[:n], self.free[n:]
        return taken

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every entry, ordered by (group, key, index), with its slabs."""
        order = lexsort((self.idx, self.key, self.lat))
        out = {name: getattr(self, name)[order] for name in self.KEYS}
        out.update({name: slab[self.slot[order]] for name, slab in self.slabs.items()})
        return out

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore from `arrays` (the output of `arrays`)."""
        for name in self.KEYS:
            setattr(self, name, arrays[name])
        self.slabs = {name: arrays[name] for name in self.slabs}
        self.slot = np.arange(len(self.lat))
        self.free = np.zeros(0, np.int64)
        self._recount()
