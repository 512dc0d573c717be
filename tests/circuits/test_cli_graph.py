"""`mechscope transcoders train` and `mechscope graph` end to end on a tiny model with a local corpus."""

from __future__ import annotations

import json

import pytest
from circuit_tracer.frontend.graph_models import Model

from mechscope.apps import cli
from mechscope.apps.commands import graph as graph_cmd
from mechscope.apps.commands import transcoders as tc_cmd
from mechscope.circuits.graph import AttributionGraph
from mechscope.dictionaries.transcoder_set import load_transcoder_set
from tiny_lm import HashTokenizer, tiny_lm, write_corpus


class DecodingHashTokenizer(HashTokenizer):
    """The hash tokenizer with a `decode` (token strings for the graph's labels)."""

    def decode(self, ids, **_):
        return " ".join(f"t{i}" for i in ids)


@pytest.fixture(scope="module")
def model():
    m = tiny_lm("llama")
    m.tokenizer = DecodingHashTokenizer()
    return m


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model):
    corpus = str(write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=60))
    root = tmp_path_factory.mktemp("tc")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tc_cmd, "load", lambda args: model)
        for kind, arch in (("per_layer", "jumprelu"), ("cross_layer", "topk")):
            folder = root / kind
            argv = ["transcoders", "train", "--out", str(folder), "--kind", kind, "--architecture", arch, "--d-sae", "48",
                    "--k", "6", "--tokens", "768", "--eval-tokens", "256", "--epochs", "2", "--batch-size", "128",
                    "--context-length", "16", "--corpus", corpus]
            assert cli.main(argv) == 0
            out[kind] = folder
    return out


def test_train_writes_a_loadable_set_and_its_evaluation(trained, model):
    for kind, folder in trained.items():
        tcs = load_transcoder_set(folder)
        assert tcs.kind == kind and tcs.n_layers == model.cfg.n_layers
        report = json.loads((folder / "eval.json").read_text())
        assert len(report["layers"]) == model.cfg.n_layers and "provenance" in report
        for row in report["layers"]:
            assert 0 <= row["normalised_mse"] < 1.5 and row["l0"] > 0 and 0 <= row["dead_fraction"] <= 1
        assert 0 <= report["replacement"]["next_token_agreement"] <= 1 and report["replacement"]["kl"] >= 0
    topk = json.loads((trained["cross_layer"] / "eval.json").read_text())
    assert all(row["l0"] <= 6 for row in topk["layers"])


def test_graph_command_writes_json_html_and_own_form(trained, model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(graph_cmd, "load", lambda args: model)
    j, h, o = tmp_path / "g.json", tmp_path / "g.html", tmp_path / "g"
    argv = ["graph", "w1 w2 w3 w4 w5 w6 w7", "--transcoders", str(trained["per_layer"]), "--json", str(j),
            "--html", str(h), "--out", str(o), "--max-feature-nodes", "64", "--batch-size", "16"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "replacement score" in text and "completeness score" in text
    doc = json.loads(j.read_text())
    Model.model_validate(doc)
    assert doc["metadata"]["schema_version"] == 1 and "provenance" in doc
    assert "<svg" in h.read_text()
    saved = AttributionGraph.load(o)
    assert saved.n_features == 64 and saved.info["backward_passes"] == 1 + 4
    # a rerun refuses nothing of its own, and a foreign file is kept without --force
    assert cli.main(argv) == 0
    foreign = tmp_path / "foreign.json"
    foreign.write_text("{}")
    assert cli.main([*argv[:4], "--json", str(foreign)]) != 0
    assert foreign.read_text() == "{}"


def test_graph_command_bad_folder(tmp_path, model, monkeypatch, capsys):
    monkeypatch.setattr(graph_cmd, "load", lambda args: model)
    assert cli.main(["graph", "w1 w2", "--transcoders", str(tmp_path)]) != 0
    assert "transcoders.json" in capsys.readouterr().err
