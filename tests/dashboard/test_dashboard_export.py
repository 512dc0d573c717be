"""The self-contained export: every latent listed, paged, sorted and searched in the browser; latent
pages embedded up to a size cap, and the pages past the cap say so."""

from __future__ import annotations

import json

import pytest
from dash_helpers import open_view

from mechscope.apps.dashboard.standalone import export_data, export_html, table_key
from mechscope.core.errors import MechscopeError
from mechscope.features import FeatureDatabase


def _rows(page) -> list[tuple[int, float, float]]:
    return [(int(a), float(b), float(c)) for a, b, c in page.eval_on_selector_all(
        "#latents tr[data-latent]", "els => els.map(e => [e.dataset.latent, e.dataset.density, e.dataset.maxAct])")]


def _size(value) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def test_export_pages_every_sort_like_the_server(page, sources, tmp_path) -> None:
    fs = sources.features["features"]
    path = export_html(sources, tmp_path / "all.html", max_mb=None)
    total = len(fs.ids)
    for sort, order in (("latent", "asc"), ("density", "desc"), ("max_act", "asc"), ("score", "desc")):
        for offset in (0, (total - 1) // 50 * 50 if total > 50 else 10):
            open_view(page, f"{path.as_uri()}#/features/features?sort={sort}&order={order}&offset={offset}")
            expected = fs.page("features", sort, order, offset, 50).rows
            assert _rows(page) == [(r.latent, r.density, r.max_act) for r in expected], (sort, order, offset)
            assert int(page.get_attribute("#latents", "data-total")) == total
    assert not page.query_selector("#export-cap")
    last = total - 1
    open_view(page, f"{path.as_uri()}#/features/features/{last}")
    page.wait_for_selector("#latent")
    assert int(page.get_attribute("#latent", "data-latent")) == last
    acts = [float(x) for x in page.eval_on_selector_all("#top .example", "els => els.map(e => e.dataset.act)")]
    assert acts == [e["act"] for e in FeatureDatabase.open(fs.db.path).examples(last, "top")]


@pytest.mark.parametrize("query", ["digits", "comma word", "numbers"])
def test_export_search_finds_the_same_latents_as_the_database(page, sources, dash_dir, tmp_path, query) -> None:
    path = export_html(sources, tmp_path / "search.html", max_mb=None)
    db = FeatureDatabase.open(dash_dir / "features.db")
    expected = {h["latent"] for h in db.search(query, limit=500)}
    assert expected, "the query matches something in the fixture database"
    open_view(page, f"{path.as_uri()}#/features/features?q={query.replace(' ', '%20')}")
    shown = {int(x) for x in page.eval_on_selector_all("#hits tr[data-latent]", "els => els.map(e => e.dataset.latent)")}
    assert shown == expected
    assert page.input_value("#search") == query


def test_export_cap_stops_latent_pages_and_says_so(page, sources, tmp_path) -> None:
    full = export_data(sources, max_mb=None)
    details = {k: v for k, v in full.items() if k.startswith("/api/features/features/latents/")}
    base = _size({k: v for k, v in full.items() if k not in details})
    cap_mb = (base + 3.5 * max(_size(v) for v in details.values())) / 1e6
    capped = export_data(sources, max_mb=cap_mb)
    table = capped[table_key("features")]
    total = len(sources.features["features"].ids)
    assert 0 < table["pages"] < total and table["max_mb"] == cap_mb
    assert len(table["rows"]) == total  # every latent still listed
    assert _size(capped) <= cap_mb * 1e6
    embedded = sorted(int(k.rsplit("/", 1)[1]) for k in capped if k.startswith("/api/features/features/latents/"))
    assert embedded == list(range(table["pages"]))
    path = export_html(sources, tmp_path / "capped.html", max_mb=cap_mb)
    open_view(page, f"{path.as_uri()}#/features/features?sort=latent&order=asc&offset={(total - 1) // 50 * 50}")
    assert _rows(page)[-1][0] == total - 1
    assert f"latents 0–{table['pages'] - 1} of {total}" in page.text_content("#export-cap")
    open_view(page, f"{path.as_uri()}#/features/features/{total - 1}")
    message = page.text_content("#error")
    assert "not in this export" in message and f"{cap_mb} MB" in message and "--export-max-mb" in message
    open_view(page, f"{path.as_uri()}#/features/features/{table['pages'] - 1}")
    page.wait_for_selector("#top")


def test_export_cap_below_the_lists_is_refused(sources) -> None:
    with pytest.raises(MechscopeError, match="raise the cap"):
        export_data(sources, max_mb=0.001)


def test_export_cap_option_of_the_cli(dash_dir, tmp_path, capsys) -> None:
    from mechscope.apps.cli import main

    assert main(["dashboard", str(dash_dir), "--export-html", str(tmp_path / "x.html"), "--export-max-mb", "-1"]) == 2
    assert "--export-max-mb" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
    assert main(["dashboard", str(dash_dir), "--export-html", str(tmp_path / "x.html"), "--export-max-mb", "0.001"]) == 2
    assert "raise the cap" in capsys.readouterr().err


def test_graph_page_refuses_a_file_that_is_not_a_feature_database(dash_dir) -> None:
    from mechscope.apps.graph_view import graph_html

    doc = json.loads((dash_dir / "graph.json").read_text())
    with pytest.raises(MechscopeError, match="not a mechscope feature database"):
        graph_html(doc, "g", databases=[dash_dir / "notes.txt"])


@pytest.mark.slow
def test_export_of_a_100k_latent_database(page, tmp_path) -> None:
    """Every one of 100,000 latents listed in the file (the last page of a sort equals the server's), the
    cap message shown, and search finding what the database's full-text search finds."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from dashboard_search import synthetic_database
    from mechscope.apps.dashboard.api import Sources

    n = 100_000
    db_path = synthetic_database(tmp_path / "big.db", n, n_explained=500)
    sources = Sources.scan([db_path])
    path = export_html(sources, tmp_path / "big.html", max_mb=12)
    assert path.stat().st_size < 13e6
    fs = sources.features["big"]
    last = (n - 1) // 50 * 50
    open_view(page, f"{path.as_uri()}#/features/big?sort=density&order=desc&offset={last}")
    assert _rows(page) == [(r.latent, r.density, r.max_act) for r in fs.page("big", "density", "desc", last, 50).rows]
    assert f"of {n}" in page.text_content("#export-cap")
    word = FeatureDatabase.open(db_path).latent(0)["explanations"][0]["text"].split()[0]
    expected = {h["latent"] for h in FeatureDatabase.open(db_path).search(word, limit=n)}
    open_view(page, f"{path.as_uri()}#/features/big?q={word}")
    shown = {int(x) for x in page.eval_on_selector_all("#hits tr[data-latent]", "els => els.map(e => e.dataset.latent)")}
    assert 0 < len(expected) < 50  # all of them fit on the page
    assert shown == expected
