"""Tuned lens: starts as the logit lens, saves/loads exactly, resumes, and beats the logit lens after training."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.core.errors import MechscopeError
from mechscope.methods.lens import logit_lens
from mechscope.methods.tuned_lens import TunedLens, evaluate_lenses
from mechscope.methods.tuned_lens_train import TrainSettings, train_tuned_lens
from tiny_models import tiny_ids, tiny_model


def test_fresh_tuned_lens_equals_logit_lens(tiny):
    ids = tiny_ids(1, 8)
    lens = TunedLens.for_model(tiny)
    plain = logit_lens(tiny, ids, k=5)
    tuned = logit_lens(tiny, ids, k=5, translator=lens.translate, lens="tuned")
    torch.testing.assert_close(tuned.top_probs, plain.top_probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(tuned.kl_to_final, plain.kl_to_final, atol=1e-6, rtol=0)


def test_save_load_roundtrip_and_bad_files(tmp_path):
    model = tiny_model("llama")
    lens = TunedLens.for_model(model)
    with torch.no_grad():
        for p in lens.parameters():
            p.normal_(std=0.1)
    lens.save(tmp_path / "lens")
    loaded = TunedLens.load(tmp_path / "lens", model)
    resid = torch.randn(2, 3, model.cfg.d_model)
    site = lens.sites[1]
    torch.testing.assert_close(loaded.translate(site, resid), lens.translate(site, resid), atol=0, rtol=0)
    config = json.loads((tmp_path / "lens" / "config.json").read_text())
    assert config["sites"] == lens.sites and config["schema_version"] == 1
    (tmp_path / "lens" / "lens.safetensors").write_bytes(b"\x00\x01 truncated")
    with pytest.raises(MechscopeError):
        TunedLens.load(tmp_path / "lens", model)
    with pytest.raises(MechscopeError):
        TunedLens.load(tmp_path / "missing", model)
    TunedLens.for_model(model).save(tmp_path / "ok")
    with pytest.raises(MechscopeError, match="d_model"):
        TunedLens.load(tmp_path / "ok", _wider())


def _wider():
    from transformers import AutoModelForCausalLM, LlamaConfig

    from mechscope import HookedModel

    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    return HookedModel(AutoModelForCausalLM.from_config(config))


def test_training_lowers_kl_and_resume_is_exact(tmp_path):
    model = tiny_model("gpt2")
    ids = tiny_ids(16, 12, seed=3)
    settings = TrainSettings(steps=6, batch_size=4, lr=1e-2, checkpoint_every=3)
    full = train_tuned_lens(model, settings, ids=ids)
    # stop after 3 steps, then resume from the checkpoint to 6
    train_tuned_lens(model, TrainSettings(steps=3, batch_size=4, lr=1e-2, checkpoint_every=3), ids=ids,
                     checkpoint_dir=tmp_path / "ckpt")
    resumed = train_tuned_lens(model, settings, ids=ids, checkpoint_dir=tmp_path / "ckpt")
    assert resumed.resumed_from == 3 and len(resumed.losses) == 6
    for a, b in zip(full.lens.parameters(), resumed.lens.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was
    rows = evaluate_lenses(model, full.lens, ids[:4])
    assert rows[-1].kl_logit == pytest.approx(0.0, abs=1e-6) and rows[-1].kl_tuned == pytest.approx(0.0, abs=1e-6)
    assert sum(r.kl_tuned for r in rows[:-1]) < sum(r.kl_logit for r in rows[:-1])
    with pytest.raises(MechscopeError, match="batch_size"):
        train_tuned_lens(model, TrainSettings(steps=8, batch_size=2), ids=ids, checkpoint_dir=tmp_path / "ckpt")


@pytest.mark.slow
def test_default_model_tuned_lens_beats_logit_lens(default_model):
    from mechscope.core.corpus import token_contexts

    settings = TrainSettings(steps=40, batch_size=2, context_length=32, lr=1e-3, layers_per_step=10)
    run = train_tuned_lens(default_model, settings)
    held = token_contexts(default_model.tokenizer, "default", 32, max_contexts=6, split="held_out")
    rows = evaluate_lenses(default_model, run.lens, held)
    for row in rows[:-1]:
        assert row.kl_tuned < row.kl_logit, row
    assert rows[-1].kl_tuned == pytest.approx(0.0, abs=1e-4)
