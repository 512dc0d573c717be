"""Probes on a real property of the default model, with Hewitt-Liang control tasks.

Property: whether a noun names an animal or a tool, read at the noun's last token in four
sentence templates. The control task gives each noun (word type) a random label; with L2
regularisation 10 the probe cannot memorise 58 arbitrary type labels as well as it learns
the one semantic direction, so selectivity is clearly positive.
"""

from __future__ import annotations

import json

import pytest

from mechscope.apps.cli import main
from mechscope.methods.probe_collect import collect_activations, site_hook_names
from mechscope.methods.probe_data import load_probe_dataset
from mechscope.methods.probes import fit_probes_by_layer

ANIMALS = ("dog cat horse cow sheep goat pig rabbit mouse lion tiger bear wolf fox deer monkey elephant zebra "
           "camel frog snake eagle owl duck goose parrot whale dolphin shark salmon").split()
TOOLS = ("hammer wrench saw drill chisel shovel rake axe knife spoon fork ladle kettle bucket broom brush needle "
         "scissors pliers screwdriver stapler ruler pencil eraser clamp trowel hoe sickle funnel").split()
TEMPLATES = ("I saw a {} in the garden", "There was a {} next to the house", "She bought a {} last week",
             "The old {} was still there")


def write_dataset(path) -> None:
    import random

    rows = [{"text": t.format(w), "label": label, "token": " " + w}
            for words, label in ((ANIMALS, "animal"), (TOOLS, "tool")) for w in words for t in TEMPLATES]
    random.Random(0).shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_animal_vs_tool_probe_is_selective(default_model, tmp_path) -> None:
    data = tmp_path / "animals_tools.jsonl"
    write_dataset(data)
    dataset = load_probe_dataset(data)
    acts = collect_activations(default_model, dataset.texts, dataset.read_positions(default_model.tokenizer),
                               site_hook_names(default_model, "resid_post", layers=[2, 8, 15]))
    report = fit_probes_by_layer(acts, dataset.labels, dataset.word_types(default_model.tokenizer),
                                 regularisation=10.0)
    for layer, row in report.layers.items():
        assert row.score >= 0.9, f"layer {layer}: accuracy {row.score:.3f}"
        assert row.selectivity >= 0.1, f"layer {layer}: accuracy {row.score:.3f} control {row.control_score:.3f}"


@pytest.mark.slow
def test_probe_command_writes_json_and_png(tmp_path, capsys) -> None:
    data = tmp_path / "animals_tools.jsonl"
    write_dataset(data)
    assert main(["probe", str(data), "--site", "resid_post", "--regularisation", "10",
                 "--json", str(tmp_path / "p.json"), "--png", str(tmp_path / "p.png")]) == 0
    result = json.loads((tmp_path / "p.json").read_text())
    assert len(result["layers"]) == 30
    row = result["layers"]["15"]
    assert {"accuracy", "control_accuracy", "selectivity"} <= set(row)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
