"""`mechscope steer` end to end on a tiny random model: sweeps, files, and one-line errors."""

from __future__ import annotations

import json

import pytest

from mechscope.apps import cli
from mechscope.apps.commands import steer as steer_cmd
from mechscope.dictionaries import make_dictionary, save_dictionary
from tiny_lm import tiny_lm


@pytest.fixture(autouse=True)
def _tiny_model(monkeypatch):
    model = tiny_lm("llama")
    monkeypatch.setattr(steer_cmd, "load", lambda args: model)


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    sae = make_dictionary("topk", d_in=64, d_sae=48, k=6, hook_name="blocks.1.hook_resid_post", seed=0)
    return str(save_dictionary(sae, tmp_path_factory.mktemp("sae") / "sae"))


def test_clamp_sweep_writes_json_and_png(sae_dir, tmp_path, capsys) -> None:
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    code = cli.main(["steer", "a b c", "d e", "--sae", sae_dir, "--feature", "1:7", "--clamp", "0..8:3",
                     "--keywords", "zz", "--max-new-tokens", "4", "--json", str(out), "--png", str(png)])
    assert code == 0
    data = json.loads(out.read_text())
    assert [p["coef"] for p in data["points"]] == [None, 0.0, 4.0, 8.0]  # the unsteered baseline first
    assert data["interventions"][0] == {"kind": "clamp", "hook_name": "blocks.1.hook_resid_post", "latents": [7],
                                        "value": 8.0, "coef": "swept", "where": "all"}
    assert all(p["latent_incidence"] is not None and p["keyword_incidence"] == 0.0 for p in data["points"])
    assert data["provenance"]["model"] == "tiny-llama" and png.read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.count("clamp ") == 3


def test_caa_vector_with_site_units_and_saved_direction(tmp_path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"positive": "a b c", "negative": "x y z"}\n{"positive": "d e", "negative": "u v"}\n')
    stem = tmp_path / "dir"
    out = tmp_path / "caa.json"
    assert cli.main(["steer", "a b", "--vector", f"caa:{pairs}", "--layer", "1", "--coef", "0,2", "--units", "site",
                     "--where", "generated", "--max-new-tokens", "3", "--save-direction", str(stem),
                     "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["direction"]["source"]["kind"] == "mean_difference" and data["direction"]["site_norm"] > 0
    # generated-only steering leaves neutral text alone
    assert [p["kl_neutral"] for p in data["points"]] == [0.0, 0.0, 0.0]
    assert cli.main(["steer", "a b", "--vector", str(stem), "--ablate", "--max-new-tokens", "2"]) == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--feature", "999", "--clamp", "1"], "Latent 999 is out of range: this dictionary has latents 0..47."),
    (["--feature", "2:3", "--clamp", "1"], "the dictionary reads layer 1"),
    (["--vector", "caa:{pairs}", "--layer", "7", "--coef", "1"], "Unknown hook name 'blocks.7.hook_resid_post'"),
    (["--feature", "3", "--coef", "1", "--clamp", "2"], "Give one intervention"),
    (["--feature", "3", "--coef", "x..y"], "Cannot read coefficients"),
])
def test_bad_input_is_one_line(sae_dir, tmp_path, capsys, argv, message) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"positive": "a b c", "negative": "x y z"}\n')
    argv = [a.replace("{pairs}", str(pairs)) for a in argv]
    assert cli.main(["steer", "a b", "--sae", sae_dir, "--max-new-tokens", "2", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_find_uses_the_feature_database(sae_dir, tmp_path, capsys) -> None:
    from mechscope.features.database import FeatureDatabase

    db = FeatureDatabase.create(tmp_path / "features.db")
    db.set_meta({"d_sae": 48, "complete": True})
    db.add_explanation(11, "files and folders on disk", "human")
    db.close()
    out = tmp_path / "find.json"
    assert cli.main(["steer", "a b", "--sae", sae_dir, "--feature-db", str(tmp_path / "features.db"), "--find",
                     "folders", "--clamp", "3", "--max-new-tokens", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["direction"]["source"]["latent"] == 11
    assert "latent 11 matches 'folders'" in capsys.readouterr().out
    assert cli.main(["steer", "a b", "--sae", sae_dir, "--feature-db", str(tmp_path / "features.db"), "--find",
                     "bridges", "--clamp", "3"]) == 2
    assert "No latent in" in capsys.readouterr().err
