"""Induction toy: the attention-only model saves/loads like any model and learns in-context copying."""

from __future__ import annotations

import pytest
import torch

import mechscope
import mechscope.toys.attn_only  # noqa: F401  (registers the model type with transformers)
from mechscope.methods.heads import detect_heads, head_ablation_hooks, icl_score, repeated_random_tokens
from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
from mechscope.toys.induction import InductionToyConfig, toy_tokenizer, train_induction_toy, training_batch


def test_attention_only_model_roundtrip(tmp_path):
    torch.manual_seed(0)
    hf = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=17, hidden_size=32, num_attention_heads=4)).eval()
    hf.save_pretrained(tmp_path)
    toy_tokenizer(16).save_pretrained(tmp_path)
    model = mechscope.load_model(tmp_path)
    ids = torch.tensor([[0, 3, 4, 5, 3, 4]])
    torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-6, rtol=0)
    _, cache = model.run_with_cache(ids)
    assert cache["blocks.1.hook_mlp_out"].abs().max() == 0  # attention only: the MLP has zero width
    torch.testing.assert_close(cache["blocks.1.hook_resid_mid"], cache["blocks.1.hook_resid_post"])
    assert cache["blocks.0.attn.hook_pattern"].shape == (1, 4, 6, 6)
    assert model.to_str_tokens(ids)[:3] == ["<bos>", "t3", "t4"]


def test_training_batches_repeat_their_first_half():
    cfg = InductionToyConfig(batch_size=5)
    ids = training_batch(cfg, torch.Generator().manual_seed(0))
    span = (ids.shape[1] - 1) // 2
    assert cfg.span_min <= span <= cfg.span_max
    assert torch.equal(ids[:, 1:span + 1], ids[:, span + 1:]) and (ids[:, 0] == 0).all()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    result = train_induction_toy(InductionToyConfig(steps=1200, eval_every=50), out_dir=folder)
    return result, folder


@pytest.mark.slow
def test_phase_change_and_copying(trained):
    result, folder = trained
    assert result.phase_change_step is not None
    before = [h["second_copy_loss"] for h in result.history if h["step"] < result.phase_change_step - 200]
    assert before and min(before) > 0.75 * result.chance_loss  # a plateau near chance, then the drop
    model = mechscope.load_model(folder)
    ids = repeated_random_tokens(model, 20, 64, seed=11)
    score = icl_score(model, ids)
    assert score.chance == pytest.approx(result.chance_loss)
    assert score.loss_second_half < 0.25 * score.chance < score.loss_first_half


@pytest.mark.slow
def test_ablating_the_copying_head_returns_loss_to_chance(trained):
    result, folder = trained
    model = mechscope.load_model(folder)
    ids = repeated_random_tokens(model, 20, 64, seed=12)
    table = detect_heads(model, ids=ids)
    assert len(table) == 2 * 4
    clean = icl_score(model, ids).loss_second_half
    ablated = {(r.layer, r.head): icl_score(model, ids, fwd_hooks=head_ablation_hooks([(r.layer, r.head)]))
               .loss_second_half for r in table}
    worst = max(ablated, key=ablated.get)
    assert ablated[worst] > 0.8 * result.chance_loss > clean
    assert sorted(ablated.values())[len(ablated) // 2] < 0.5 * result.chance_loss  # most heads are not needed
