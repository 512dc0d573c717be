"""A 100,000-latent database: exact last pages, sorted pages equal SQL's order, limits refused, search works."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import httpx
import pytest
from dash_helpers import ServerThread, open_view

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

N = 100_000


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    from dashboard_search import synthetic_database
    from mechscope.apps.dashboard.api import Sources
    from mechscope.apps.dashboard.server import create_app

    path = synthetic_database(tmp_path_factory.mktemp("big") / "big.db", N, n_explained=500)
    thread = ServerThread(create_app(Sources.scan([path])))
    yield thread.url, path
    thread.stop()


def test_last_page_by_id_is_exact(big) -> None:
    url, _ = big
    page = httpx.get(f"{url}/api/features/big/latents?sort=latent&order=asc&offset={N - 37}&limit=50").json()
    assert page["total"] == N and [r["latent"] for r in page["rows"]] == list(range(N - 37, N))
    empty = httpx.get(f"{url}/api/features/big/latents?offset={N}&limit=50").json()
    assert empty["rows"] == []


@pytest.mark.parametrize("sort,order", [("density", "desc"), ("max_act", "asc"), ("score", "desc")])
def test_sorted_pages_equal_sqlite_order(big, sort: str, order: str) -> None:
    url, path = big
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    if sort == "score":
        sql = ("SELECT l.latent FROM latents l LEFT JOIN (SELECT latent, MAX(value) v FROM scores GROUP BY latent) s "
               "USING (latent) ORDER BY s.v IS NULL, s.v DESC, l.latent LIMIT 50 OFFSET ?")
    else:
        sql = f"SELECT latent FROM latents ORDER BY {sort} {order.upper()}, latent LIMIT 50 OFFSET ?"
    for offset in (0, 49_950, N - 50):
        expected = [r[0] for r in con.execute(sql, (offset,))]
        page = httpx.get(f"{url}/api/features/big/latents?sort={sort}&order={order}&offset={offset}&limit=50").json()
        assert [r["latent"] for r in page["rows"]] == expected, offset


def test_limit_above_the_maximum_is_refused_clearly(big) -> None:
    url, _ = big
    r = httpx.get(f"{url}/api/features/big/latents?limit=501")
    assert r.status_code == 422
    assert "less than or equal to 500" in r.text


def test_search_finds_explained_latents(big) -> None:
    url, path = big
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    latent, text = con.execute("SELECT latent, text FROM explanations WHERE latent = 123").fetchone()
    hits = httpx.get(f"{url}/api/features/big/search", params={"q": text, "limit": 500}).json()["hits"]
    assert latent in [h["latent"] for h in hits]
    assert all(set(text.split()) <= set(h["explanations"].split()) for h in hits)


def test_last_page_link_in_the_browser(page, big) -> None:
    url, _ = big
    open_view(page, f"{url}/#/features/big?sort=latent&order=asc")
    page.click("text=last »")
    page.wait_for_selector(f"#latents[data-offset='{N - 50}']")
    rows = page.eval_on_selector_all("#latents tr[data-latent]", "els => els.map(e => Number(e.dataset.latent))")
    assert rows == list(range(N - 50, N))
