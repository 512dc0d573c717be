"""`mechscope patch` and the report's patching section, on a tiny model with a character tokenizer."""

from __future__ import annotations

import json

import pytest
from _patching_helpers import char_model

from mechscope.apps import cli
from mechscope.apps.commands import patch as patch_command
from mechscope.apps.report.patching import patching_section

ARGS = ["patch", "--clean", "abcdefg", "--corrupt", "abXYefg", "--answer", "a", "--wrong", "b"]


@pytest.fixture
def tiny_cli(monkeypatch):
    model = char_model("llama")
    monkeypatch.setattr(patch_command, "load", lambda args: model)
    return model


def test_patch_command_writes_json_png_html(tiny_cli, tmp_path, capsys):
    out = tmp_path / "p"
    code = cli.main([*ARGS, "--site", "resid_pre", "--by", "layer,pos", "--json", str(out) + ".json",
                     "--png", str(out) + ".png", "--html", str(out) + ".html"])
    assert code == 0
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["site"] == "resid_pre" and data["method"] == "activation" and data["by"] == ["layer", "pos"]
    assert data["labels"] == [[0, 1, 2], list("abcdefg")]
    assert len(data["scores"]) == 3 and all(len(row) == 7 for row in data["scores"])
    assert data["clean"] != data["corrupt"] and "weights_sha256" in data["provenance"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (tmp_path / "p.html").read_text()
    assert "activation patching (denoise) of resid_pre" in capsys.readouterr().out


@pytest.mark.parametrize("extra,site,method,by", [
    (["--site", "z"], "z", "activation", ["layer", "head"]),
    (["--site", "mlp_out", "--method", "attribution", "--mode", "noise"], "mlp_out", "attribution", ["layer", "pos"]),
    (["--site", "attn_out", "--by", "layer", "--method", "ig", "--steps", "4"], "attn_out", "ig", ["layer"]),
    (["--site", "every", "--by", "layer"], "every_block", "activation", ["site", "layer"]),
])
def test_patch_command_sites_and_methods(tiny_cli, tmp_path, extra, site, method, by):
    assert cli.main([*ARGS, *extra, "--json", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert (data["site"], data["method"], data["by"]) == (site, method, by)


def test_patch_command_errors_name_the_tokens(tiny_cli, capsys):
    assert cli.main(["patch", "--clean", "abcdefg", "--corrupt", "abc", "--answer", "a", "--wrong", "b"]) == 2
    err = capsys.readouterr().err
    assert "same number of tokens" in err and "['a', 'b', 'c']" in err
    assert cli.main([*ARGS[:-1], "bc"]) == 2
    assert "'b', 'c'" in capsys.readouterr().err
    assert cli.main(ARGS[:-2]) == 2
    assert "wrong" in capsys.readouterr().err


def test_report_section(tiny_cli):
    section = patching_section(tiny_cli, "abcdefg", "abXYefg", "a", "b")
    assert set(section) == {"title", "html", "json"}
    assert "data:image/png;base64," in section["html"] and section["json"]["by"] == ["layer", "pos"]
    logprob = patching_section(tiny_cli, "abcdefg", "abXYefg", "a")
    assert logprob["json"]["metric"]["name"] == "logprob"
