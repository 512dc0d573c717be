"""`mechscope sae cache|train|eval|synthetic` end to end at tiny sizes (a tiny random model stands in)."""

from __future__ import annotations

import json

import pytest

from mechscope.apps import cli
from mechscope.apps.commands import sae as sae_cmd
from mechscope.dictionaries import load_dictionary
from mechscope.dictionaries.store_reader import open_store
from tiny_lm import tiny_lm, write_corpus


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


@pytest.fixture(autouse=True)
def _tiny_model(monkeypatch, model):
    monkeypatch.setattr(sae_cmd, "load", lambda args: model)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=60))


def _common(corpus):
    return ["--corpus", corpus, "--split", "all", "--context-length", "16"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, corpus, model):
    folder = tmp_path_factory.mktemp("acts") / "store"
    argv = ["sae", "cache", "--layer", "1", "--site", "resid_post", "--tokens", "1200", "--out", str(folder),
            "--batch-size", "4", "--shard-tokens", "300", *_common(corpus)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sae_cmd, "load", lambda args: model)
        assert cli.main(argv) == 0
    return folder


def test_site_names():
    assert sae_cmd.site_hook_name("resid_post", 15) == "blocks.15.hook_resid_post"
    assert sae_cmd.site_hook_name("z", 2) == "blocks.2.attn.hook_z"
    assert sae_cmd.site_hook_name("mlp_post", 0) == "blocks.0.mlp.hook_post"
    assert sae_cmd.site_hook_name("blocks.3.hook_mlp_out", None) == "blocks.3.hook_mlp_out"


def test_cache_writes_a_store_and_json(store, corpus, tmp_path, capsys):
    reader = open_store(store)
    assert reader.n_tokens == 1200 and reader.hook_name == "blocks.1.hook_resid_post"
    out = tmp_path / "cache.json"
    argv = ["sae", "cache", "--layer", "1", "--tokens", "1200", "--out", str(store), "--batch-size", "4",
            "--shard-tokens", "300", "--json", str(out), *_common(corpus)]
    assert cli.main(argv) == 0  # already complete: nothing is recomputed
    data = json.loads(out.read_text())
    assert data["n_tokens"] == 1200 and data["complete"] and "provenance" in data
    assert "1,200 tokens" in capsys.readouterr().out


def test_train_on_store_then_eval(store, corpus, tmp_path):
    sae_dir = tmp_path / "sae"
    argv = ["sae", "train", "--acts", str(store), "--arch", "topk", "--k", "4", "--expansion", "2",
            "--batch-size", "100", "--epochs", "2", "--lr", "1e-3", "--out", str(sae_dir)]
    assert cli.main(argv) == 0
    sae = load_dictionary(sae_dir)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 4 and sae.cfg.d_sae == 128
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post" and sae.cfg.model_name == "tiny-llama"
    training = json.loads((sae_dir / "training.json").read_text())
    assert training["steps"] == 24 and training["provenance"]["model"] == "tiny-llama"
    assert len((sae_dir / "train_log.jsonl").read_text().splitlines()) >= 2

    json_path, png_path = tmp_path / "eval.json", tmp_path / "density.png"
    argv = ["sae", "eval", str(sae_dir), "--tokens", "300", "--batch-size", "4", "--json", str(json_path),
            "--png", str(png_path), *_common(corpus)]
    assert cli.main(argv) == 0
    data = json.loads(json_path.read_text())
    for key in ("mse", "explained_variance", "l0", "dead_fraction", "dense_fraction", "ce_loss_recovered", "kl"):
        assert isinstance(data[key], float), key
    assert data["l0"] == pytest.approx(4.0) and data["n_tokens"] == 300 and "provenance" in data
    assert png_path.read_bytes()[:4] == b"\x89PNG"


def test_train_streaming_from_the_model(corpus, tmp_path):
    sae_dir = tmp_path / "sae"
    argv = ["sae", "train", "--layer", "0", "--site", "mlp_out", "--tokens", "400", "--arch", "relu",
            "--expansion", "2", "--batch-size", "100", "--out", str(sae_dir), "--set", "l1_coefficient=2",
            *_common(corpus)]
    assert cli.main(argv) == 0
    sae = load_dictionary(sae_dir)
    assert sae.cfg.hook_name == "blocks.0.hook_mlp_out" and sae.cfg.l1_coefficient == 2
    assert json.loads((sae_dir / "training.json").read_text())["steps"] == 4


def test_train_resume_continues_from_checkpoint(store, tmp_path, monkeypatch):
    from mechscope.dictionaries.trainer import Trainer

    base = ["sae", "train", "--acts", str(store), "--arch", "topk", "--k", "4", "--expansion", "2",
            "--batch-size", "100", "--steps", "6", "--checkpoint-every", "2"]
    assert cli.main([*base, "--out", str(tmp_path / "a")]) == 0
    step = Trainer.train_step

    def killed_after_3(self, x, t=None):
        if self.step == 3:
            raise KeyboardInterrupt("killed")
        return step(self, x, t)

    with monkeypatch.context() as mp:
        mp.setattr(Trainer, "train_step", killed_after_3)
        with pytest.raises(KeyboardInterrupt):
            cli.main([*base, "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b" / "cfg.json").exists()
    assert cli.main([*base, "--resume", "--out", str(tmp_path / "b")]) == 0  # from step 2
    a, b = load_dictionary(tmp_path / "a"), load_dictionary(tmp_path / "b")
    for name, tensor in a.state_dict().items():
        assert tensor.equal(b.state_dict()[name]), name


def test_synthetic_json(tmp_path):
    out = tmp_path / "syn.json"
    assert cli.main(["sae", "synthetic", "--arch", "topk", "--seed", "1", "--steps", "40", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["architecture"] == "topk" and data["seed"] == 1 and "provenance" in data
    assert 0.0 <= data["fraction_recovered"] <= 1.0 and 0.0 < data["mmcs"] <= 1.0


def test_clear_errors(capsys, tmp_path):
    assert cli.main(["sae", "train", "--arch", "topk", "--out", str(tmp_path / "x")]) == 2
    assert "--acts" in capsys.readouterr().err
    assert cli.main(["sae", "synthetic", "--arch", "nope"]) == 2
    assert "unknown architecture" in capsys.readouterr().err
    assert cli.main(["sae", "eval", str(tmp_path / "missing")]) == 2


def test_transcoder_from_a_paired_store(corpus, tmp_path, capsys):
    store = tmp_path / "pair"
    argv = ["sae", "cache", "--layer", "1", "--site", "ln2.hook_out,mlp_out", "--tokens", "600",
            "--out", str(store), "--batch-size", "4", "--shard-tokens", "300", *_common(corpus)]
    assert cli.main(argv) == 0
    assert "blocks.1.ln2.hook_out (d=64), blocks.1.hook_mlp_out (d=64)" in capsys.readouterr().out
    out = tmp_path / "tc"
    argv = ["sae", "train", "--acts", str(store), "--arch", "relu", "--target-l0", "8", "--expansion", "2",
            "--batch-size", "100", "--steps", "12", "--sparsity-warmup-steps", "2", "--b-dec-init", "mean",
            "--lr-decay-fraction", "0.1", "--resample-every", "0", "--out", str(out)]
    assert cli.main(argv) == 0
    tc = load_dictionary(out)
    assert tc.cfg.is_transcoder and tc.cfg.hook_name == "blocks.1.ln2.hook_out"
    assert tc.cfg.hook_name_out == "blocks.1.hook_mlp_out" and tc.cfg.d_out == 64
    assert tc.cfg.l1_coefficient != 1.0  # the controller's coefficient is the saved one
    training = json.loads((out / "training.json").read_text())
    assert training["target_l0"] == 8 and training["hook_name_out"] == "blocks.1.hook_mlp_out"
    argv3 = ["sae", "train", "--acts", str(store), "--site", "blocks.1.hook_mlp_out", "--arch", "topk", "--k", "4",
             "--expansion", "2", "--batch-size", "100", "--steps", "3", "--out", str(tmp_path / "sae-out")]
    assert cli.main(argv3) == 0 and not load_dictionary(tmp_path / "sae-out").cfg.is_transcoder


def test_train_out_refuses_a_foreign_folder(store, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "cfg.json").write_text("{}")
    argv = ["sae", "train", "--acts", str(store), "--arch", "topk", "--k", "4", "--expansion", "2",
            "--batch-size", "100", "--steps", "2", "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "Traceback" not in err
    assert (out / "cfg.json").read_text() == "{}" and sorted(p.name for p in out.iterdir()) == ["cfg.json"]
    assert cli.main([*argv, "--force"]) == 0


def test_diverging_training_is_one_line_without_traceback(store, tmp_path, capsys):
    argv = ["sae", "train", "--acts", str(store), "--arch", "relu", "--expansion", "2", "--batch-size", "100",
            "--steps", "6", "--lr", "1e30", "--grad-clip", "0", "--checkpoint-every", "1", "--out", str(tmp_path / "x")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "training stopped at step" in err and "the last good checkpoint" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_resume_with_another_lr_lists_the_difference(store, tmp_path, capsys):
    base = ["sae", "train", "--acts", str(store), "--arch", "topk", "--k", "4", "--expansion", "2",
            "--batch-size", "100", "--steps", "4", "--checkpoint-every", "2", "--out", str(tmp_path / "r")]
    assert cli.main([*base, "--lr", "1e-3"]) == 0
    assert cli.main([*base, "--lr", "2e-3", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "lr 0.001 -> 0.002" in err and len(err.splitlines()) == 1
    assert cli.main([*base, "--lr", "2e-3", "--resume", "--allow-changed-settings"]) == 0
