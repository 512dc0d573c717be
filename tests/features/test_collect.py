"""Feature collection equals brute force over the full activation matrix; batch size and resumption do not show."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from mechscope.core.corpus import token_contexts
from mechscope.core.errors import MechscopeError
from mechscope.dictionaries import make_dictionary
from mechscope.features import (
    CollectConfig,
    FeatureDatabase,
    collect_features,
    encode_contexts,
    encode_contexts_sparse,
)
from mechscope.features.ranking import mix_hash
from tiny_lm import tiny_lm, write_corpus

T = 24
CFG = CollectConfig(top_k=4, n_intervals=3, per_interval=2, n_random=5, random_pool=40, window_left=5,
                    window_right=3, n_neighbours=4, n_logit_tokens=3, seed=3)


def _relu_sae():
    sae = make_dictionary("relu", d_in=64, d_sae=48, seed=1, hook_name="blocks.1.hook_resid_post")
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)  # sparse, with some latents firing often and some rarely
    return sae


# ReLU goes through the dense codes; TopK through its sparse codes, never a dense matrix
@pytest.fixture(scope="module", params=["relu", "topk"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("collect")
    model = tiny_lm("llama")
    corpus = write_corpus(folder, n_docs=30, words=50)
    sae = (_relu_sae() if request.param == "relu" else
           make_dictionary("topk", d_in=64, d_sae=48, k=6, seed=1, hook_name="blocks.1.hook_resid_post"))
    return model, sae, corpus, folder


def _collect(setup, name: str, **kwargs) -> Path:
    model, sae, corpus, folder = setup
    path = folder / name
    collect_features(model, sae, path, source=corpus, context_length=T, config=CFG, progress=False, **kwargs)
    return path


def _dump(path: Path) -> dict[str, list]:
    con = sqlite3.connect(path)
    out = {t: con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
           for t in ("latents", "examples", "logit_effects", "neighbours", "vocab")}
    out["meta"] = sorted(r for r in con.execute("SELECT * FROM meta") if r[0] not in ("schema_created", "provenance"))
    con.close()
    return out


@pytest.fixture(scope="module")
def reference(setup) -> Path:
    return _collect(setup, "ref.db", batch_size=7, checkpoint_contexts=5)


def test_matches_brute_force(setup, reference: Path) -> None:
    model, sae, corpus, _ = setup
    ids = token_contexts(model.tokenizer, corpus, T)
    acts, keep = encode_contexts(model, sae, ids)
    A = (acts * keep[:, :, None]).reshape(-1, sae.cfg.d_sae).numpy()  # [tokens, d_sae], BOS rows zero
    n_tokens = int(keep.sum())
    db = FeatureDatabase.open(reference)
    edges = np.linspace(CFG.hist_min, CFG.hist_max, CFG.hist_bins + 1)
    n_checked = 0
    for k in range(sae.cfg.d_sae):
        col = A[:, k]
        fired = np.flatnonzero(col > 0)
        info = db.latent(k)
        assert info["n_fired"] == len(fired)
        assert info["density"] == len(fired) / n_tokens
        assert info["max_act"] == (float(col.max()) if len(fired) else 0.0)
        assert info["mean_act"] == pytest.approx(float(col[fired].astype(np.float64).mean()) if len(fired) else 0.0,
                                                 rel=1e-12, abs=0)
        logs = np.clip(np.log10(col[fired].astype(np.float64)), edges[0], np.nextafter(edges[-1], -np.inf))
        assert info["hist"] == np.histogram(logs, bins=edges)[0].tolist()
        # top-k: largest activation first, ties by smaller global index
        order = sorted(fired.tolist(), key=lambda i: (-col[i], i))[: CFG.top_k]
        top = db.examples(k, "top")
        assert [e["token_index"] for e in top] == order
        for e in top:
            c, p = divmod(e["token_index"], T)
            lo, hi = max(0, p - CFG.window_left), min(T, p + CFG.window_right + 1)
            assert e["tokens"] == ids[c, lo:hi].tolist()
            assert e["acts"] == [float(v) for v in A[c * T + lo: c * T + hi, k]]
            assert e["tokens"][e["center"]] == int(ids[c, p]) and e["act"] == float(col[e["token_index"]])
        # interval sample: the firing tokens of smallest hash, cut by activation into equal-count groups
        prio = mix_hash(CFG.seed, np.full(len(fired), k), fired)
        sample = fired[np.lexsort((fired, prio))][: CFG.sample_size]
        sample = sorted(sample.tolist(), key=lambda i: (col[i], i))
        groups = np.array_split(np.array(sample, dtype=np.int64), min(CFG.n_intervals, len(sample))) if sample else []
        got = db.examples(k, "interval")
        assert [e["token_index"] for e in got] == sample
        assert [e["interval"] for e in got] == [g for g, part in enumerate(groups) for _ in part]
        # random examples: never fire in their window
        for e in db.examples(k, "random"):
            c, p = divmod(e["token_index"], T)
            lo, hi = max(0, p - CFG.window_left), min(T, p + CFG.window_right + 1)
            assert (A[c * T + lo: c * T + hi, k] == 0).all() and not any(e["acts"])
        n_checked += len(fired) > CFG.top_k
    assert n_checked > 10  # most latents have more firing tokens than top_k, so the ranking is exercised
    # co-occurrence: counts of tokens where both fire, brute force
    B = (A > 0).astype(np.int64)
    C = B.T @ B
    for k in range(sae.cfg.d_sae):
        want = sorted((o for o in range(sae.cfg.d_sae) if o != k and C[k, o] > 0), key=lambda o: (-C[k, o], o))
        got = db.latent(k)["cooccurrence"]
        assert [g["other"] for g in got] == want[: CFG.n_neighbours]
        assert [g["value"] for g in got] == [float(C[k, o]) for o in want[: CFG.n_neighbours]]
        for g in got:
            assert g["jaccard"] == pytest.approx(C[k, g["other"]] / (C[k, k] + C[g["other"], g["other"]] - C[k, g["other"]]))
    assert json.loads(db.con.execute("SELECT value FROM meta WHERE key='n_tokens'").fetchone()[0]) == n_tokens


def test_logit_effects_and_decoder_neighbours(setup, reference: Path) -> None:
    model, sae, _, _ = setup
    db = FeatureDatabase.open(reference)
    logits = (sae.W_dec.detach().double() @ model.lm_head.weight.detach().double().t()).numpy()
    W = sae.W_dec.detach().double().numpy()
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    cos = W @ W.T
    for k in range(sae.cfg.d_sae):
        info = db.latent(k)
        pos = np.argsort(-logits[k], kind="stable")[: CFG.n_logit_tokens]
        neg = np.argsort(logits[k], kind="stable")[: CFG.n_logit_tokens]
        assert [e["token_id"] for e in info["logits_positive"]] == pos.tolist()
        assert [e["token_id"] for e in info["logits_negative"]] == neg.tolist()
        np.testing.assert_allclose([e["value"] for e in info["logits_positive"]], logits[k, pos], rtol=1e-5, atol=1e-6)
        ranking = [o for o in np.argsort(-cos[k], kind="stable") if o != k][: CFG.n_neighbours]
        assert [n["other"] for n in info["decoder_cosine"]] == ranking
        np.testing.assert_allclose([n["value"] for n in info["decoder_cosine"]], cos[k, ranking], rtol=1e-6)
    assert db.meta()["logit_effects_fold_norm"] is False


def test_batch_size_does_not_change_the_database(setup, reference: Path) -> None:
    one = _collect(setup, "b1.db", batch_size=1, checkpoint_contexts=1000)
    many = _collect(setup, "b64.db", batch_size=64, checkpoint_contexts=1000)
    assert _dump(one) == _dump(reference)
    assert _dump(many) == _dump(reference)


def test_interrupted_run_resumes_to_the_same_database(setup, reference: Path) -> None:
    class Killed(Exception):
        pass

    def kill_after_second(contexts: int) -> None:
        if contexts >= 10:
            raise Killed

    with pytest.raises(Killed):
        _collect(setup, "resumed.db", batch_size=5, checkpoint_contexts=5, on_checkpoint=kill_after_second)
    with pytest.raises(Exception, match="unfinished collection"):
        FeatureDatabase.open(setup[3] / "resumed.db")
    con = sqlite3.connect(setup[3] / "resumed.db")
    assert con.execute("SELECT contexts_done FROM collect_state").fetchone()[0] == 10
    con.close()
    _collect(setup, "resumed.db", batch_size=3, checkpoint_contexts=4)  # resumes, with another batch size
    assert _dump(setup[3] / "resumed.db") == _dump(reference)


def test_finished_or_foreign_files_are_not_overwritten(setup, reference: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="finished collection"):
        _collect(setup, "ref.db", batch_size=7, checkpoint_contexts=5)
    foreign = setup[3] / "notes.db"
    foreign.write_text("my notes")
    with pytest.raises(Exception, match="not a mechscope feature database"):
        _collect(setup, "notes.db")
    assert foreign.read_text() == "my notes"


def test_ties_go_to_the_earlier_token_whatever_the_chunking() -> None:
    from mechscope.features.accumulate import Accumulator

    acts = torch.zeros(6, 4, 3)
    acts[:, 1:, 0] = 2.0  # latent 0: equal activations everywhere (BOS column left out)
    acts[5, 3, 0] = 3.0
    ids = torch.arange(24).view(6, 4)
    keep = torch.ones(6, 4, dtype=torch.bool)
    keep[:, 0] = False
    results = []
    for step in (1, 2, 6):
        acc = Accumulator(3, CollectConfig(top_k=3, window_left=1, window_right=1), context_length=4)
        for first in range(0, 6, step):
            acc.update(ids[first:first + step], acts[first:first + step], first_context=first, keep=keep[first:first + step])
        results.append(acc.top.arrays["idx"].tolist())
    assert results == [[23, 1, 2]] * 3


KILL_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from tiny_lm import tiny_lm
from mechscope.dictionaries import make_dictionary
from mechscope.features import CollectConfig, collect_features
sae = make_dictionary("relu", d_in=64, d_sae=48, seed=1, hook_name="blocks.1.hook_resid_post")
with torch.no_grad():
    sae.b_enc.fill_(-0.05)
collect_features(tiny_lm("llama"), sae, {db!r}, source={corpus!r}, context_length=24, batch_size=1,
                 checkpoint_contexts=2, config=CollectConfig(**{cfg!r}), progress=False)
"""


@pytest.mark.slow  # starts a second Python process and kills it with SIGKILL
def test_killed_process_resumes_to_the_same_database(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    model, sae = tiny_lm("llama"), _relu_sae()
    corpus = write_corpus(tmp_path, n_docs=200, words=50, seed=5)
    db = tmp_path / "killed.db"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent.parent), db=str(db), corpus=str(corpus),
                                cfg=CFG.to_dict())
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    done = 0
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                row = con.execute("SELECT contexts_done FROM collect_state").fetchone()
                con.close()
            except sqlite3.OperationalError:
                row = None
            if row and row[0] >= 4:
                proc.send_signal(signal.SIGKILL)
                done = row[0]
                break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and done >= 4  # killed mid-collection, after a checkpoint
    collect_features(model, sae, db, source=corpus, context_length=T, batch_size=16, config=CFG, progress=False)
    ref = tmp_path / "ref.db"
    collect_features(model, sae, ref, source=corpus, context_length=T, batch_size=16, config=CFG, progress=False)
    assert _dump(db) == _dump(ref)


def test_collecting_from_an_activation_store_equals_running_the_model(setup, tmp_path: Path) -> None:
    from mechscope.dictionaries.store import cache_activations
    from mechscope.dictionaries.store_reader import open_store

    model, sae, corpus, _ = setup
    store = tmp_path / "acts"
    cache_activations(model, sae.cfg.hook_name, store, n_tokens=40 * (T - 1), source=corpus, context_length=T,
                      shard_tokens=9 * (T - 1), split=None)
    assert len(open_store(store).manifest["shards"]) > 2
    from_store = tmp_path / "store.db"
    collect_features(model, sae, from_store, source=str(store), batch_size=4, checkpoint_contexts=6, config=CFG,
                     progress=False)
    from_model = tmp_path / "model.db"
    collect_features(model, sae, from_model, source=corpus, n_tokens=40 * (T - 1), context_length=T,
                     batch_size=5, config=CFG, progress=False)
    a, b = _dump(from_store), _dump(from_model)
    for table in ("latents", "examples", "logit_effects", "neighbours", "vocab"):
        assert a[table] == b[table], table


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("encode", [encode_contexts, encode_contexts_sparse])
def test_non_finite_activations_are_refused(setup, bad: float, encode) -> None:
    model, like, _, _ = setup
    sae = make_dictionary(like.cfg.architecture, d_in=64, d_sae=48, seed=1, hook_name="blocks.1.hook_resid_post",
                          **({"k": 6} if like.cfg.architecture == "topk" else {}))
    with torch.no_grad():
        sae.b_enc[5] = bad
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with pytest.raises(MechscopeError, match="NaN or Inf activations"):
        encode(model, sae, ids)
    with torch.no_grad():
        sae.b_enc[5] = 0.0
    codes = encode(model, sae, ids)[0]
    assert torch.isfinite(codes if isinstance(codes, torch.Tensor) else codes.vals).all()


def test_sparse_codes_in_any_order_equal_dense_activations() -> None:
    from mechscope.dictionaries import SparseCodes
    from mechscope.features.accumulate import Accumulator

    gen = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(3, 8, 40, generator=gen) - 1.0)  # about 16% of entries fire
    ids = torch.randint(0, 100, (3, 8), generator=gen)
    keep = torch.ones(3, 8, dtype=torch.bool)
    keep[:, 0] = False
    rows, cols = acts.reshape(24, 40).nonzero(as_tuple=True)
    shuffle = torch.randperm(len(rows), generator=gen)
    vals = acts.reshape(24, 40)[rows, cols]
    codes = SparseCodes(rows[shuffle], cols[shuffle], vals[shuffle], batch=24, d_sae=40)
    cfg = CollectConfig(top_k=3, window_left=2, window_right=1, random_pool=5)
    dense, sparse = Accumulator(40, cfg, 8), Accumulator(40, cfg, 8)
    dense.update(ids, acts, first_context=0, keep=keep)
    sparse.update(ids, codes, first_context=0, keep=keep)
    assert dense.count.sum() > 20 and dense.cooc is not None and int(dense.cooc.sum()) > 20
    assert dense.to_bytes() == sparse.to_bytes()
    with pytest.raises(ValueError, match="codes of 24 tokens"):
        Accumulator(40, cfg, 8).update(ids[:2], codes, first_context=0)
