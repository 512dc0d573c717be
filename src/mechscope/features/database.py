"""The feature database: one SQLite file per dictionary, holding every latent's examples and statistics.

The schema is a contract read by steering, autointerp and the dashboard; `SCHEMA_VERSION`
changes with any incompatible change and docs/feature_database.md describes every table.
The full-text index `features_fts` holds one row per latent keyed by `rowid = latent`, so
re-indexing a latent touches one row (version 1 files numbered the rows otherwise; `open`
migrates them in place).

Example:
    >>> db = FeatureDatabase.open("out/features.db")        # doctest: +SKIP
    >>> db.latent(12)["density"]                            # doctest: +SKIP
    0.0031
    >>> [hit["latent"] for hit in db.search("digits")]      # doctest: +SKIP
    [12, 407]
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mechscope.core.errors import MechscopeError, OutputExistsError

logger = logging.getLogger(__name__)

SCHEMA_NAME = "mechscope-features"
SCHEMA_VERSION = 2
MIGRATES_FROM = (1,)  # versions `open` upgrades in place (v1 -> v2: FTS rows keyed by rowid = latent)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS latents (
    latent INTEGER PRIMARY KEY, n_fired INTEGER NOT NULL, density REAL NOT NULL,
    max_act REAL NOT NULL, mean_act REAL, sum_act REAL,
    hist TEXT NOT NULL, decoder_norm REAL);
CREATE TABLE IF NOT EXISTS examples (
    latent INTEGER NOT NULL, kind TEXT NOT NULL, rank INTEGER NOT NULL, interval INTEGER,
    token_index INTEGER NOT NULL, context INTEGER NOT NULL, position INTEGER NOT NULL,
    center INTEGER NOT NULL, act REAL NOT NULL, tokens TEXT NOT NULL, acts TEXT NOT NULL,
    PRIMARY KEY (latent, kind, rank));
CREATE TABLE IF NOT EXISTS vocab (token_id INTEGER PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS logit_effects (
    latent INTEGER NOT NULL, sign INTEGER NOT NULL, rank INTEGER NOT NULL, token_id INTEGER NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (latent, sign, rank));
CREATE TABLE IF NOT EXISTS neighbours (
    latent INTEGER NOT NULL, kind TEXT NOT NULL, rank INTEGER NOT NULL, other INTEGER NOT NULL,
    value REAL NOT NULL, jaccard REAL, PRIMARY KEY (latent, kind, rank));
CREATE TABLE IF NOT EXISTS explanations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, latent INTEGER NOT NULL, text TEXT NOT NULL,
    explainer TEXT NOT NULL, method TEXT NOT NULL, created REAL NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scores (
    id INTEGER PRIMARY KEY AUTOINCREMENT, explanation_id INTEGER NOT NULL REFERENCES explanations(id),
    latent INTEGER NOT NULL, method TEXT NOT NULL, value REAL, scorer TEXT NOT NULL, n INTEGER NOT NULL,
    created REAL NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS explanations_latent ON explanations (latent);
CREATE INDEX IF NOT EXISTS scores_latent ON scores (latent);
CREATE VIRTUAL TABLE IF NOT EXISTS features_fts USING fts5(latent UNINDEXED, explanations, top_tokens);
CREATE TABLE IF NOT EXISTS collect_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), contexts_done INTEGER NOT NULL, tokens_done INTEGER NOT NULL,
    state BLOB NOT NULL);
"""


class FeatureDatabaseError(MechscopeError, ValueError):
    """A feature database that cannot be used: not ours, another schema version, unknown latent.

    Example:
        >>> db = FeatureDatabase.create("features.db")
        >>> db.set_meta({"d_sae": 4})
        >>> db.check_latent(7)
        Traceback (most recent call last):
        ...
        mechscope.features.database.FeatureDatabaseError: latent 7 is outside 0..3
    """


def is_feature_database(path: str | Path) -> bool:
    """True when `path` is an SQLite file whose `meta.schema` says it is a mechscope feature database.

    Example:
        >>> FeatureDatabase.create("features.db").close()
        >>> _ = open("notes.txt", "w").write("not a database")
        >>> is_feature_database("features.db"), is_feature_database("notes.txt"), is_feature_database("missing.db")
        (True, False, False)
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return False
    return row is not None and json.loads(row[0]) == SCHEMA_NAME


class FeatureDatabase:
    """Read and annotate a feature database. Open with `FeatureDatabase.open(path)`.

    Example:
        >>> db = FeatureDatabase.create("features.db")                 # normally filled by `collect_features`
        >>> db.set_meta({"d_sae": 2, "complete": True})
        >>> eid = db.add_explanation(1, "years and dates", "by hand")
        >>> [hit["latent"] for hit in db.search("years")], db.explanations(1)[0]["text"]
        ([1], 'years and dates')
        >>> db.close()
        >>> FeatureDatabase.open("features.db").d_sae
        2
    """

    def __init__(self, con: sqlite3.Connection, path: Path) -> None:
        self.con = con
        self.path = path
        self.con.row_factory = sqlite3.Row

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, force: bool = False) -> FeatureDatabase:
        """A new, empty database at `path`; an existing file is replaced only if it is ours or `force`."""
        path = Path(path)
        if path.exists():
            if not force and not is_feature_database(path):
                raise OutputExistsError(f"{path} exists and is not a mechscope feature database; "
                                        "choose another path or pass --force.")
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(path)
        con.executescript(SCHEMA)
        db = cls(con, path)
        db.set_meta({"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "complete": False})
        return db

    @classmethod
    def open(cls, path: str | Path, require_complete: bool = True) -> FeatureDatabase:
        """Open an existing database; refuses other files, other schema versions and unfinished collections."""
        path = Path(path)
        if not path.is_file():
            raise FeatureDatabaseError(f"{path} does not exist (create it with `mechscope features collect`).")
        if not is_feature_database(path):
            raise FeatureDatabaseError(f"{path} is not a mechscope feature database.")
        db = cls(sqlite3.connect(path), path)
        version = db.meta().get("schema_version")
        if version in MIGRATES_FROM:
            db._migrate(version)
        elif version != SCHEMA_VERSION:
            db.close()
            raise FeatureDatabaseError(f"{path} has schema version {version}; this mechscope reads {SCHEMA_VERSION} "
                                       f"(and upgrades {', '.join(map(str, MIGRATES_FROM))}).")
        if require_complete and not db.meta().get("complete"):
            db.close()
            raise FeatureDatabaseError(f"{path} holds an unfinished collection; run `mechscope features collect` "
                                       "again with the same arguments to resume it.")
        return db

    def _migrate(self, version: int) -> None:
        """Upgrade a version-1 file in place, in one transaction: the FTS rows are rebuilt with `rowid = latent`."""
        logger.info("%s: upgrading the feature database from schema version %d to %d", self.path, version,
                    SCHEMA_VERSION)
        try:
            with self.con:
                if self.meta().get("d_sae") is not None:
                    self._write_fts(range(self.d_sae))
                else:
                    self.con.execute("DELETE FROM features_fts")
                self.set_meta({"schema_version": SCHEMA_VERSION}, commit=False)
        except sqlite3.OperationalError as err:
            self.close()
            raise FeatureDatabaseError(f"{self.path} has schema version {version} and must be upgraded in place to "
                                       f"{SCHEMA_VERSION}, which failed ({err}); open it once with write access"
                                       ) from err

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> FeatureDatabase:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- meta ----------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """Every `meta` entry, JSON-decoded."""
        return {r["key"]: json.loads(r["value"]) for r in self.con.execute("SELECT key, value FROM meta")}

    def set_meta(self, values: dict[str, Any], commit: bool = True) -> None:
        self.con.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             [(k, json.dumps(v)) for k, v in values.items()])
        if commit:
            self.con.commit()

    @property
    def d_sae(self) -> int:
        return int(self.meta()["d_sae"])

    # -- reading -------------------------------------------------------------------------------
    def check_latent(self, latent: int) -> int:
        d_sae = self.d_sae
        if not 0 <= latent < d_sae:
            raise FeatureDatabaseError(f"latent {latent} is outside 0..{d_sae - 1}")
        return latent

    def token_texts(self, ids: list[int]) -> list[str]:
        """The stored text of each token id (`<id>` when the vocabulary has no entry)."""
        known = {r[0]: r[1] for r in self.con.execute(
            f"SELECT token_id, text FROM vocab WHERE token_id IN ({','.join('?' * len(set(ids)))})", sorted(set(ids)))}
        return [known.get(i, f"<{i}>") for i in ids]

    def examples(self, latent: int, kind: str = "top") -> list[dict[str, Any]]:
        """Examples of `kind` (`top`, `interval`, `random`) in rank order, tokens as ids and text."""
        rows = self.con.execute("SELECT * FROM examples WHERE latent = ? AND kind = ? ORDER BY rank",
                                (self.check_latent(latent), kind)).fetchall()
        out = []
        for r in rows:
            item = dict(r)
            item["tokens"] = json.loads(r["tokens"])
            item["acts"] = json.loads(r["acts"])
            item["text"] = self.token_texts(item["tokens"]) if item["tokens"] else []
            out.append(item)
        return out

    def latent(self, latent: int) -> dict[str, Any]:
        """Statistics, logit effects, neighbours, explanations and scores of one latent."""
        row = self.con.execute("SELECT * FROM latents WHERE latent = ?", (self.check_latent(latent),)).fetchone()
        if row is None:
            raise FeatureDatabaseError(f"latent {latent} has no statistics in {self.path}")
        info = dict(row)
        info["hist"] = json.loads(row["hist"])
        effects = self.con.execute("SELECT sign, token_id, value FROM logit_effects WHERE latent = ? "
                                   "ORDER BY sign DESC, rank", (latent,)).fetchall()
        texts = self.token_texts([e["token_id"] for e in effects]) if effects else []
        info["logits_positive"] = [{"token_id": e["token_id"], "text": t, "value": e["value"]}
                                   for e, t in zip(effects, texts, strict=True) if e["sign"] > 0]
        info["logits_negative"] = [{"token_id": e["token_id"], "text": t, "value": e["value"]}
                                   for e, t in zip(effects, texts, strict=True) if e["sign"] < 0]
        for kind in ("decoder_cosine", "cooccurrence"):
            info[kind] = [dict(r) for r in self.con.execute(
                "SELECT other, value, jaccard FROM neighbours WHERE latent = ? AND kind = ? ORDER BY rank",
                (latent, kind))]
        info["explanations"] = self.explanations(latent)
        return info

    def explanations(self, latent: int) -> list[dict[str, Any]]:
        """Every explanation of `latent`, newest first, each with its scores."""
        out = []
        for r in self.con.execute("SELECT * FROM explanations WHERE latent = ? ORDER BY id DESC", (latent,)):
            item = dict(r)
            item["detail"] = json.loads(r["detail"])
            item["scores"] = {s["method"]: s["value"] for s in self.con.execute(
                "SELECT method, value FROM scores WHERE explanation_id = ? ORDER BY id", (r["id"],))}
            out.append(item)
        return out

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Latents whose explanations or top tokens match an FTS5 query, best match first."""
        try:
            rows = self.con.execute(
                "SELECT latent, explanations, top_tokens, bm25(features_fts) AS score FROM features_fts "
                "WHERE features_fts MATCH ? ORDER BY score LIMIT ?", (_fts_query(query), limit)).fetchall()
        except sqlite3.OperationalError as err:
            raise FeatureDatabaseError(f"bad search query {query!r}: {err}") from err
        return [{"latent": int(r["latent"]), "explanations": r["explanations"], "top_tokens": r["top_tokens"],
                 "score": -float(r["score"])} for r in rows]

    def live_latents(self) -> list[int]:
        """Latents that fired at least once, ascending."""
        return [r[0] for r in self.con.execute("SELECT latent FROM latents WHERE n_fired > 0 ORDER BY latent")]

    # -- annotating ----------------------------------------------------------------------------
    def add_explanation(self, latent: int, text: str, explainer: str, method: str = "examples",
                        detail: dict[str, Any] | None = None) -> int:
        """Store an explanation (and index it for search); returns its id."""
        cur = self.con.execute(
            "INSERT INTO explanations (latent, text, explainer, method, created, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (self.check_latent(latent), text, explainer, method, time.time(), json.dumps(detail or {})))
        self._reindex(latent)
        self.con.commit()
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def add_score(self, explanation_id: int, method: str, value: float | None, scorer: str, n: int,
                  detail: dict[str, Any] | None = None) -> int:
        """Store the score of an explanation by one method (`detection`, `fuzzing`, `simulation`)."""
        row = self.con.execute("SELECT latent FROM explanations WHERE id = ?", (explanation_id,)).fetchone()
        if row is None:
            raise FeatureDatabaseError(f"no explanation with id {explanation_id} in {self.path}")
        cur = self.con.execute(
            "INSERT INTO scores (explanation_id, latent, method, value, scorer, n, created, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (explanation_id, row[0], method, value, scorer, n, time.time(), json.dumps(detail or {})))
        self.con.commit()
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def _reindex(self, latent: int) -> None:
        self._write_fts([latent])

    def _write_fts(self, latents: Iterable[int]) -> None:
        """Replace the FTS rows (`rowid = latent`) of `latents`: their explanations and top tokens.

        Top tokens are the centre tokens of the top examples and the top positive logit tokens,
        space-separated, each once. Every lookup goes through an index, so the cost is linear in
        the rows written.
        """
        latents = sorted(set(latents))
        if not latents:
            return
        everything = len(latents) == self.d_sae
        where, args = ("", ()) if everything else (f" AND latent IN ({','.join('?' * len(latents))})", tuple(latents))
        texts: dict[int, list[str]] = {}
        for k, text in self.con.execute(f"SELECT latent, text FROM explanations WHERE 1{where} ORDER BY latent, id",
                                        args):
            texts.setdefault(k, []).append(text)
        ids: dict[int, list[int]] = {}
        for k, t in self.con.execute(
                "SELECT latent, json_extract(tokens, '$[' || center || ']') FROM examples "
                f"WHERE kind = 'top'{where} ORDER BY latent, rank", args):
            if t is not None:
                ids.setdefault(k, []).append(t)
        for k, t in self.con.execute(
                f"SELECT latent, token_id FROM logit_effects WHERE sign = 1{where} ORDER BY latent, rank", args):
            ids.setdefault(k, []).append(t)
        wanted = sorted({t for row in ids.values() for t in row})
        vocab = (dict(self.con.execute("SELECT token_id, text FROM vocab").fetchall()) if everything
                 else dict(zip(wanted, self.token_texts(wanted), strict=True)) if wanted else {})
        rows = []
        for k in latents:
            words = (vocab.get(t, f"<{t}>").strip() for t in ids.get(k, []))
            rows.append((k, k, "\n".join(texts.get(k, [])), " ".join(dict.fromkeys(w for w in words if w))))
        if everything:
            self.con.execute("DELETE FROM features_fts")
        else:
            self.con.executemany("DELETE FROM features_fts WHERE rowid = ?", [(k,) for k in latents])
        self.con.executemany("INSERT INTO features_fts (rowid, latent, explanations, top_tokens) VALUES (?, ?, ?, ?)",
                             rows)

    def reindex_all(self) -> None:
        """Rebuild the FTS index for every latent (after a collection or an import)."""
        with self.con:
            self._write_fts(range(self.d_sae))


def _fts_query(text: str) -> str:
    """Plain words become an AND of quoted terms; text with FTS operators or quotes passes through."""
    if any(op in text for op in ('"', " OR ", " AND ", " NOT ", "*", "NEAR(")):
        return text
    return " ".join('"' + w.replace('"', "") + '"' for w in text.split())
