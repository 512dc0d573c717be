"""The pages in Debian's Chromium against the real server: what they show equals the Python API."""

from __future__ import annotations

import json
import re

from dash_helpers import GRAPH_DB_LAYER, SHOTS, open_view

from mechscope.features import FeatureDatabase


def _floats(page, selector: str, attr: str) -> list[float]:
    return [float(x) for x in page.eval_on_selector_all(selector, f"els => els.map(e => e.getAttribute('{attr}'))")]


def _ints(page, selector: str, attr: str) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all(selector, f"els => els.map(e => e.getAttribute('{attr}'))")]


def test_home_lists_every_source(page, server) -> None:
    open_view(page, server.url + "/")
    ids = page.eval_on_selector_all("[data-source-id]", "els => els.map(e => e.dataset.kind + ':' + e.dataset.sourceId)")
    assert sorted(ids) == ["features:features", "features:transcoder_l1", "graph:circuit", "graph:graph", "heads:heads",
                           "patch:patch"]
    page.screenshot(path=str(SHOTS / "dashboard_sources.png"))


def test_feature_list_sorted_and_paged_like_the_database(page, server, dash_dir) -> None:
    db = FeatureDatabase.open(dash_dir / "features.db")
    expected = [r[0] for r in db.con.execute("SELECT latent FROM latents ORDER BY density DESC, latent LIMIT 50")]
    densities = [r[0] for r in db.con.execute("SELECT density FROM latents ORDER BY density DESC, latent LIMIT 50")]
    open_view(page, server.url + "/#/features/features?sort=density&order=desc")
    page.wait_for_selector("#latents tr[data-latent]")
    assert _ints(page, "#latents tr[data-latent]", "data-latent") == expected
    assert _floats(page, "#latents tr[data-latent]", "data-density") == densities
    page.screenshot(path=str(SHOTS / "dashboard_features.png"), full_page=True)
    page.fill("#search", "digits")
    page.click("form button")
    page.wait_for_selector("#hits tr[data-latent]")
    hits = db.search("digits", limit=50)
    assert _ints(page, "#hits tr[data-latent]", "data-latent") == [h["latent"] for h in hits]
    assert _floats(page, "#hits tr[data-latent]", "data-score") == [h["score"] for h in hits]


def test_feature_page_equals_the_python_api(page, server, dash_dir) -> None:
    db = FeatureDatabase.open(dash_dir / "features.db")
    latent = db.live_latents()[0]  # explained and scored by the fixture
    info, top = db.latent(latent), db.examples(latent, "top")
    open_view(page, f"{server.url}/#/features/features/{latent}")
    page.wait_for_selector("#top .example")
    assert _floats(page, "#top .example", "data-act") == [e["act"] for e in top]
    for i, example in enumerate(top):
        row = f"#top .example:nth-child({i + 1})"
        assert _ints(page, f"{row} .tok", "data-token-id") == example["tokens"]
        assert _floats(page, f"{row} .tok", "data-act") == example["acts"]
        marked = page.eval_on_selector_all(f"{row} .tok", "els => els.map(e => e.classList.contains('max'))")
        assert marked.index(True) == example["center"] and marked.count(True) == 1
        title = page.get_attribute(f"{row} .tok:nth-of-type({example['center'] + 2})", "title")
        assert title.startswith(json.dumps(example["text"][example["center"]]))
    interval = db.examples(latent, "interval")
    assert sorted(_floats(page, "#interval .example", "data-act")) == sorted(e["act"] for e in interval)
    assert _ints(page, "svg.hist rect", "data-count") == info["hist"]
    assert _floats(page, ".logits-positive li", "data-value") == [t["value"] for t in info["logits_positive"]]
    assert _ints(page, ".logits-negative li", "data-token-id") == [t["token_id"] for t in info["logits_negative"]]
    assert _ints(page, "[data-kind=decoder_cosine] li", "data-other") == [n["other"] for n in info["decoder_cosine"]]
    assert _floats(page, "[data-kind=cooccurrence] li", "data-value") == [n["value"] for n in info["cooccurrence"]]
    explanation = info["explanations"][0]
    assert page.get_attribute("[data-explanation-id]", "data-explanation") == explanation["text"]
    shown = dict(zip(page.eval_on_selector_all("[data-score-method]", "els => els.map(e => e.dataset.scoreMethod)"),
                     _floats(page, "[data-score-method]", "data-score"), strict=True))
    assert shown == explanation["scores"]
    page.screenshot(path=str(SHOTS / "dashboard_feature.png"), full_page=True)


def test_patching_heatmap_cells_and_token_axis(page, server, dash_dir) -> None:
    result = json.loads((dash_dir / "patch.json").read_text())
    open_view(page, server.url + "/#/patch/patch")
    page.wait_for_selector("rect.cell")
    flat = [v for row in result["scores"] for v in row]
    assert _floats(page, "rect.cell", "data-score") == flat
    labels = page.eval_on_selector_all("text.col-label", "els => els.map(e => e.textContent)")
    assert labels == result["labels"][1]
    tip = page.text_content("rect.cell[data-index='2,3'] title")
    assert tip.startswith(f"layer 2, pos {json.dumps(result['labels'][1][3])}: ")
    page.screenshot(path=str(SHOTS / "dashboard_patching.png"), full_page=True)


def test_heads_grid_equals_the_detector_table(page, server, dash_dir) -> None:
    heads = json.loads((dash_dir / "heads.json").read_text())["heads"]
    open_view(page, server.url + "/#/heads/heads")
    page.wait_for_selector("svg.heads")
    grid = "svg.heads[data-detector=induction] rect.head"
    shown = {(int(a), int(b)): float(v) for a, b, v in page.eval_on_selector_all(
        grid, "els => els.map(e => [e.dataset.layer, e.dataset.head, e.dataset.value])")}
    assert shown == {(h["layer"], h["head"]): h["induction"] for h in heads}
    page.screenshot(path=str(SHOTS / "dashboard_heads.png"), full_page=True)


def test_graph_nodes_edges_and_pinning(page, server, dash_dir) -> None:
    doc = json.loads((dash_dir / "graph.json").read_text())
    open_view(page, server.url + "/#/graph/graph")
    page.wait_for_selector("circle.node")
    ids = page.eval_on_selector_all("circle.node", "els => els.map(e => e.dataset.nodeId)")
    assert ids == [n["node_id"] for n in doc["nodes"]]
    assert _floats(page, "line.edge", "data-weight") == [link["weight"] for link in doc["links"]]
    radius = dict(zip(ids, _floats(page, "circle.node", "r"), strict=True))
    features = sorted((n for n in doc["nodes"] if n["influence"] is not None), key=lambda n: n["influence"])
    assert radius[features[-1]["node_id"]] >= radius[features[0]["node_id"]]
    page.screenshot(path=str(SHOTS / "dashboard_graph.png"), full_page=True)
    target = doc["links"][0]["target"]
    page.click(f"circle.node[data-node-id='{target}']")
    assert page.get_attribute("#graph", "data-pinned") == target
    faded = set(page.eval_on_selector_all("circle.node.faded", "els => els.map(e => e.dataset.nodeId)"))
    linked = {x for link in doc["links"] if target in (link["source"], link["target"])
              for x in (link["source"], link["target"])}
    assert faded == set(ids) - linked


def test_component_circuit_drawn_like_the_record(page, server, dash_dir) -> None:
    record = json.loads((dash_dir / "circuit.json").read_text())
    open_view(page, server.url + "/#/graph/circuit")
    page.wait_for_selector("circle.node")
    shown = [(a, b, float(w)) for a, b, w in page.eval_on_selector_all(
        "line.edge", "els => els.map(e => [e.dataset.source, e.dataset.target, e.dataset.weight])")]
    assert shown == [(e["edge"].split("->")[0], re.sub(r"\.[qkv]$", "", e["edge"].split("->")[1]), e["score"])
                     for e in record["circuit"]["edges"]]
    assert set(page.eval_on_selector_all("circle.node", "els => els.map(e => e.dataset.nodeId)")) == {
        x for a, b, _ in shown for x in (a, b)}
    assert page.text_content("h1").startswith("Circuit")
    page.screenshot(path=str(SHOTS / "dashboard_circuit.png"), full_page=True)


def _feature_nodes(doc: dict, linked: bool) -> list[dict]:
    """The graph's feature nodes of the layer with a database (`linked`) or of the other layers."""
    return [n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"
            and (int(n["layer"]) == GRAPH_DB_LAYER) == linked]


def _on_top(page, nodes: list[dict]) -> list[dict]:
    """The nodes that the mouse reaches at their centre (not covered by a neighbour in the same cell)."""
    ids = page.eval_on_selector_all("circle.node", """els => els.filter(e => {
        e.scrollIntoView({block: "center", inline: "center"});
        const q = e.getBoundingClientRect();
        return document.elementFromPoint(q.x + q.width / 2, q.y + q.height / 2) === e;
    }).map(e => e.dataset.nodeId)""")
    return [n for n in nodes if n["node_id"] in set(ids)]


def _best_linked(page, nodes: list[dict], db: FeatureDatabase) -> dict:
    """A reachable linked node whose latent has the most top examples (a dead latent has none)."""
    return max(_on_top(page, nodes), key=lambda n: (len(db.examples(int(n["node_id"].split("_")[1]), "top")),
                                                    n["node_id"]))


def _hover_shows_examples(page, node: dict, db: FeatureDatabase, db_id: str) -> None:
    """Hover `node` with the mouse; the card shows exactly `db`'s top examples of the node's latent."""
    latent = int(node["node_id"].split("_")[1])
    page.hover(f"circle.node[data-node-id='{node['node_id']}']")
    card = f"#node-card[data-state=examples][data-node-id='{node['node_id']}']"
    page.wait_for_selector(card)
    assert page.get_attribute(card, "data-db") == db_id
    assert int(page.get_attribute(card, "data-latent")) == latent
    top = db.examples(latent, "top")
    assert top, "the linked latent has examples"
    assert _floats(page, f"{card} .example", "data-act") == [e["act"] for e in top]
    for i, example in enumerate(top):
        row = f"{card} .example:nth-child({i + 1})"
        assert _ints(page, f"{row} .tok", "data-token-id") == example["tokens"]
        assert _floats(page, f"{row} .tok", "data-act") == example["acts"]
        marked = page.eval_on_selector_all(f"{row} .tok", "els => els.map(e => e.classList.contains('max'))")
        assert marked.index(True) == example["center"]


def _hover_says_none(page, node: dict) -> None:
    page.hover(f"circle.node[data-node-id='{node['node_id']}']")
    card = f"#node-card[data-state=none][data-node-id='{node['node_id']}']"
    page.wait_for_selector(card)
    assert f"No feature database for layer {node['layer']}" in page.text_content(card)
    assert not page.query_selector_all(f"{card} .example")


def test_graph_hover_shows_the_linked_databases_top_examples(page, server, dash_dir) -> None:
    doc = json.loads((dash_dir / "graph.json").read_text())
    db = FeatureDatabase.open(dash_dir / "transcoder_l1.db")
    assert doc["mechscope"]["dictionaries"][GRAPH_DB_LAYER]["dictionary_sha256"] == db.meta()["dictionary_sha256"]
    linked, unlinked = _feature_nodes(doc, True), _feature_nodes(doc, False)
    assert linked and unlinked, "the fixture graph has feature nodes in the linked layer and in others"
    open_view(page, server.url + "/#/graph/graph")
    page.wait_for_selector("circle.node")
    _hover_says_none(page, _on_top(page, unlinked)[0])
    _hover_shows_examples(page, _best_linked(page, linked, db), db, "transcoder_l1")
    page.screenshot(path=str(SHOTS / "dashboard_graph_hover.png"), full_page=True)


def test_graph_hover_without_any_database_says_so(page, dash_dir, tmp_path) -> None:
    """A graph served alone (its databases absent): every feature node's hover says no database is linked."""
    from dash_helpers import ServerThread

    from mechscope.apps.dashboard.api import Sources
    from mechscope.apps.dashboard.server import create_app

    doc = json.loads((dash_dir / "graph.json").read_text())
    del doc["mechscope"]["dictionaries"]  # a graph that records no transcoder hashes
    (tmp_path / "old.json").write_text(json.dumps(doc))
    thread = ServerThread(create_app(Sources.scan([dash_dir / "graph.json", tmp_path / "old.json"])))
    try:
        for graph_id, node in (("graph", _feature_nodes(doc, True)[0]), ("old", _feature_nodes(doc, True)[0])):
            open_view(page, f"{thread.url}/#/graph/{graph_id}")
            _hover_says_none(page, _on_top(page, [n for n in doc["nodes"] if n["layer"] == node["layer"]
                                                  and n["feature_type"] == "cross layer transcoder"])[0])
        assert "records no transcoder hash" in page.text_content("#node-card .missing")
    finally:
        thread.stop()


def test_standalone_graph_hover_equals_the_server(page, sources, dash_dir, tmp_path) -> None:
    from mechscope.apps.dashboard.standalone import export_html

    doc = json.loads((dash_dir / "graph.json").read_text())
    db = FeatureDatabase.open(dash_dir / "transcoder_l1.db")
    path = export_html(sources, tmp_path / "dash.html")
    open_view(page, f"{path.as_uri()}#/graph/graph")
    _hover_shows_examples(page, _best_linked(page, _feature_nodes(doc, True), db), db, "transcoder_l1")
    _hover_says_none(page, _on_top(page, _feature_nodes(doc, False))[0])


def test_graph_html_page_hovers_with_the_given_database(page, dash_dir, tmp_path) -> None:
    """`mechscope graph --html --features DB`'s page: the dashboard's graph view, examples from the given database."""
    from mechscope.apps.graph_view import graph_html

    doc = json.loads((dash_dir / "graph.json").read_text())
    db = FeatureDatabase.open(dash_dir / "transcoder_l1.db")
    path = tmp_path / "graph.html"
    path.write_text(graph_html(doc, "tiny graph", databases=[dash_dir / "features.db", dash_dir / "transcoder_l1.db"]))
    page.goto(path.as_uri())
    page.wait_for_selector("#app[data-ready=true] circle.node")
    assert page.eval_on_selector_all("circle.node", "els => els.map(e => e.dataset.nodeId)") == [
        n["node_id"] for n in doc["nodes"]]
    _hover_shows_examples(page, _best_linked(page, _feature_nodes(doc, True), db), db, "transcoder_l1")
    _hover_says_none(page, _on_top(page, _feature_nodes(doc, False))[0])
    path.write_text(graph_html(doc, "tiny graph"))  # no database given: every feature node says so
    page.goto(path.as_uri())
    page.wait_for_selector("#app[data-ready=true] circle.node")
    _hover_says_none(page, _on_top(page, _feature_nodes(doc, True))[0])


def test_standalone_file_renders_the_same_values(page, server, sources, tmp_path) -> None:
    from mechscope.apps.dashboard.standalone import export_html

    path = export_html(sources, tmp_path / "dash.html")
    latent = sources.features["features"].page("features", "score", "desc", 0, 1).rows[0].latent
    values = {}
    for url in (f"{server.url}/#/features/features/{latent}", f"{path.as_uri()}#/features/features/{latent}"):
        open_view(page, url)
        page.wait_for_selector("#top .example")
        values[url] = (_floats(page, ".tok", "data-act"), _ints(page, "svg.hist rect", "data-count"),
                       page.text_content("#explanations"))
    first, second = values.values()
    assert first == second and first[0]
    open_view(page, f"{path.as_uri()}#/patch/patch")
    assert len(page.query_selector_all("rect.cell")) == 24


def test_report_sections_render_with_the_dashboard_views(page, tmp_path) -> None:
    from dash_helpers import word_lm

    from mechscope.apps.report.document import render_html
    from mechscope.apps.report.reading_sections import heads_section
    from mechscope.apps.report.sections import patching_report_section

    model = word_lm()
    context = {"prompt": "the cat sat on the", "corrupt": "the dog sat on the", "answer": "mat", "heads_seq_len": 8,
               "heads_batch": 2}
    sections = [heads_section(model, context), patching_report_section(model, context)]
    path = tmp_path / "report.html"
    path.write_text(render_html("report", sections, {"model": "tiny"}))
    page.goto(path.as_uri())
    page.wait_for_selector("[data-mechscope-view=patch][data-ready=true] rect.cell")
    page.wait_for_selector("[data-mechscope-view=heads][data-ready=true] rect.head")
    scores = sections[1].data["scores"]
    assert _floats(page, "rect.cell", "data-score") == [v for row in scores for v in row]
    shown = {(int(a), int(b)): float(v) for a, b, v in page.eval_on_selector_all(
        "svg.heads[data-detector=prev_token] rect.head", "els => els.map(e => [e.dataset.layer, e.dataset.head, e.dataset.value])")}
    assert shown == {(h["layer"], h["head"]): h["prev_token"] for h in sections[0].data["heads"]}
