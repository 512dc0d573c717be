"""`mechscope heads`, `lens` and `lens train` on a small saved attention-only model: files and JSON keys."""

from __future__ import annotations

import json

import torch

import mechscope.toys.attn_only  # noqa: F401  (registers the model type with transformers)
from mechscope.apps.cli import main
from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
from mechscope.toys.induction import toy_tokenizer


def _toy(folder):
    torch.manual_seed(0)
    AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=17, hidden_size=32, num_attention_heads=4)).save_pretrained(folder)
    toy_tokenizer(16).save_pretrained(folder)
    return str(folder)


def test_heads_and_lens_commands(tmp_path, capsys):
    model = _toy(tmp_path / "toy")
    assert main(["heads", "--model", model, "--seq-len", "6", "--json", str(tmp_path / "h.json"),
                 "--png", str(tmp_path / "h.png")]) == 0
    heads = json.loads((tmp_path / "h.json").read_text())
    assert len(heads["heads"]) == 2 * 4 and "provenance" in heads
    assert set(heads["heads"][0]) == {"layer", "head", "prev_token", "duplicate_token", "induction", "bos",
                                      "entropy", "label"}
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["lens", "t1 t2 t3 t1", "--model", model, "--target", "t2", "--json", str(tmp_path / "l.json"),
                 "--png", str(tmp_path / "l.png")]) == 0
    lens = json.loads((tmp_path / "l.json").read_text())
    assert lens["tokens"] == ["<bos>", "t1", "t2", "t3", "t1"]
    assert len(lens["layers"]) == 3 and len(lens["top"]) == 3
    assert set(lens["targets"]["t2"]) >= {"rank", "prob"}
    assert "top token per layer" in capsys.readouterr().out


def test_lens_train_then_tuned_view(tmp_path):
    model = _toy(tmp_path / "toy")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for doc in range(40):  # many documents, so the held-out split (chosen by hash) is not empty
        (corpus / f"{doc:02d}.txt").write_text(" ".join(f"t{1 + (i * doc + 3) % 16}" for i in range(40)))
    out = tmp_path / "lens"
    assert main(["lens", "train", "--model", model, "--out", str(out), "--corpus", str(corpus), "--steps", "4",
                 "--batch-size", "2", "--context-length", "16", "--eval-contexts", "2", "--no-progress",
                 "--json", str(tmp_path / "train.json")]) == 0
    record = json.loads((tmp_path / "train.json").read_text())
    assert len(record["losses"]) == 4 and len(record["eval"]) == 3
    assert (out / "lens.safetensors").exists() and (out / "train_state.json").exists()
    assert main(["lens", "t1 t8 t15", "--model", model, "--tuned", str(out), "--json", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["lens"] == "tuned"


def test_report_sections(tmp_path):
    import mechscope
    from mechscope.apps.report.reading_sections import READING_SECTIONS, heads_section, lens_section

    model = mechscope.load_model(_toy(tmp_path / "toy"))
    lens = lens_section(model, {"prompt": "t1 t2 t3", "answer": "t4"})
    assert lens.key == "logit_lens" and "data:image/png;base64," in lens.html
    assert len(lens.data["layers"]) == 3 and "t4" in lens.data["targets"]
    heads = heads_section(model, {"heads_seq_len": 6, "heads_batch": 2})
    assert len(heads.data["heads"]) == 8 and "<table>" in heads.html
    assert READING_SECTIONS == [lens_section, heads_section]
