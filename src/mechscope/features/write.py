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
from mechscope.features.accumulate import Accumulator, mix_hash
from mechscope.features.database import FeatureDatabase
from mechscope.features.effects import cooccurrence_neighbours, decoder_neighbours, logit_effects

_RESIDUAL_SITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


def window_row(wtok: np.ndarray, wact: np.ndarray, left: int) -> tuple[list[int], list[float], int]:
    """A stored window without its padding: token ids, activations and the centre's offset."""
    valid = wtok >= 0
    lead = int(np.argmax(valid)) if valid.any() else 0
    return wtok[valid].tolist(), wact[valid].tolist(), left - lead


def _groups(lat: np.ndarray, d_sae: int) -> list[tuple[int, int, int]]:
    """(latent, start, stop) of each run of equal values in the sorted array `lat`."""
    bounds = np.searchsorted(lat, np.arange(d_sae + 1))
    return [(k, int(bounds[k]), int(bounds[k + 1])) for k in range(d_sae) if bounds[k + 1] > bounds[k]]


def example_rows(acc: Accumulator) -> list[tuple[Any, ...]]:
    """Rows of the `examples` table: top, interval (equal-count) and random (non-activating) examples."""
    cfg, T, left = acc.cfg, acc.T, acc.cfg.window_left
    rows: list[tuple[Any, ...]] = []

    def add(latent: int, kind: str, rank: int, interval: int | None, a: dict[str, np.ndarray], i: int) -> None:
        wact = a["wact"][i] if "wact" in a else np.zeros(a["wtok"].shape[1], np.float32)
        tokens, acts, center = window_row(a["wtok"][i], wact, left)
        idx = int(a["idx"][i])
        rows.append((latent, kind, rank, interval, idx, idx // T, idx % T, center, float(a["act"][i]),
                     json.dumps(tokens), json.dumps(acts)))

    top = acc.top.arrays
    for latent, start, stop in _groups(top["lat"], acc.d_sae):
        for rank, i in enumerate(range(start, stop)):
            add(latent, "top", rank, None, top, i)
    sample = acc.sample.arrays
    for latent, start, stop in _groups(sample["lat"], acc.d_sae):
        members = np.arange(start, stop)
        by_act = members[np.lexsort((sample["idx"][members], sample["act"][members]))]
        rank = 0
        for interval, part in enumerate(np.array_split(by_act, min(cfg.n_intervals, len(by_act)))):
            for i in part:
                add(latent, "interval", rank, interval, sample, int(i))
                rank += 1
    pool = acc.pool.arrays
    if len(pool["idx"]) and cfg.n_random:
        fire = np.unpackbits(pool["fire"], axis=1)[:, : acc.d_sae].astype(bool)  # [P, d_sae]
        lat = np.arange(acc.d_sae)
        prio = mix_hash(cfg.seed, lat[:, None], pool["idx"][None, :])
        prio[fire.T] = np.iinfo(np.uint64).max
        order = np.argsort(prio, axis=1, kind="stable")[:, : cfg.n_random]
        for latent in range(acc.d_sae):
            for rank, p in enumerate(int(p) for p in order[latent] if not fire[p, latent]):
                add(latent, "random", rank, None, pool, p)
    return rows


def _token_texts(tokenizer: Any, ids: list[int]) -> list[tuple[int, str]]:
    if tokenizer is None or not hasattr(tokenizer, "decode"):
        return [(i, f"<{i}>") for i in ids]
    return [(i, tokenizer.decode([i])) for i in ids]


def write_results(db: FeatureDatabase, acc: Accumulator, dictionary: Dictionary, model: Any,
                  meta: dict[str, Any]) -> None:
    """Fill every table from `acc` and mark the database complete; the resume state is dropped."""
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
