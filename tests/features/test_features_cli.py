"""`mechscope features collect | show | prompt` on the real default model (slow), and `top_latents` on a tiny one."""

from __future__ import annotations

import pytest
import torch

from mechscope.apps.cli import main
from mechscope.dictionaries import make_dictionary, save_dictionary
from mechscope.features import FeatureDatabase, encode_contexts
from mechscope.features.inspect import top_latents
from tiny_lm import tiny_lm


def test_top_latents_match_the_encoded_prompt() -> None:
    model = tiny_lm("llama")
    sae = make_dictionary("topk", d_in=64, d_sae=32, k=4, seed=0, hook_name="blocks.0.hook_resid_post")
    rows = top_latents(model, sae, "w1 w2 w3 w4", position=2, n=3)
    acts, _ = encode_contexts(model, sae, model.to_tokens("w1 w2 w3 w4"))
    want = torch.topk(acts[0, 2], 3)
    assert [r["latent"] for r in rows] == want.indices.tolist()
    assert [r["act"] for r in rows] == want.values.tolist()
    with pytest.raises(IndexError):
        top_latents(model, sae, "w1", position=7)


@pytest.mark.slow
def test_collect_show_prompt_on_the_default_model(default_model, tmp_path, capsys) -> None:
    sae = make_dictionary("topk", d_in=576, d_sae=256, k=8, seed=0, hook_name="blocks.3.hook_resid_post",
                          model_name=default_model.cfg.name)
    save_dictionary(sae, tmp_path / "sae")
    db = tmp_path / "f.db"
    args = ["features", "collect", str(tmp_path / "sae"), "--out", str(db), "--corpus", "pydoc", "--tokens", "1500",
            "--context-length", "64", "--batch-size", "8"]
    assert main(args) == 0
    assert "256 latents" in capsys.readouterr().out
    assert main(args) == 2  # finished: not collected twice
    assert "finished collection" in capsys.readouterr().err
    with FeatureDatabase.open(db) as fdb:
        meta = fdb.meta()
        latent = fdb.live_latents()[0]
        top = fdb.examples(latent, "top")
    assert meta["n_tokens"] == 24 * 63 and meta["logit_effects_fold_norm"] is False
    assert meta["model_weights_sha256"] and meta["dictionary_sha256"] and meta["corpus_fingerprint"]
    assert "".join(top[0]["text"])  # real token text from the tokenizer
    assert main(["features", "show", str(db), str(latent)]) == 0
    out = capsys.readouterr().out
    assert f"latent {latent}: density" in out and "promotes:" in out
    assert main(["features", "prompt", str(db), "The Eiffel Tower is in the city of", "--top", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
