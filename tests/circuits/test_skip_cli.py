"""`mechscope transcoders train --skip` end to end on a tiny model: a loadable skip set whose evaluation and
graph include the skip terms; `--skip` refused for cross-layer transcoders."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.apps import cli
from mechscope.apps.commands import graph as graph_cmd
from mechscope.apps.commands import transcoders as tc_cmd
from mechscope.circuits.graph import AttributionGraph
from mechscope.circuits.replacement import ReplacementModel
from mechscope.dictionaries.transcoder_set import load_transcoder_set
from tiny_lm import HashTokenizer, tiny_lm, write_corpus


class DecodingHashTokenizer(HashTokenizer):
    """The hash tokenizer with a `decode` (token strings for the graph's labels)."""

    def decode(self, ids, **_):
        return " ".join(f"t{i}" for i in ids)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = tiny_lm("llama")
    model.tokenizer = DecodingHashTokenizer()
    corpus = str(write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=60))
    folder = tmp_path_factory.mktemp("tc") / "skip"
    argv = ["transcoders", "train", "--out", str(folder), "--skip", "--d-sae", "48", "--tokens", "768",
            "--eval-tokens", "256", "--epochs", "2", "--batch-size", "128", "--context-length", "16", "--corpus", corpus]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tc_cmd, "load", lambda args: model)
        assert cli.main(argv) == 0
        assert cli.main([*argv[:3], str(folder.parent / "clt"), "--kind", "cross_layer", *argv[4:]]) != 0
    return model, folder


def test_skip_set_is_saved_trained_and_evaluated(trained):
    model, folder = trained
    tcs = load_transcoder_set(folder)
    assert tcs.has_skip and all(t.cfg.skip for t in tcs.transcoders)
    assert all(float(t.W_skip.detach().abs().max()) > 0 for t in tcs.transcoders)  # trained away from its zero start
    report = json.loads((folder / "eval.json").read_text())
    assert report["skip"] is True and len(report["layers"]) == model.cfg.n_layers
    assert all(0 <= row["normalised_mse"] < 1.5 for row in report["layers"])


def test_graph_of_a_skip_set(trained, tmp_path, capsys, monkeypatch):
    model, folder = trained
    monkeypatch.setattr(graph_cmd, "load", lambda args: model)
    out = tmp_path / "g"
    assert cli.main(["graph", "w1 w2 w3 w4 w5", "--transcoders", str(folder), "--out", str(out),
                     "--max-feature-nodes", "32"]) == 0
    assert "completeness score" in capsys.readouterr().out
    graph = AttributionGraph.load(out)
    assert graph.info["skip"] is True
    tcs = load_transcoder_set(folder)
    rm = ReplacementModel(model, tcs)
    state = rm.prepare(graph.input_tokens[None])
    torch.testing.assert_close(rm.local_logits(state), state.logits, atol=1e-4, rtol=1e-4)
