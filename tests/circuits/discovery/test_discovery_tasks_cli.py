"""Prompt-pair files, the built-in tasks and `mechscope circuit`."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.circuits.discovery.tasks import make_pairs, read_jsonl, task_pairs
from mechscope.core.errors import MechscopeError
from tiny_lm import tiny_lm


def _write(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_jsonl_pairs_and_their_errors(tmp_path):
    model = tiny_lm()
    good = _write(tmp_path / "p.jsonl", [
        {"clean": "a b c d", "corrupt": "a x c d", "answer": "e", "wrong": "f"},
        {"clean": "a b c", "corrupt": "y b c", "answer": "e", "wrong": "g"},
    ])
    pairs = task_pairs(model, str(good))
    assert len(pairs) == 2 and pairs.kind == "logit_diff"
    assert pairs.pos.tolist() == [4, 3]  # BOS plus the words, right-padded
    assert pairs.attention_mask is not None and int(pairs.attention_mask[1].sum()) == 4
    logits = torch.zeros(2, 5, 96)
    logits[0, 4, pairs.good[0, 0]] = 2.0
    assert pairs.metric(logits).tolist() == [2.0, 0.0]
    uneven = _write(tmp_path / "u.jsonl", [{"clean": "a b c", "corrupt": "a b", "answer": "e", "wrong": "f"}])
    with pytest.raises(MechscopeError, match="same number of tokens"):
        task_pairs(model, str(uneven))
    with pytest.raises(MechscopeError, match="missing wrong"):
        make_pairs(model, [{"clean": "a", "corrupt": "b", "answer": "c"}])
    (tmp_path / "bad.jsonl").write_text('{"clean": "a"\n')
    with pytest.raises(MechscopeError, match="JSONL|JSON|line"):
        read_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(MechscopeError, match="ioi"):
        task_pairs(model, "iio")
    sets = make_pairs(model, [{"clean": "a b", "corrupt": "a c", "answers": ["d", "e"], "wrongs": ["f"]}])
    probs = torch.zeros(1, 3, 96)
    assert sets.kind == "prob_diff" and float(sets.metric(probs)) == pytest.approx(1 / 96)


@pytest.mark.slow
def test_builtin_tasks_on_the_default_model(default_model):
    ioi = task_pairs(default_model, "ioi", n=12, seed=1)
    again = task_pairs(default_model, "ioi", n=12, seed=1)
    assert torch.equal(ioi.clean, again.clean) and len(ioi) == 12
    assert len({r["clean"].split(",")[0] for r in ioi.texts}) > 3  # several templates and names
    assert all(r["answer"] != r["wrong"] for r in ioi.texts)
    gt = task_pairs(default_model, "greater-than", n=6, seed=0)
    assert gt.kind == "prob_diff" and all(r["clean"].endswith(r["clean"][-2:]) for r in gt.texts)


@pytest.mark.slow
def test_circuit_command_writes_json_png_and_scores(tmp_path, capsys):
    from mechscope.apps.cli import main
    from mechscope.circuits.discovery.scores import EdgeScores

    args = ["circuit", "--task", "ioi", "--method", "eap", "--n-pairs", "2", "--batch-size", "2", "--top-n", "60",
            "--curve-points", "3",
            "--json", str(tmp_path / "c.json"), "--png", str(tmp_path / "c.png"), "--scores", str(tmp_path / "s"),
            "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "faithfulness" in out
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["graph"]["n_edges"] == 123_211 and data["n_pairs"] == 2
    assert 0 < data["circuit"]["n_edges"] <= 60 and data["circuit"]["nodes"][-1] == "logits"
    curve = data["faithfulness_curve"]
    assert [c["n_edges"] for c in curve] == [0, 1, 123_211]
    assert curve[0]["faithfulness"] == pytest.approx(0.0, abs=1e-3) and curve[-1]["faithfulness"] == pytest.approx(1.0, abs=1e-3)
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    scores = EdgeScores.load(tmp_path / "s")
    assert scores.method == "eap" and scores.scores.shape == (841, 301)
    assert main([*args[:2], "iio", *args[3:]]) == 2
    assert "Traceback" not in capsys.readouterr().err
