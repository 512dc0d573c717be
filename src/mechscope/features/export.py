"""Neuronpedia batch JSON: export a feature database, and import one back.

The layout is the batch Neuronpedia ingests from SAEDashboard: `{"model_id", "layer",
"sae_set", "features": [...]}`, each feature with Neuronpedia's field names
(`feature_index`, `frac_nonzero`, `pos_str`/`pos_values`, `neg_str`/`neg_values`,
`freq_hist_data_bar_values`/`freq_hist_data_bar_heights`, `n_prompts_total`,
`n_tokens_in_prompt`, `dataset`, `activations` of `{tokens, values, bin_min, bin_max,
bin_contains, qualifying_token_index}`), plus the Neuronpedia feature fields `maxActApprox`,
`topkCosSimIndices`/`topkCosSimValues` (decoder-cosine neighbours) and `explanations`
(`description`, `explanationModelName`, `typeName`). Each activation also carries
`mechscope_kind` (`top`, `interval`, `random`), `mechscope_interval` and `mechscope_token_index`
so an import can rebuild the examples table; `bin_min`/`bin_max` span the activations of the
example's group (its interval, or all top or random examples) and `bin_contains` is the
example's own activation at `qualifying_token_index`.

What the format cannot carry is left out of an import: token ids (tokens travel as text;
an import numbers them afresh), the sum and mean activation, decoder norms, co-occurrence
neighbours, scores and the resume state. The histogram travels as activation values
`10**bin_centre` with counts, the database's log10 bins.

Example:
    >>> batch = to_neuronpedia(FeatureDatabase.open("out/features.db"))   # doctest: +SKIP
    >>> from_neuronpedia(batch, "out/copy.db").latent(0)["density"]       # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mechscope.core import names as hook_names
from mechscope.features.database import FeatureDatabase, FeatureDatabaseError

_TYPES = {"top": "top", "interval": "interval", "random": "random"}


def _source(meta: dict[str, Any]) -> tuple[int, str]:
    layer = hook_names.parse_layer(meta.get("hook_name") or "")
    return (layer if layer is not None else 0), f"{layer if layer is not None else 0}-mechscope-res"


def to_neuronpedia(db: FeatureDatabase, model_id: str | None = None, source: str | None = None) -> dict[str, Any]:
    """The whole database as one Neuronpedia batch.

    Example:
        >>> acts = [{"tokens": ["in", " 1984"], "values": [0, 3.0], "bin_contains": 3.0, "qualifying_token_index": 1}]
        >>> db = from_neuronpedia({"features": [{"feature_index": 0, "frac_nonzero": 0.01, "activations": acts}]},
        ...                       "features.db")
        >>> batch = to_neuronpedia(db, model_id="tiny")
        >>> batch["model_id"], batch["features"][0]["frac_nonzero"], batch["features"][0]["activations"][0]["tokens"]
        ('tiny', 0.01, ['in', ' 1984'])
    """
    meta = db.meta()
    layer, default_source = _source(meta)
    layer, default_source = meta.get("layer", layer), meta.get("sae_set", default_source)
    edges = np.asarray(meta["hist_edges"])
    centres = meta.get("hist_bar_values") or (10 ** ((edges[:-1] + edges[1:]) / 2)).tolist()
    features = []
    for latent in range(db.d_sae):
        info = db.latent(latent)
        acts = []
        for kind in ("top", "interval", "random"):
            examples = db.examples(latent, kind)
            for e in examples:
                group = [x["act"] for x in examples if x["interval"] == e["interval"]]
                acts.append({"tokens": e["text"], "values": e["acts"], "bin_min": min(group), "bin_max": max(group),
                             "bin_contains": e["act"], "qualifying_token_index": e["center"],
                             "mechscope_kind": kind, "mechscope_interval": e["interval"],
                             "mechscope_token_index": e["token_index"]})
        features.append({
            "feature_index": latent, "frac_nonzero": info["density"], "maxActApprox": info["max_act"],
            "pos_str": [x["text"] for x in info["logits_positive"]],
            "pos_values": [x["value"] for x in info["logits_positive"]],
            "neg_str": [x["text"] for x in info["logits_negative"]],
            "neg_values": [x["value"] for x in info["logits_negative"]],
            "freq_hist_data_bar_values": centres, "freq_hist_data_bar_heights": info["hist"],
            "topkCosSimIndices": [n["other"] for n in info["decoder_cosine"]],
            "topkCosSimValues": [n["value"] for n in info["decoder_cosine"]],
            "n_prompts_total": meta["n_contexts"], "n_tokens_in_prompt": meta["context_length"],
            "dataset": meta.get("corpus", ""),
            "explanations": [{"description": e["text"], "explanationModelName": e["explainer"],
                              "typeName": e["method"]} for e in reversed(info["explanations"])],
            "activations": acts})
    return {"model_id": model_id or meta.get("model", ""), "layer": layer, "sae_set": source or default_source,
            "features": features}


def from_neuronpedia(batch: dict[str, Any], path: str | Path, force: bool = False) -> FeatureDatabase:
    """A new feature database holding everything a Neuronpedia batch carries (see the module docstring).

    Example:
        >>> acts = [{"tokens": ["in", " 1984"], "values": [0, 3.0], "bin_contains": 3.0, "qualifying_token_index": 1}]
        >>> feature = {"feature_index": 1, "frac_nonzero": 0.01, "maxActApprox": 3.0, "activations": acts,
        ...            "explanations": [{"description": "years", "explanationModelName": "by hand"}]}
        >>> db = from_neuronpedia({"model_id": "tiny", "features": [feature]}, "features.db")
        >>> db.d_sae, db.latent(1)["max_act"], db.examples(1)[0]["text"], db.explanations(1)[0]["text"]
        (2, 3.0, ['in', ' 1984'], 'years')
    """
    try:
        features = sorted(batch["features"], key=lambda f: int(f["feature_index"]))
    except (KeyError, TypeError, ValueError) as err:
        raise FeatureDatabaseError(f"not a Neuronpedia batch (needs features[].feature_index): {err}") from err
    d_sae = (max(int(f["feature_index"]) for f in features) + 1) if features else 0
    vocab: dict[str, int] = {}

    def ids(texts: list[str]) -> list[int]:
        return [vocab.setdefault(t, len(vocab)) for t in texts]

    db = FeatureDatabase.create(path, force=force)
    first = features[0] if features else {}
    centres = np.log10(np.asarray(first.get("freq_hist_data_bar_values") or [1.0]))
    step = float(centres[1] - centres[0]) if len(centres) > 1 else 1.0
    edges = np.concatenate([centres - step / 2, centres[-1:] + step / 2]).tolist()
    n_ctx, T = int(first.get("n_prompts_total", 0)), int(first.get("n_tokens_in_prompt", 0))
    n_tokens = n_ctx * max(T - 1, 0)
    with db.con:
        for f in features:
            k = int(f["feature_index"])
            density = float(f.get("frac_nonzero", 0.0))
            db.con.execute("INSERT INTO latents VALUES (?, ?, ?, ?, NULL, NULL, ?, NULL)",
                           (k, round(density * n_tokens), density, float(f.get("maxActApprox", 0.0)),
                            json.dumps([int(h) for h in f.get("freq_hist_data_bar_heights", [])])))
            for sign, key in ((1, "pos"), (-1, "neg")):
                for rank, (t, v) in enumerate(zip(ids(f.get(f"{key}_str", [])), f.get(f"{key}_values", []),
                                                  strict=True)):
                    db.con.execute("INSERT INTO logit_effects VALUES (?, ?, ?, ?, ?)", (k, sign, rank, t, v))
            for rank, (o, v) in enumerate(zip(f.get("topkCosSimIndices", []), f.get("topkCosSimValues", []),
                                              strict=True)):
                db.con.execute("INSERT INTO neighbours VALUES (?, 'decoder_cosine', ?, ?, ?, NULL)", (k, rank, o, v))
            ranks: dict[str, int] = {}
            for a in f.get("activations", []):
                kind = _TYPES.get(a.get("mechscope_kind", "top"), "top")
                rank = ranks[kind] = ranks.get(kind, -1) + 1
                idx = int(a.get("mechscope_token_index", -1))
                interval = a.get("mechscope_interval")
                db.con.execute("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (k, kind, rank, interval, idx, idx // T if T and idx >= 0 else -1,
                                idx % T if T and idx >= 0 else -1, int(a.get("qualifying_token_index", 0)),
                                float(a.get("bin_contains", 0.0)), json.dumps(ids(a["tokens"])),
                                json.dumps(a["values"])))
        db.con.executemany("INSERT INTO vocab VALUES (?, ?)", [(i, t) for t, i in vocab.items()])
        db.set_meta({"d_sae": d_sae, "model": batch.get("model_id", ""), "n_contexts": n_ctx, "context_length": T,
                     "n_tokens": n_tokens, "corpus": first.get("dataset", ""), "hist_edges": edges,
                     "hist_bar_values": first.get("freq_hist_data_bar_values"),
                     "imported_from": "neuronpedia", "sae_set": batch.get("sae_set"), "layer": batch.get("layer"),
                     "complete": True}, commit=False)
    for f in features:
        for e in f.get("explanations", []):
            db.add_explanation(int(f["feature_index"]), e["description"], e.get("explanationModelName", ""),
                               e.get("typeName") or "examples")
    db.reindex_all()
    return db
