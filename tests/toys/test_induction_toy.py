"""Induction toy: the attention-only model saves/loads like any model and learns in-context copying."""

from __future__ import annotations

import pytest
import torch

import mechscope
import mechscope.toys.attn_only  # noqa: F401  (registers the model type with transformers)
from mechscope.methods.heads import (
    THRESHOLDS,
    detect_heads,
    head_ablation_hooks,
    icl_score,
    repeated_random_tokens,
)
from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
from mechscope.toys.induction import (
    InductionToyConfig,
    copy_segments,
    toy_tokenizer,
    train_induction_toy,
    training_batch,
)


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


def test_training_batches_copy_spans_at_varying_offsets():
    cfg = InductionToyConfig(batch_size=6)
    generator = torch.Generator().manual_seed(0)
    ids = training_batch(cfg, generator)
    assert ids.shape == (6, cfg.seq_len) and (ids[:, 0] == 0).all() and (ids[:, 1:] > 0).all()
    starts, offsets = set(), set()
    for _ in range(20):
        for start, source, length in copy_segments(cfg, generator):
            assert 1 <= source < start and start + length <= cfg.seq_len and length >= 2
            assert cfg.span_min <= start - source <= cfg.span_max + cfg.gap_max
            starts.add(start)
            offsets.add(start - source)
    assert len(starts) > 10 and len(offsets) > 10  # neither position nor offset gives the copy away
    row_generator = torch.Generator().manual_seed(3)
    ids = training_batch(InductionToyConfig(batch_size=1), row_generator)
    replay = torch.Generator().manual_seed(3)
    torch.randint(1, cfg.n_tokens + 1, (1, cfg.seq_len), generator=replay)  # the same draws as training_batch
    segments = copy_segments(cfg, replay)
    assert segments and all(torch.equal(ids[0, a:a + n], ids[0, b:b + n]) for a, b, n in segments)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    result = train_induction_toy(InductionToyConfig(steps=1200, eval_every=50), out_dir=folder)
    return result, folder


@pytest.mark.slow
def test_phase_change_and_copying(trained):
    result, folder = trained
    assert result.phase_change_step is not None
    steps = [h["step"] for h in result.history]
    losses = [h["second_copy_loss"] for h in result.history]
    assert losses[0] > 0.9 * result.chance_loss  # starts at chance
    # the drop is abrupt: from above 3/4 of chance to below 1/4 of chance within 300 steps
    high = max(s for s, v in zip(steps, losses, strict=True) if s < result.phase_change_step and v > 0.75 * result.chance_loss)
    low = min(s for s, v in zip(steps, losses, strict=True) if v < 0.25 * result.chance_loss)
    assert low - high <= 300
    model = mechscope.load_model(folder)
    ids = repeated_random_tokens(model, 20, 64, seed=11)
    score = icl_score(model, ids)
    assert score.chance == pytest.approx(result.chance_loss)
    assert score.loss_second_half < 0.15 * score.chance < score.loss_first_half


@pytest.mark.slow
def test_detectors_find_previous_token_then_induction_head(trained):
    result, folder = trained
    model = mechscope.load_model(folder)
    ids = repeated_random_tokens(model, 20, 64, seed=12)
    table = detect_heads(model, ids=ids)
    assert len(table) == 2 * 2
    layer0 = [r for r in table if r.layer == 0]
    layer1 = [r for r in table if r.layer == 1]
    prev = max(layer0, key=lambda r: r.prev_token)
    assert prev.label == "prev_token" and prev.prev_token >= THRESHOLDS["prev_token"]
    assert prev.prev_token > 0.7 and max(r.prev_token for r in layer1) < 0.2  # a clear margin
    assert not any(r.label == "induction" for r in layer0)
    induction = [r for r in layer1 if r.label == "induction"]
    assert induction and max(r.induction for r in induction) > 0.7
    assert max(r.induction for r in layer0) < 0.2


@pytest.mark.slow
def test_ablating_the_circuit_returns_loss_to_chance(trained):
    """Zero-ablating the layer-1 induction heads (or the layer-0 previous-token head) undoes copying."""
    result, folder = trained
    model = mechscope.load_model(folder)
    ids = repeated_random_tokens(model, 20, 64, seed=13)
    table = detect_heads(model, ids=ids)
    chance = result.chance_loss
    clean = icl_score(model, ids).loss_second_half
    induction = [(r.layer, r.head) for r in table if r.layer == 1 and r.label == "induction"]
    prev = max((r for r in table if r.layer == 0), key=lambda r: r.prev_token)
    for heads in (induction, [(prev.layer, prev.head)]):
        ablated = icl_score(model, ids, fwd_hooks=head_ablation_hooks(heads)).loss_second_half
        assert clean < 0.15 * chance and abs(ablated - chance) < 0.15 * chance, (heads, ablated)
    other = [(r.layer, r.head) for r in table if r.layer == 0 and r.head != prev.head]
    assert icl_score(model, ids, fwd_hooks=head_ablation_hooks(other)).loss_second_half < 0.5 * chance
