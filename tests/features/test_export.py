"""Neuronpedia batch JSON: field names, and a round trip that keeps everything the format carries."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.apps.cli import main
from mechscope.dictionaries import make_dictionary, save_dictionary
from mechscope.features import CollectConfig, FeatureDatabase, collect_features
from mechscope.features.export import from_neuronpedia, to_neuronpedia
from tiny_lm import tiny_lm, write_corpus


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("export")
    model = tiny_lm("llama")
    sae = make_dictionary("relu", d_in=64, d_sae=16, seed=1, hook_name="blocks.1.hook_resid_post")
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)
    save_dictionary(sae, folder / "sae")
    path = folder / "f.db"
    collect_features(model, sae, path, source=write_corpus(folder, n_docs=10, words=40), context_length=16,
                     config=CollectConfig(top_k=3, n_intervals=2, per_interval=2, n_random=2, random_pool=16),
                     progress=False)
    with FeatureDatabase.open(path) as db:
        db.add_explanation(3, "the word w7", "rule-based", detail={"note": "planted"})
    return path


def test_round_trip_keeps_what_the_format_carries(db_path, tmp_path) -> None:
    with FeatureDatabase.open(db_path) as db:
        batch = to_neuronpedia(db, model_id="tiny-llama")
        original = {k: (db.latent(k), {kind: db.examples(k, kind) for kind in ("top", "interval", "random")})
                    for k in range(db.d_sae)}
    feature = batch["features"][3]
    for field in ("feature_index", "frac_nonzero", "pos_str", "pos_values", "neg_str", "neg_values",
                  "freq_hist_data_bar_values", "freq_hist_data_bar_heights", "activations", "n_prompts_total",
                  "n_tokens_in_prompt", "maxActApprox", "topkCosSimIndices", "explanations"):
        assert field in feature
    assert {"tokens", "values", "bin_min", "bin_max", "bin_contains", "qualifying_token_index"} <= set(
        feature["activations"][0])
    assert feature["explanations"] == [{"description": "the word w7", "explanationModelName": "rule-based",
                                        "typeName": "examples"}]
    text = json.dumps(batch)
    copy = from_neuronpedia(json.loads(text), tmp_path / "copy.db")
    assert json.dumps(to_neuronpedia(copy)) == text  # export -> import -> export is the identity
    for k, (info, examples) in original.items():
        got = copy.latent(k)
        for field in ("density", "max_act", "hist", "logits_positive", "logits_negative"):
            got_field, want_field = got[field], info[field]
            if field.startswith("logits"):  # ids are renumbered on import; text and values travel
                got_field = [(e["text"], e["value"]) for e in got_field]
                want_field = [(e["text"], e["value"]) for e in want_field]
            assert got_field == want_field, field
        assert got["n_fired"] == info["n_fired"]
        assert [(n["other"], n["value"]) for n in got["decoder_cosine"]] == [
            (n["other"], n["value"]) for n in info["decoder_cosine"]]
        for kind, rows in examples.items():
            again = copy.examples(k, kind)
            keys = ("token_index", "context", "position", "center", "act", "acts", "text", "interval")
            assert [{f: e[f] for f in keys} for e in again] == [{f: e[f] for f in keys} for e in rows]
    assert [e["text"] for e in copy.latent(3)["explanations"]] == ["the word w7"]
    assert copy.search("w7")[0]["latent"] == 3


def test_cli_export_import_show_search(db_path, tmp_path, capsys) -> None:
    out = tmp_path / "np.json"
    assert main(["features", "export", str(db_path), "--out", str(out)]) == 0
    assert main(["features", "import", str(out), "--out", str(tmp_path / "back.db")]) == 0
    assert main(["features", "show", str(tmp_path / "back.db"), "3"]) == 0
    assert "the word w7" in capsys.readouterr().out
    assert main(["features", "search", str(db_path), "w7"]) == 0
    assert capsys.readouterr().out.split()[0] == "3"
    out.write_text("not mine")
    assert main(["features", "export", str(db_path), "--out", str(out)]) == 2
    assert out.read_text() == "not mine"
    assert main(["features", "show", str(db_path), "99"]) == 2
