"""The feature database's full-text index: one row per latent keyed by rowid, and the upgrade of version-1 files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from mechscope.dictionaries import make_dictionary
from mechscope.features import (
    SCHEMA_VERSION,
    CollectConfig,
    FeatureDatabase,
    FeatureDatabaseError,
    collect_features,
)
from tiny_lm import tiny_lm, write_corpus


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fts")
    sae = make_dictionary("relu", d_in=64, d_sae=24, seed=2, hook_name="blocks.1.hook_resid_post")
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)
    path = folder / "f.db"
    collect_features(tiny_lm("llama"), sae, path, source=write_corpus(folder, n_docs=8, words=40), context_length=16,
                     config=CollectConfig(top_k=3, n_intervals=2, per_interval=2, n_random=2, random_pool=16),
                     progress=False)
    return path


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _fts(path: Path) -> list[tuple[int, int, str, str]]:
    con = sqlite3.connect(path)
    rows = con.execute("SELECT rowid, latent, explanations, top_tokens FROM features_fts ORDER BY rowid").fetchall()
    con.close()
    return rows


def _top_tokens_by_hand(db: FeatureDatabase, latent: int) -> str:
    """Centre tokens of the top examples, then top positive logit tokens, stripped, each once."""
    words = [e["text"][e["center"]] for e in db.examples(latent, "top")]
    words += [e["text"] for e in db.latent(latent)["logits_positive"]]
    return " ".join(dict.fromkeys(w.strip() for w in words if w.strip()))


def test_one_fts_row_per_latent_keyed_by_rowid(collected: Path, tmp_path: Path) -> None:
    path = _copy(collected, tmp_path / "a.db")
    with FeatureDatabase.open(path) as db:
        rows = _fts(path)
        assert [r[0] for r in rows] == [r[1] for r in rows] == list(range(db.d_sae))
        assert all(r[2] == "" for r in rows)
        for r in rows:
            assert r[3] == _top_tokens_by_hand(db, r[0])
        for i in range(5):  # rewriting one latent's explanations many times keeps one row, the others untouched
            db.add_explanation(7, f"fires on version {i} of something", "rule-based")
        db.add_explanation(3, "another latent", "rule-based")
        after = _fts(path)
        assert [r[0] for r in after] == list(range(db.d_sae))
        assert after[7][2] == "\n".join(f"fires on version {i} of something" for i in range(5))
        assert after[3][2] == "another latent"
        assert [r for r in after if r[0] not in (3, 7)] == [r for r in rows if r[0] not in (3, 7)]
        assert [h["latent"] for h in db.search("version 4")] == [7]
        assert [h["latent"] for h in db.search("another")] == [3]


def test_version_1_file_is_upgraded_in_place(collected: Path, tmp_path: Path) -> None:
    path = _copy(collected, tmp_path / "v1.db")
    with FeatureDatabase.open(path) as db:
        db.add_explanation(5, "old explanation", "rule-based")
        want = _fts(path)
    con = sqlite3.connect(path)  # what a version-1 writer left: rows numbered from 1 after a rebuild
    rows = con.execute("SELECT latent, explanations, top_tokens FROM features_fts ORDER BY rowid").fetchall()
    con.execute("DELETE FROM features_fts")
    con.executemany("INSERT INTO features_fts (rowid, latent, explanations, top_tokens) VALUES (?, ?, ?, ?)",
                    [(r[0] + 1, *r) for r in rows])
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    assert _fts(path) != want
    with FeatureDatabase.open(path) as db:
        assert db.meta()["schema_version"] == SCHEMA_VERSION == 2
        assert _fts(path) == want
        db.add_explanation(5, "new explanation", "rule-based")
        assert [h["latent"] for h in db.search("new explanation")] == [5]
    assert len(_fts(path)) == len(want)


def test_unknown_schema_version_is_refused(collected: Path, tmp_path: Path) -> None:
    path = _copy(collected, tmp_path / "v9.db")
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(9),))
    con.commit()
    con.close()
    with pytest.raises(FeatureDatabaseError, match="schema version 9; this mechscope reads 2"):
        FeatureDatabase.open(path)
