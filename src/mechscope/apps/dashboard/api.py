"""The dashboard's data: typed response models and the read-only sources they come from.

Every file is found once, when the server starts, under the paths the user named: feature
databases (opened with SQLite's `mode=ro`), `mechscope patch --json` results, `mechscope heads
--json` tables and circuit-tracer graph JSON. Requests name a source by a short id, never by a
path, so nothing outside the served folders can be reached.

Example:
    >>> sources = Sources.scan(["out/"])                     # doctest: +SKIP
    >>> sources.feature_source("features").page("features", "density", "desc", 0, 50).total  # doctest: +SKIP
    16384
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from mechscope.apps.dashboard.views import (
    graph_view,
    heads_view,
    heatmap_view,
    latent_detail_view,
    open_read_only,
)
from mechscope.core.errors import MechscopeError, unknown_name_message
from mechscope.features.database import is_feature_database

MAX_LIMIT = 500          # rows per page of the latent list
MAX_QUERY_CHARS = 200    # a search query
MAX_JSON_BYTES = 256 * 2**20
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,80}$"
SortKey = Literal["latent", "density", "max_act", "score"]
Order = Literal["asc", "desc"]


class NotFoundError(MechscopeError, KeyError):
    """A source id or latent that the server does not hold (HTTP 404).

    Example:
        >>> str(NotFoundError("no feature database 'x'"))
        "no feature database 'x'"
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- response models -----------------------------------------------------------------------------
class SourceInfo(BaseModel):
    """One result file the server found: its id, kind (`features`, `patch`, `heads`, `graph`) and file name.

    Example:
        >>> SourceInfo(id="patch", kind="patch", name="patch.json").detail
        {}
    """
    id: str
    kind: Literal["features", "patch", "heads", "graph"]
    name: str
    detail: dict[str, Any] = {}


class SourceList(BaseModel):
    """The answer of `GET /api/sources`: every source, and the live model's name (None: no live views).

    Example:
        >>> SourceList(sources=[SourceInfo(id="patch", kind="patch", name="patch.json")]).model is None
        True
    """
    sources: list[SourceInfo]
    model: str | None = None


class LatentRow(BaseModel):
    """One row of the latent list: the latent's id, how often it fired, its largest activation, best score and explanation.

    Example:
        >>> LatentRow(latent=12, n_fired=40, density=0.004, max_act=7.5, score=None, explanation="digits").latent
        12
    """
    latent: int
    n_fired: int
    density: float
    max_act: float
    score: float | None
    explanation: str | None


class LatentPage(BaseModel):
    """One page of a feature database's latent list, in the requested sort order.

    Example:
        >>> LatentPage(db="features", total=1, offset=0, limit=50, sort="latent", order="asc", rows=[]).total
        1
    """
    db: str
    total: int
    offset: int
    limit: int
    sort: SortKey
    order: Order
    rows: list[LatentRow]


class SearchHit(BaseModel):
    """One latent found by full-text search: its explanations, top tokens and match score.

    Example:
        >>> SearchHit(latent=12, explanations="digits", top_tokens="1 2 3", score=1.5).latent
        12
    """
    latent: int
    explanations: str
    top_tokens: str
    score: float


class SearchResult(BaseModel):
    """The answer of a search of one feature database: the query and its hits, best first.

    Example:
        >>> SearchResult(db="features", query="digits", hits=[]).query
        'digits'
    """
    db: str
    query: str
    hits: list[SearchHit]


class Example(BaseModel):
    """One example excerpt of a latent: tokens, their activations and the centre token's place.

    Example:
        >>> ex = Example(kind="top", rank=0, interval=None, token_index=5, context=0, position=1, center=1, act=3.0,
        ...              tokens=[504, 2415], text=["The", " cat"], acts=[0.0, 3.0])
        >>> ex.text[ex.center]
        ' cat'
    """
    kind: str
    rank: int
    interval: int | None
    token_index: int
    context: int
    position: int
    center: int
    act: float
    tokens: list[int]
    text: list[str]
    acts: list[float]


class LatentDetail(BaseModel):
    """Everything a latent's page shows: statistics, histogram, logit effects, neighbours, explanations, examples.

    Example:
        >>> detail = LatentDetail(db="features", latent=12, stats={}, hist=[], hist_edges=[], logits_positive=[],
        ...                       logits_negative=[], decoder_cosine=[], cooccurrence=[], explanations=[], examples={})
        >>> detail.latent
        12
    """
    db: str
    latent: int
    stats: dict[str, Any]
    hist: list[int]
    hist_edges: list[float]
    logits_positive: list[dict[str, Any]]
    logits_negative: list[dict[str, Any]]
    decoder_cosine: list[dict[str, Any]]
    cooccurrence: list[dict[str, Any]]
    explanations: list[dict[str, Any]]
    examples: dict[str, list[Example]]


class Heatmap(BaseModel):
    """A patching result as the patching view reads it (`views.heatmap_view`).

    Example:
        >>> Heatmap(id="patch", site="resid_pre", method="activation", mode="denoise", by=["layer"], labels=[[0, 1]],
        ...         scores=[0.1, 0.9], clean=2.0, corrupt=-1.0).by
        ['layer']
    """
    id: str
    site: str
    method: str
    mode: str
    by: list[str]
    labels: list[list[Any]]
    scores: Any
    clean: float | None
    corrupt: float | None


class HeadsTable(BaseModel):
    """Head detector scores as the heads grid reads them (`views.heads_view`).

    Example:
        >>> HeadsTable(**heads_view("heads", [{"layer": 1, "head": 2, "induction": 0.8}])).n_layers
        2
    """
    id: str
    n_layers: int
    n_heads: int
    heads: list[dict[str, Any]]


class Graph(BaseModel):
    """Nodes carry `node_id`, `feature_type`, `influence`, `layer` and their place: `row` (layer) and `col`;
    feature nodes also their `latent` and the `db` holding its examples (None: no database linked).
    `dictionaries`: per layer, the transcoder's sha256 the graph records and the served database matching it.

    Example:
        >>> Graph(**graph_view("c", {"circuit": {"edges": [{"edge": "a0.h1->m0", "score": 0.5}]}})).kind
        'circuit'
    """

    id: str
    kind: Literal["attribution", "circuit"]
    metadata: dict[str, Any]
    nodes: list[dict[str, Any]]
    links: list[dict[str, Any]]
    row_labels: list[str]
    col_labels: list[str]
    dictionaries: list[dict[str, Any]] = []


# -- sources -------------------------------------------------------------------------------------
class FeatureSource:
    """One feature database, read-only, with its sort orders built once (numpy argsort, latent breaks ties).

    Example:
        >>> source = FeatureSource(Path("out/features.db"))                 # doctest: +SKIP
    """

    def __init__(self, path: Path) -> None:
        self.db = open_read_only(path)
        con = self.db.con
        self.lock = threading.Lock()
        rows = np.array(con.execute("SELECT latent, density, max_act FROM latents ORDER BY latent").fetchall(),
                        dtype=np.float64).reshape(-1, 3)
        self.ids = rows[:, 0].astype(np.int64)
        score = np.full(len(self.ids), np.nan)
        best = dict(con.execute("SELECT latent, MAX(value) FROM scores WHERE value IS NOT NULL GROUP BY latent"))
        if best:
            where = np.searchsorted(self.ids, np.fromiter(best.keys(), np.int64))
            score[where] = np.fromiter(best.values(), np.float64)
        self.keys = {"latent": self.ids.astype(np.float64), "density": rows[:, 1], "max_act": rows[:, 2],
                     "score": score}
        self._orders: dict[tuple[str, str], np.ndarray] = {}
        meta = self.db.meta()
        self.hist_edges = [float(x) for x in meta.get("hist_edges", [])]
        self.info = {"d_sae": meta.get("d_sae"), "model": meta.get("model"), "hook_name": meta.get("hook_name"),
                     "n_tokens": meta.get("n_tokens"), "dictionary_sha256": meta.get("dictionary_sha256")}

    def order(self, sort: str, order: str) -> np.ndarray:
        """Row indices sorted by `sort` (NaN scores last in either order), ties by ascending latent."""
        if (sort, order) not in self._orders:
            key = self.keys[sort]
            signed = -key if order == "desc" else key
            missing = np.isnan(signed)
            self._orders[(sort, order)] = np.lexsort((self.ids, np.where(missing, 0.0, signed), missing))
        return self._orders[(sort, order)]

    def page(self, db_id: str, sort: str, order: str, offset: int, limit: int) -> LatentPage:
        picked = self.order(sort, order)[offset:offset + limit]
        latents = [int(x) for x in self.ids[picked]]
        with self.lock:
            marks = ",".join("?" * len(latents))
            stats = {r[0]: r for r in self.db.con.execute(
                f"SELECT latent, n_fired, density, max_act FROM latents WHERE latent IN ({marks})", latents)}
            texts = dict(self.db.con.execute(
                f"SELECT latent, text FROM explanations WHERE latent IN ({marks}) ORDER BY id", latents).fetchall())
        rows = []
        for i, latent in zip(picked.tolist(), latents, strict=True):
            s = self.keys["score"][i]
            r = stats[latent]
            rows.append(LatentRow(latent=latent, n_fired=r[1], density=r[2], max_act=r[3],
                                  score=None if np.isnan(s) else float(s), explanation=texts.get(latent)))
        return LatentPage(db=db_id, total=len(self.ids), offset=offset, limit=limit, sort=sort,  # type: ignore[arg-type]
                          order=order, rows=rows)  # type: ignore[arg-type]

    def detail(self, db_id: str, latent: int) -> LatentDetail:
        if not 0 <= latent < len(self.ids):
            raise NotFoundError(f"latent {latent} is outside 0..{len(self.ids) - 1} in {db_id!r}")
        with self.lock:
            return LatentDetail(**latent_detail_view(db_id, self.db, latent, self.hist_edges))

    def search(self, db_id: str, query: str, limit: int) -> SearchResult:
        with self.lock:
            hits = self.db.search(query, limit=limit)
        return SearchResult(db=db_id, query=query, hits=[SearchHit(**h) for h in hits])


def _read_json(path: Path) -> Any:
    if path.stat().st_size > MAX_JSON_BYTES:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _kind_of(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if {"scores", "by", "labels", "site"} <= data.keys():
        return "patch"
    if {"nodes", "links", "metadata"} <= data.keys():
        return "graph"
    if isinstance(data.get("circuit"), dict) and isinstance(data["circuit"].get("edges"), list):
        return "graph"
    if isinstance(data.get("heads"), list) and data["heads"] and isinstance(data["heads"][0], dict) \
            and {"layer", "head"} <= data["heads"][0].keys():
        return "heads"
    return None


class Sources:
    """Everything the server shows, found once under `paths` (files or folders, searched to depth 3).

    Example:
        >>> Sources.scan(["."]).infos          # an empty folder holds nothing to show
        []
    """

    def __init__(self) -> None:
        self.features: dict[str, FeatureSource] = {}
        self.documents: dict[str, tuple[str, dict[str, Any]]] = {}
        self.infos: list[SourceInfo] = []

    @classmethod
    def scan(cls, paths: list[str | Path]) -> Sources:
        out = cls()
        for root in paths:
            root = Path(root)
            if not root.exists():
                raise MechscopeError(f"{root} does not exist.")
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                         and len(p.relative_to(root).parts) <= 3)
            for path in files:
                out._add(path)
        return out

    def _unique_id(self, stem: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:60] or "source"
        taken = {i.id for i in self.infos}
        name, n = base, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        return name

    def _add(self, path: Path) -> None:
        if path.suffix in (".db", ".sqlite", ".sqlite3") and is_feature_database(path):
            sid = self._unique_id(path.stem)
            self.features[sid] = FeatureSource(path)
            self.infos.append(SourceInfo(id=sid, kind="features", name=path.name, detail=self.features[sid].info))
        elif path.suffix == ".json":
            data = _read_json(path)
            kind = _kind_of(data)
            if kind is not None:
                sid = self._unique_id(path.stem)
                self.documents[sid] = (kind, data)
                self.infos.append(SourceInfo(id=sid, kind=kind, name=path.name))  # type: ignore[arg-type]

    # -- lookups -------------------------------------------------------------------------------
    def feature_source(self, db_id: str) -> FeatureSource:
        if db_id not in self.features:
            raise NotFoundError(unknown_name_message("feature database", db_id, self.features))
        return self.features[db_id]

    def document(self, kind: str, doc_id: str) -> dict[str, Any]:
        found = {k: d for k, (c, d) in self.documents.items() if c == kind}
        if doc_id not in found:
            raise NotFoundError(unknown_name_message(f"{kind} result", doc_id, found))
        return found[doc_id]

    def heatmap(self, doc_id: str) -> Heatmap:
        return Heatmap(**heatmap_view(doc_id, self.document("patch", doc_id)))

    def heads(self, doc_id: str) -> HeadsTable:
        return HeadsTable(**heads_view(doc_id, self.document("heads", doc_id)["heads"]))

    def graph(self, doc_id: str) -> Graph:
        """The graph placed for the view, its feature nodes linked to the served databases by dictionary sha256."""
        databases: dict[str, str] = {}
        for db_id, fs in self.features.items():
            if fs.info.get("dictionary_sha256"):
                databases.setdefault(fs.info["dictionary_sha256"], db_id)
        return Graph(**graph_view(doc_id, self.document("graph", doc_id), databases))
