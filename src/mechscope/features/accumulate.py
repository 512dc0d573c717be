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

from mechscope.dictionaries import SparseCodes
from mechscope.features.ranking import Ranked, mix_hash

POOL_SALT = 0xFFFF_FFFF  # the "latent" under which random windows are hashed


@dataclass(frozen=True)
class CollectConfig:
    """What a collection keeps per latent (field docs double as CLI help).

    Example:
        >>> cfg = CollectConfig(top_k=5, window_left=2, window_right=1)
        >>> cfg.window, cfg.sample_size, len(cfg.hist_edges())         # 2 + 1 + 1 tokens; 10 intervals of 3
        (4, 30, 71)
        >>> CollectConfig(top_k=0)
        Traceback (most recent call last):
        ...
        ValueError: top_k must be at least 1
    """

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


class _Windows:
    """Context windows of one chunk: token ids, one latent's activations, firing latents around an index.

    The chunk's firing entries `(rows, lat, vals)` come in row-major order (rows ascending, then
    latents); a copy sorted by (latent, row) finds one latent's entries inside a window with two
    binary searches.
    """

    def __init__(self, ids: np.ndarray, first_context: int, left: int, right: int, d_sae: int,
                 rows: np.ndarray, lat: np.ndarray, vals: np.ndarray) -> None:
        self.ids, self.first, self.d_sae = ids, first_context, d_sae
        self.T = ids.shape[1]
        self.left, self.right = left, right
        self.offsets = np.arange(-left, right + 1)
        self.rows, self.lat = rows, lat
        n_rows = ids.size
        by_latent = np.argsort(lat * n_rows + rows, kind="stable")
        self.latent_keys = (lat * n_rows + rows)[by_latent]
        self.latent_rows, self.latent_vals = rows[by_latent], vals[by_latent]

    def positions(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = idx // self.T - self.first
        pos = (idx % self.T)[:, None] + self.offsets
        valid = (pos >= 0) & (pos < self.T)
        return c, np.clip(pos, 0, self.T - 1), valid

    def tokens(self, idx: np.ndarray) -> np.ndarray:
        c, pos, valid = self.positions(idx)
        return np.where(valid, self.ids[c[:, None], pos], -1).astype(np.int32)

    def with_acts(self, idx: np.ndarray, lat: np.ndarray) -> dict[str, np.ndarray]:
        """Tokens and latent `lat[n]`'s activation at every position of the window around `idx[n]`."""
        n_rows = self.ids.size
        start = idx - self.first * self.T - self.left  # chunk row of window slot 0 (may lie before the context)
        c_first = (idx // self.T - self.first) * self.T
        lo = np.maximum(start, c_first)
        hi = np.minimum(start + len(self.offsets), c_first + self.T)
        a = np.searchsorted(self.latent_keys, lat * n_rows + lo)
        b = np.searchsorted(self.latent_keys, lat * n_rows + hi)
        which = np.repeat(np.arange(len(idx)), b - a)
        entry = np.arange(len(which)) - np.repeat(np.cumsum(b - a) - (b - a), b - a) + a[which]
        wact = np.zeros((len(idx), len(self.offsets)), np.float32)
        wact[which, self.latent_rows[entry] - start[which]] = self.latent_vals[entry]
        return {"wtok": self.tokens(idx), "wact": wact}

    def with_firing(self, idx: np.ndarray, lat: np.ndarray) -> dict[str, np.ndarray]:
        """Tokens and the bit-packed set of latents firing anywhere in each window."""
        fire = np.zeros((len(idx), self.d_sae), bool)
        local = idx - self.first * self.T
        p = idx % self.T
        lo = local - np.minimum(p, self.left)
        hi = local + np.minimum(self.T - 1 - p, self.right) + 1
        a, b = np.searchsorted(self.rows, lo), np.searchsorted(self.rows, hi)
        for n in range(len(idx)):
            fire[n, self.lat[a[n]:b[n]]] = True
        return {"wtok": self.tokens(idx), "fire": np.packbits(fire, axis=1)}


def firing_entries(acts: Tensor | SparseCodes, n_tokens: int, d_sae: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(rows, latents, values)` of the positive activations of `n_tokens` tokens, in row-major order.

    `acts` is dense (`[..., d_sae]`, `n_tokens` rows once flattened) or `SparseCodes` of `n_tokens` rows.

    Example:
        >>> acts = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
        >>> [a.tolist() for a in firing_entries(acts, 2, 2)]
        [[0, 1], [1, 0], [2.0, 1.0]]
        >>> codes = SparseCodes(torch.tensor([1, 0]), torch.tensor([0, 1]), torch.tensor([1.0, 2.0]), 2, 2)
        >>> [a.tolist() for a in firing_entries(codes, 2, 2)]
        [[0, 1], [1, 0], [2.0, 1.0]]
    """
    if isinstance(acts, SparseCodes):
        if (acts.batch, acts.d_sae) != (n_tokens, d_sae):
            raise ValueError(f"codes of {acts.batch} tokens x {acts.d_sae} latents for a chunk of "
                             f"{n_tokens} tokens x {d_sae} latents")
        rows, lat, vals = (t.detach().cpu().numpy() for t in (acts.rows, acts.cols, acts.vals.float()))
        positive = vals > 0
        rows, lat, vals = rows[positive].astype(np.int64), lat[positive].astype(np.int64), vals[positive]
        keys = rows * d_sae + lat
        if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():
            order = np.argsort(keys, kind="stable")
            rows, lat, vals = rows[order], lat[order], vals[order]
        return rows, lat, vals
    flat = acts.detach().float().reshape(n_tokens, d_sae)
    rows_t, lat_t = (flat > 0).nonzero(as_tuple=True)
    return rows_t.numpy(), lat_t.numpy(), flat[rows_t, lat_t].numpy()


class Accumulator:
    """The running state of a collection over chunks of whole contexts.

    Example:
        >>> acc = Accumulator(d_sae=4, cfg=CollectConfig(top_k=2), context_length=3)
        >>> acts = torch.zeros(1, 3, 4); acts[0, 1, 2] = 5.0
        >>> acc.update(torch.tensor([[0, 7, 8]]), acts, first_context=0)
        >>> again = Accumulator.from_bytes(acc.to_bytes(), d_sae=4, cfg=acc.cfg, context_length=3)
        >>> again.count.tolist(), float(again.max[2]), again.top.arrays["wact"][0].tolist()
        ([0, 0, 1, 0], 5.0, [0.0, ..., 5.0, 0.0, ...])
    """

    def __init__(self, d_sae: int, cfg: CollectConfig, context_length: int) -> None:
        self.d_sae, self.cfg, self.T = d_sae, cfg, context_length
        self.count = np.zeros(d_sae, np.int64)
        self.sum = np.zeros(d_sae, np.longdouble)
        self.max = np.zeros(d_sae, np.float32)
        self.hist = np.zeros((d_sae, cfg.hist_bins), np.int64)
        windows = {"wtok": ((cfg.window,), np.int32), "wact": ((cfg.window,), np.float32)}
        self.top = Ranked(cfg.top_k, d_sae, np.float64, windows)
        self.sample = Ranked(cfg.sample_size, d_sae, np.uint64, windows)
        self.pool = Ranked(cfg.random_pool, 1, np.uint64,
                           {"wtok": ((cfg.window,), np.int32), "fire": (((d_sae + 7) // 8,), np.uint8)})
        self.cooc = torch.zeros(d_sae, d_sae, dtype=torch.int32) if d_sae <= cfg.max_cooccurrence_latents else None
        self.tokens = 0
        self.contexts = 0
        self._edges = cfg.hist_edges()

    @torch.no_grad()
    def update(self, ids: Tensor, acts: Tensor | SparseCodes, first_context: int, keep: Tensor | None = None) -> None:
        """Add a chunk: `ids [n_ctx, T]` of contexts `first_context...` and their codes.

        `acts` is dense `[n_ctx, T, d_sae]` or `SparseCodes` of the `n_ctx * T` tokens (row
        `c * T + p`). Positions where `keep` is False (BOS, padding) count as no token.
        """
        n_ctx, T = ids.shape
        rows, lat, vals = firing_entries(acts, n_ctx * T, self.d_sae)
        if keep is not None:
            kept_row = keep.reshape(-1).numpy()[rows]
            rows, lat, vals = rows[kept_row], lat[kept_row], vals[kept_row]
        gidx = first_context * T + rows
        self.count += np.bincount(lat, minlength=self.d_sae)
        self.sum += np.bincount(lat, weights=vals.astype(np.float64), minlength=self.d_sae)
        if len(lat):
            np.maximum.at(self.max, lat, vals)
        bins = np.clip(np.searchsorted(self._edges, np.log10(vals.astype(np.float64)), side="right") - 1,
                       0, self.cfg.hist_bins - 1)
        self.hist += np.bincount(lat * self.cfg.hist_bins + bins,
                                 minlength=self.d_sae * self.cfg.hist_bins).reshape(self.d_sae, -1)
        windows = _Windows(ids.numpy(), first_context, self.cfg.window_left, self.cfg.window_right, self.d_sae,
                           rows, lat, vals)
        self.top.merge(lat, -vals.astype(np.float64), gidx, vals, windows.with_acts)
        self.sample.merge(lat, mix_hash(self.cfg.seed, lat, gidx), gidx, vals, windows.with_acts)
        kept = np.arange(n_ctx * T) if keep is None else np.flatnonzero(keep.numpy().reshape(-1))
        zeros = np.zeros(len(kept), np.int64)
        pool_idx = first_context * T + kept
        self.pool.merge(zeros, mix_hash(self.cfg.seed, zeros + POOL_SALT, pool_idx), pool_idx,
                        np.zeros(len(kept), np.float32), windows.with_firing)
        if self.cooc is not None:
            self._count_pairs(rows, lat)
        self.tokens += len(kept)
        self.contexts += n_ctx

    def _count_pairs(self, rows: np.ndarray, lat: np.ndarray) -> None:
        """Add 1 to `cooc[i, j]` (i < j) for every token where latents i and j both fire (row-major entries)."""
        if len(rows) == 0:
            return
        counts = np.bincount(rows)
        kmax = int(counts.max())
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(len(rows)) - starts[rows]
        table = np.full((len(counts), kmax), -1, np.int64)
        table[rows, slot] = lat  # each row's latents ascending, then -1 padding
        first, second = np.triu_indices(kmax, 1)
        assert self.cooc is not None
        step = max(1, (1 << 22) // max(len(first), 1))  # bounds the [tokens, pairs] block
        for start in range(0, len(table), step):
            block = table[start:start + step]
            b = block[:, second]
            keys = (block[:, first] * self.d_sae + b)[b >= 0]
            self.cooc.view(-1).index_add_(0, torch.from_numpy(keys), torch.ones(len(keys), dtype=torch.int32))

    # -- serialisation -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        hi = self.sum.astype(np.float64)
        data = {"count": self.count, "sum_hi": hi, "sum_lo": (self.sum - hi).astype(np.float64), "max": self.max,
                "hist": self.hist, "progress": np.array([self.tokens, self.contexts], np.int64)}
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
        acc.count, acc.max, acc.hist = data["count"], data["max"], data["hist"]
        acc.sum = data["sum_hi"].astype(np.longdouble) + data["sum_lo"].astype(np.longdouble)
        acc.tokens, acc.contexts = (int(v) for v in data["progress"])
        for name, ranked in (("top", acc.top), ("sample", acc.sample), ("pool", acc.pool)):
            ranked.load({k[len(name) + 1:]: v for k, v in data.items() if k.startswith(name + ".")})
        if acc.cooc is not None:
            acc.cooc.view(-1)[torch.from_numpy(data["cooc_keys"])] = torch.from_numpy(data["cooc_vals"])
        return acc
