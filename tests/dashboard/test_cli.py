"""`mechscope dashboard --export-html`: one self-contained file, never over a file mechscope did not write."""

from __future__ import annotations

import json
import re

from mechscope.apps.cli import main
from mechscope.apps.dashboard.standalone import export_data


def test_export_html_embeds_the_api_answers(dash_dir, sources, tmp_path, capsys) -> None:
    out = tmp_path / "dash.html"
    assert main(["dashboard", str(dash_dir), "--export-html", str(out)]) == 0
    text = out.read_text()
    assert "<script src" not in text and "http://" not in text and "https://" not in text
    data = json.loads(re.search(r'id="mechscope-data">(.*?)</script>', text, re.S).group(1))
    assert data == json.loads(json.dumps(export_data(sources)))
    assert data["/api/patch/patch"]["scores"] == json.loads((dash_dir / "patch.json").read_text())["scores"]
    assert main(["dashboard", str(dash_dir), "--export-html", str(out)]) == 0  # ours: replaced


def test_refuses_a_foreign_file_and_a_missing_path(dash_dir, tmp_path, capsys) -> None:
    foreign = tmp_path / "mine.html"
    foreign.write_text("my notes")
    assert main(["dashboard", str(dash_dir), "--export-html", str(foreign)]) == 2
    assert foreign.read_text() == "my notes"
    assert main(["dashboard", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_component_circuit_record_is_laid_out_by_layer_and_head(tmp_path) -> None:
    from mechscope.apps.dashboard.api import Sources

    edges = [{"edge": "input->a0.h1.q", "score": 0.5}, {"edge": "a0.h1->a1.h2.k", "score": -0.25},
             {"edge": "a1.h2->m1", "score": 1.0}, {"edge": "m1->logits", "score": 2.0}]
    record = {"task": "toy", "method": "eap", "n_pairs": 4, "circuit": {"faithfulness": 0.9, "nodes": [], "edges": edges},
              "graph": {"n_layers": 2, "n_heads": 4}, "provenance": {}}
    (tmp_path / "circuit.json").write_text(json.dumps(record))
    graph = Sources.scan([tmp_path]).graph("circuit")
    assert graph.kind == "circuit"
    assert [(link["source"], link["target"], link["weight"]) for link in graph.links] == [
        ("input", "a0.h1", 0.5), ("a0.h1", "a1.h2", -0.25), ("a1.h2", "m1", 1.0), ("m1", "logits", 2.0)]
    place = {n["node_id"]: (n["row"], n["col"], n["influence"]) for n in graph.nodes}
    assert place == {"input": (0, 0, 0.5), "a0.h1": (1, 1, 0.75), "a1.h2": (3, 2, 1.25), "m1": (4, 0, 3.0),
                     "logits": (5, 0, 2.0)}
    assert graph.row_labels == ["input", "attn 0", "mlp 0", "attn 1", "mlp 1", "logits"]
