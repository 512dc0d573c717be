"""Turn a finished `Accumulator` into the feature database's tables, in one transaction.

Example:
    >>> write_results(db, acc, sae, model, meta)   # doctest: +SKIP
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from mechscope.core import names as hook_names
from mechscope.dictionaries import Dictionary
from mechscope.features.accumulate import Accumulator
from mechscope.features.database import FeatureDatabase
from mechscope.features.effects import cooccurrence_neighbours, decoder_neighbours, logit_effects
from mechscope.features.ranking import mix_hash

_RESIDUAL_SITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


def _json_list(values: list[Any]) -> str:
    """`json.dumps` of a list of ints or finite floats (the same text), without building an encoder per call."""
    return "[" + ", ".join(map(repr, values)) + "]"


def _ranks_in_groups(lat: np.ndarray, d_sae: int) -> tuple[np.ndarray, np.ndarray]:
    """For entries sorted by latent: each entry's rank within its latent, and the size of its latent's group."""
    bounds = np.searchsorted(lat, np.arange(d_sae + 1))
    sizes = np.diff(bounds)
    return np.arange(len(lat)) - bounds[lat], sizes[lat]


def _rows(a: dict[str, np.ndarray], sel: np.ndarray, latent: np.ndarray, kind: str, rank: np.ndarray,
          interval: np.ndarray | None, left: int, T: int) -> list[tuple[Any, ...]]:
    """`examples` rows of entries `sel` of the ranked arrays `a` (windows cut to their valid, contiguous part)."""
    if len(sel) == 0:
        return []
    wtok = a["wtok"][sel]
    valid = wtok >= 0  # a window is cut only at its context's edges, so the valid part is contiguous
    lead = np.where(valid.any(1), valid.argmax(1), 0)
    stop = lead + valid.sum(1)
    tokens = wtok.tolist()
    acts = a["wact"][sel].tolist() if "wact" in a else None
    idx, act = a["idx"][sel], a["act"][sel]
    cols = zip(latent.tolist(), rank.tolist(), [None] * len(sel) if interval is None else interval.tolist(),
               idx.tolist(), (idx // T).tolist(), (idx % T).tolist(), (left - lead).tolist(),
               act.astype(np.float64).tolist(), lead.tolist(), stop.tolist(), strict=True)
    rows = []
    for i, (k, r, g, x, c, p, center, v, lo, hi) in enumerate(cols):
        window_acts = acts[i][lo:hi] if acts is not None else [0.0] * (hi - lo)
        rows.append((k, kind, r, g, x, c, p, center, v, _json_list(tokens[i][lo:hi]), _json_list(window_acts)))
    return rows


def example_rows(acc: Accumulator) -> list[tuple[Any, ...]]:
    """Rows of the `examples` table: top, interval (equal-count) and random (non-activating) examples.

    Ordered by latent, then kind (top, interval, random), then rank.

    Example:
        >>> import torch
        >>> from mechscope.features.accumulate import CollectConfig
        >>> acc = Accumulator(d_sae=4, cfg=CollectConfig(top_k=2, n_random=1), context_length=3)
        >>> acts = torch.zeros(1, 3, 4); acts[0, 1, 2] = 5.0                 # latent 2 fires on token 1
        >>> acc.update(torch.tensor([[0, 7, 8]]), acts, first_context=0)
        >>> [(r[0], r[1], r[8]) for r in example_rows(acc) if r[0] == 2]     # (latent, kind, activation)
        [(2, 'top', 5.0), (2, 'interval', 5.0)]
        >>> example_rows(acc)[0][1], example_rows(acc)[0][9]                # latent 0 never fires: a random window
        ('random', '[0, 7, 8]')
    """
    cfg, T, left, d_sae = acc.cfg, acc.T, acc.cfg.window_left, acc.d_sae
    per_latent: list[tuple[np.ndarray, np.ndarray, list[tuple[Any, ...]]]] = []  # (latent, order, rows) per kind

    top = acc.top.arrays  # sorted by latent, then rank
    rank, _ = _ranks_in_groups(top["lat"], d_sae)
    sel = np.arange(len(top["lat"]))
    per_latent.append((top["lat"], rank, _rows(top, sel, top["lat"], "top", rank, None, left, T)))

    sample = acc.sample.arrays
    sel = np.lexsort((sample["idx"], sample["act"], sample["lat"]))  # by latent, then activation, then index
    lat = sample["lat"][sel]
    rank, size = _ranks_in_groups(lat, d_sae)
    parts = np.minimum(cfg.n_intervals, size)  # np.array_split(members, parts): the first `size % parts` get one more
    q, rem = size // np.maximum(parts, 1), size % np.maximum(parts, 1)
    edge = rem * (q + 1)
    interval = np.where(rank < edge, rank // (q + 1), rem + (rank - edge) // np.maximum(q, 1))
    per_latent.append((lat, rank, _rows(sample, sel, lat, "interval", rank, interval, left, T)))

    pool = acc.pool.arrays
    if len(pool["idx"]) and cfg.n_random:
        fire = np.unpackbits(pool["fire"], axis=1)[:, :d_sae].astype(bool)  # [P, d_sae]
        lat_all = np.arange(d_sae)
        prio = mix_hash(cfg.seed, lat_all[:, None], pool["idx"][None, :])
        prio[fire.T] = np.iinfo(np.uint64).max
        order = np.argsort(prio, axis=1, kind="stable")[:, : cfg.n_random]  # [d_sae, n]
        quiet = ~fire[order, lat_all[:, None]]
        lat = np.broadcast_to(lat_all[:, None], order.shape)[quiet]
        rank = (np.cumsum(quiet, axis=1) - 1)[quiet]
        per_latent.append((lat, rank, _rows(pool, order[quiet], lat, "random", rank, None, left, T)))

    lat = np.concatenate([p[0] for p in per_latent])
    kind = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(per_latent)])
    rank = np.concatenate([p[1] for p in per_latent])
    rows = [r for p in per_latent for r in p[2]]
    return [rows[i] for i in np.lexsort((rank, kind, lat)).tolist()]


def _token_texts(tokenizer: Any, ids: list[int]) -> list[tuple[int, str]]:
    if tokenizer is None or not hasattr(tokenizer, "decode"):
        return [(i, f"<{i}>") for i in ids]
    return [(i, tokenizer.decode([i])) for i in ids]


def write_results(db: FeatureDatabase, acc: Accumulator, dictionary: Dictionary, model: Any,
                  meta: dict[str, Any]) -> None:
    """Fill every table from `acc` and mark the database complete; the resume state is dropped.

    Example:
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> from mechscope.features.accumulate import CollectConfig
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=8, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> acc = Accumulator(d_sae=8, cfg=CollectConfig(top_k=2, n_logit_tokens=3), context_length=4)
        >>> acc.update(torch.tensor([[0, 1, 2, 3]]), torch.relu(torch.randn(1, 4, 8)), first_context=0)
        >>> db = FeatureDatabase.create("features.db")
        >>> db.set_meta({"d_sae": 8})
        >>> write_results(db, acc, sae, model, {"model": "tiny"})
        >>> db.meta()["complete"], db.meta()["n_tokens"], len(db.latent(0)["logits_positive"])
        (True, 4, 3)
    """
    cfg, d_sae = acc.cfg, acc.d_sae
    W_dec = dictionary.W_dec.detach().float().cpu()
    count = acc.count
    mean = np.where(count > 0, (acc.sum / np.maximum(count, 1)).astype(np.float64), 0.0)
    latents = [(k, int(count[k]), float(count[k] / acc.tokens), float(acc.max[k]), float(mean[k]),
                float(acc.sum[k]), json.dumps(acc.hist[k].tolist()), float(W_dec[k].norm()))
               for k in range(d_sae)]
    examples = example_rows(acc)
    vocab_ids = {int(t) for a in (acc.top, acc.sample, acc.pool) for t in np.unique(a.arrays["wtok"]) if t >= 0}
    effects_rows: list[tuple[Any, ...]] = []
    out_hook = dictionary.cfg.hook_name_out or dictionary.cfg.hook_name or ""
    folded = None
    if dictionary.cfg.d_out == model.cfg.d_model and (out_hook.endswith(_RESIDUAL_SITES)
                                                      or out_hook == hook_names.EMBED):
        eff = logit_effects(W_dec, model.lm_head.weight.detach().cpu(), cfg.n_logit_tokens)
        folded = False
        for sign, ids_t, vals_t in ((1, eff.positive_ids, eff.positive_values),
                                    (-1, eff.negative_ids, eff.negative_values)):
            for k in range(d_sae):
                for rank, (t, v) in enumerate(zip(ids_t[k].tolist(), vals_t[k].tolist(), strict=True)):
                    effects_rows.append((k, sign, rank, t, v))
                    vocab_ids.add(t)
    neighbour_rows: list[tuple[Any, ...]] = []
    dec = decoder_neighbours(W_dec, cfg.n_neighbours)
    for k in range(d_sae):
        for rank, (o, v) in enumerate(zip(dec.ids[k].tolist(), dec.values[k].tolist(), strict=True)):
            neighbour_rows.append((k, "decoder_cosine", rank, o, v, None))
    if acc.cooc is not None:
        co = cooccurrence_neighbours(acc.cooc, torch.from_numpy(count), cfg.n_neighbours)
        assert co.jaccard is not None
        for k in range(d_sae):
            rank = 0
            for o, v, j in zip(co.ids[k].tolist(), co.values[k].tolist(), co.jaccard[k].tolist(), strict=True):
                if o >= 0:
                    neighbour_rows.append((k, "cooccurrence", rank, o, v, j))
                    rank += 1
    density = count / acc.tokens
    log_density = np.log10(density[density > 0]) if (density > 0).any() else np.zeros(0)
    hist, edges = np.histogram(log_density, bins=40, range=(-8.0, 0.0))
    with db.con:
        db.con.execute("DELETE FROM latents")
        db.con.execute("DELETE FROM examples")
        db.con.execute("DELETE FROM logit_effects")
        db.con.execute("DELETE FROM neighbours")
        db.con.executemany("INSERT INTO latents VALUES (?, ?, ?, ?, ?, ?, ?, ?)", latents)
        db.con.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", examples)
        db.con.executemany("INSERT INTO logit_effects VALUES (?, ?, ?, ?, ?)", effects_rows)
        db.con.executemany("INSERT INTO neighbours VALUES (?, ?, ?, ?, ?, ?)", neighbour_rows)
        db.con.executemany("INSERT OR REPLACE INTO vocab VALUES (?, ?)", _token_texts(model.tokenizer, sorted(vocab_ids)))
        db.set_meta({**meta, "n_tokens": acc.tokens, "n_contexts": acc.contexts, "d_sae": d_sae,
                     "hist_edges": cfg.hist_edges().tolist(), "interval_scheme": "equal_count",
                     "logit_effects_fold_norm": folded, "cooccurrence": acc.cooc is not None,
                     "density_histogram": {"log10_density_edges": edges.tolist(), "counts": hist.tolist(),
                                           "dead": int((count == 0).sum())},
                     "complete": True}, commit=False)
        db.con.execute("DELETE FROM collect_state")
    db.reindex_all()
    db.con.execute("VACUUM")
