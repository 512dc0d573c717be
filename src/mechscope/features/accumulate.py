"""One-pass, exact per-latent statistics over a stream of token chunks (the state a collection resumes).

Every selection is a function of the whole token stream only, never of how it was cut into
chunks: each token has a global index (`context * context_length + position`), and

- top-k examples: the `top_k` firing tokens of largest activation, ties broken by the smaller
  global index;
- interval examples: a seeded uniform sample of `n_intervals * per_interval` firing tokens per
  latent (the tokens of smallest `hash(seed, latent, index)`, a bottom-k sketch), later sorted by
  activation and cut into `n_intervals` groups of equal count (delphi's scheme);
- random windows: the `random_pool` tokens of smallest `hash(seed, -1, index)`, with the set of
  latents firing anywhere in their window; a latent's non-activating examples are drawn from the
  pool windows where it never fires;
- density, max, sum (extended precision, so the order of addition does not show), a histogram of
  `log10(activation)` over fixed bins, and co-occurrence counts (tokens where two latents both
  fire; a dense upper-triangular count matrix).

The state serialises to safetensors bytes (`to_bytes` / `from_bytes`), never pickle.

Example:
    >>> import torch
    >>> acc = Accumulator(d_sae=4, cfg=CollectConfig(top_k=2), context_length=3)
    >>> acts = torch.zeros(1, 3, 4); acts[0, 1, 2] = 5.0
    >>> acc.update(torch.tensor([[0, 7, 8]]), acts, first_context=0)
    >>> acc.top.arrays["idx"].tolist(), acc.count.tolist()
    ([1], [0, 0, 1, 0])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from torch import Tensor

POOL_SALT = 0xFFFF_FFFF  # the "latent" under which random windows are hashed


@dataclass(frozen=True)
class CollectConfig:
    """What a collection keeps per latent (field docs double as CLI help)."""

    top_k: int = 20                 # top-activating examples per latent
    n_intervals: int = 10           # equal-count activation intervals
    per_interval: int = 3           # examples per interval
    n_random: int = 20              # non-activating examples per latent
    random_pool: int = 512          # random windows shared by all latents
    window_left: int = 16           # tokens kept before the example token
    window_right: int = 8           # tokens kept after it
    hist_bins: int = 70             # bins of log10(activation)
    hist_min: float = -4.0          # lowest log10 edge (smaller activations fall in bin 0)
    hist_max: float = 3.0           # highest log10 edge (larger activations fall in the last bin)
    n_neighbours: int = 10          # decoder-cosine and co-occurrence neighbours per latent
    n_logit_tokens: int = 10        # top positive and negative output tokens per latent
    max_cooccurrence_latents: int = 16384  # no co-occurrence matrix above this many latents
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_k", "n_intervals", "per_interval", "random_pool", "hist_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.hist_max <= self.hist_min:
            raise ValueError("hist_max must exceed hist_min")

    @property
    def window(self) -> int:
        return self.window_left + 1 + self.window_right

    @property
    def sample_size(self) -> int:
        return self.n_intervals * self.per_interval

    def hist_edges(self) -> np.ndarray:
        return np.linspace(self.hist_min, self.hist_max, self.hist_bins + 1)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


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
    """Positions of the `k` entries of smallest (key, index) in each group, ordered by (group, key, index)."""
    order = np.lexsort((index, key, group))
    g = group[order]
    rank = np.arange(len(g)) - np.searchsorted(g, g, side="left")
    return order[rank < k]


class Ranked:
    """Per-latent bottom-k entries with their context windows: arrays `lat, key, idx, act, wtok, wact`."""

    FIELDS = ("lat", "key", "idx", "act", "wtok", "wact")

    def __init__(self, k: int, window: int, key_dtype: type) -> None:
        self.k = k
        self.arrays: dict[str, np.ndarray] = {
            "lat": np.zeros(0, np.int64), "key": np.zeros(0, key_dtype), "idx": np.zeros(0, np.int64),
            "act": np.zeros(0, np.float32), "wtok": np.zeros((0, window), np.int32),
            "wact": np.zeros((0, window), np.float32)}

    def merge(self, lat: np.ndarray, key: np.ndarray, idx: np.ndarray, act: np.ndarray,
              windows: _Windows) -> None:
        """Offer new entries; only those that stay in a latent's bottom-k get their window gathered."""
        old = self.arrays
        n_old = len(old["lat"])
        keep = bottom_k(np.concatenate([old["lat"], lat]), np.concatenate([old["key"], key]),
                        np.concatenate([old["idx"], idx]), self.k)
        from_old, from_new = keep[keep < n_old], keep[keep >= n_old] - n_old
        wtok_new, wact_new = windows.gather(idx[from_new], lat[from_new])
        merged = {"lat": (old["lat"][from_old], lat[from_new]), "key": (old["key"][from_old], key[from_new]),
                  "idx": (old["idx"][from_old], idx[from_new]), "act": (old["act"][from_old], act[from_new]),
                  "wtok": (old["wtok"][from_old], wtok_new), "wact": (old["wact"][from_old], wact_new)}
        cat = {name: np.concatenate(parts) for name, parts in merged.items()}
        order = np.lexsort((cat["idx"], cat["key"], cat["lat"]))
        self.arrays = {name: a[order] for name, a in cat.items()}


class _Windows:
    """Context windows of one chunk: token ids and one latent's activations around a global index."""

    def __init__(self, ids: np.ndarray, acts: Tensor, first_context: int, left: int, right: int) -> None:
        self.ids, self.acts, self.first = ids, acts, first_context
        self.T = ids.shape[1]
        self.offsets = np.arange(-left, right + 1)

    def positions(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = idx // self.T - self.first
        pos = (idx % self.T)[:, None] + self.offsets
        valid = (pos >= 0) & (pos < self.T)
        return c, np.clip(pos, 0, self.T - 1), valid

    def gather(self, idx: np.ndarray, lat: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        c, pos, valid = self.positions(idx)
        wtok = np.where(valid, self.ids[c[:, None], pos], -1).astype(np.int32)
        if lat is None or len(idx) == 0:
            return wtok, np.zeros(wtok.shape, np.float32)
        ct, pt, lt = (torch.from_numpy(a) for a in (c[:, None], pos, lat[:, None]))
        wact = self.acts[ct, pt, lt].numpy()
        return wtok, np.where(valid, wact, 0).astype(np.float32)

    def firing(self, idx: np.ndarray) -> np.ndarray:
        """Bit-packed `[n, ceil(d_sae / 8)]`: latents that fire anywhere in each window."""
        c, pos, valid = self.positions(idx)
        rows = self.acts[torch.from_numpy(c[:, None]), torch.from_numpy(pos)] > 0  # [n, W, d_sae]
        rows &= torch.from_numpy(valid)[:, :, None]
        return np.packbits(rows.any(1).numpy(), axis=1)


class Accumulator:
    """The running state of a collection over chunks of whole contexts."""

    def __init__(self, d_sae: int, cfg: CollectConfig, context_length: int) -> None:
        self.d_sae, self.cfg, self.T = d_sae, cfg, context_length
        self.count = np.zeros(d_sae, np.int64)
        self.sum = np.zeros(d_sae, np.longdouble)
        self.max = np.zeros(d_sae, np.float32)
        self.hist = np.zeros((d_sae, cfg.hist_bins), np.int64)
        self.top = Ranked(cfg.top_k, cfg.window, np.float64)
        self.sample = Ranked(cfg.sample_size, cfg.window, np.uint64)
        self.pool = Ranked(cfg.random_pool, cfg.window, np.uint64)
        self.pool_fire = np.zeros((0, (d_sae + 7) // 8), np.uint8)
        self.cooc = torch.zeros(d_sae, d_sae, dtype=torch.int32) if d_sae <= cfg.max_cooccurrence_latents else None
        self.tokens = 0
        self.contexts = 0
        self._edges = cfg.hist_edges()

    @torch.no_grad()
    def update(self, ids: Tensor, acts: Tensor, first_context: int, keep: Tensor | None = None) -> None:
        """Add a chunk: `ids [n_ctx, T]`, `acts [n_ctx, T, d_sae]` of contexts `first_context...`.

        Positions where `keep` is False (BOS, padding) count as no token: they are zeroed in `acts`.
        """
        n_ctx, T = ids.shape
        if keep is not None:
            acts = acts * keep[:, :, None].to(acts.dtype)
        acts = acts.float().contiguous()
        flat = acts.view(-1, self.d_sae)
        rows, lat = (t.numpy() for t in flat.nonzero(as_tuple=True))
        vals = flat.numpy()[rows, lat]
        pos_ok = vals > 0
        rows, lat, vals = rows[pos_ok], lat[pos_ok], vals[pos_ok]
        gidx = first_context * T + rows
        self.count += np.bincount(lat, minlength=self.d_sae)
        self.sum += np.bincount(lat, weights=vals.astype(np.float64), minlength=self.d_sae)
        if len(lat):
            np.maximum.at(self.max, lat, vals)
        bins = np.clip(np.searchsorted(self._edges, np.log10(vals.astype(np.float64)), side="right") - 1,
                       0, self.cfg.hist_bins - 1)
        self.hist += np.bincount(lat * self.cfg.hist_bins + bins,
                                 minlength=self.d_sae * self.cfg.hist_bins).reshape(self.d_sae, -1)
        ids_np = ids.numpy()
        windows = _Windows(ids_np, acts, first_context, self.cfg.window_left, self.cfg.window_right)
        self.top.merge(lat, -vals.astype(np.float64), gidx, vals, windows)
        self.sample.merge(lat, mix_hash(self.cfg.seed, lat, gidx), gidx, vals, windows)
        kept = np.arange(n_ctx * T) if keep is None else np.flatnonzero(keep.numpy().reshape(-1))
        self._merge_pool(first_context * T + kept, windows)
        if self.cooc is not None:
            self._count_pairs(rows, lat)
        self.tokens += len(kept)
        self.contexts += n_ctx

    def _merge_pool(self, gidx: np.ndarray, windows: _Windows) -> None:
        old_n = len(self.pool.arrays["idx"])
        before = self.pool.arrays["idx"].copy()
        zeros = np.zeros(len(gidx), np.int64)
        self.pool.merge(zeros, mix_hash(self.cfg.seed, zeros + POOL_SALT, gidx), gidx,
                        np.zeros(len(gidx), np.float32), _NoActs(windows))
        now = self.pool.arrays["idx"]
        fire = np.zeros((len(now), self.pool_fire.shape[1]), np.uint8)
        is_old = np.isin(now, before)
        if old_n:
            where = {int(i): n for n, i in enumerate(before)}
            fire[is_old] = self.pool_fire[[where[int(i)] for i in now[is_old]]]
        if (~is_old).any():
            fire[~is_old] = windows.firing(now[~is_old])
        self.pool_fire = fire

    def _count_pairs(self, rows: np.ndarray, lat: np.ndarray) -> None:
        """Add 1 to `cooc[i, j]` (i < j) for every token where latents i and j both fire."""
        if len(rows) == 0:
            return
        counts = np.bincount(rows)
        kmax = int(counts.max())
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        order = np.argsort(rows, kind="stable")
        r, l_sorted = rows[order], lat[order]
        slot = np.arange(len(r)) - starts[r]
        table = np.full((len(counts), kmax), -1, np.int64)
        table[r, slot] = l_sorted
        assert self.cooc is not None
        step = max(1, (1 << 22) // (kmax * kmax))  # bounds the [tokens, kmax, kmax] pair block
        for start in range(0, len(table), step):
            block = table[start:start + step]
            a, b = block[:, :, None], block[:, None, :]
            keys = (a * self.d_sae + b)[(a >= 0) & (a < b)]
            self.cooc.view(-1).index_add_(0, torch.from_numpy(keys), torch.ones(len(keys), dtype=torch.int32))

    # -- serialisation -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        hi = self.sum.astype(np.float64)
        data = {"count": self.count, "sum_hi": hi, "sum_lo": (self.sum - hi).astype(np.float64), "max": self.max,
                "hist": self.hist, "pool_fire": self.pool_fire,
                "progress": np.array([self.tokens, self.contexts], np.int64)}
        for name, ranked in (("top", self.top), ("sample", self.sample), ("pool", self.pool)):
            data.update({f"{name}.{k}": v for k, v in ranked.arrays.items()})
        if self.cooc is not None:
            flat = self.cooc.view(-1)
            nz = flat.nonzero().squeeze(1)
            data["cooc_keys"], data["cooc_vals"] = nz.numpy(), flat[nz].numpy()
        return st_save({k: np.ascontiguousarray(v) for k, v in data.items()})

    @classmethod
    def from_bytes(cls, blob: bytes, d_sae: int, cfg: CollectConfig, context_length: int) -> Accumulator:
        data = st_load(blob)
        acc = cls(d_sae, cfg, context_length)
        acc.count, acc.max, acc.hist, acc.pool_fire = data["count"], data["max"], data["hist"], data["pool_fire"]
        acc.sum = data["sum_hi"].astype(np.longdouble) + data["sum_lo"].astype(np.longdouble)
        acc.tokens, acc.contexts = (int(v) for v in data["progress"])
        for name, ranked in (("top", acc.top), ("sample", acc.sample), ("pool", acc.pool)):
            ranked.arrays = {k: data[f"{name}.{k}"] for k in Ranked.FIELDS}
        if acc.cooc is not None:
            acc.cooc.view(-1)[torch.from_numpy(data["cooc_keys"])] = torch.from_numpy(data["cooc_vals"])
        return acc


class _NoActs:
    """Window gathering for the random pool: tokens only (activations are not needed there)."""

    def __init__(self, windows: _Windows) -> None:
        self.windows = windows

    def gather(self, idx: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.windows.gather(idx, None)
