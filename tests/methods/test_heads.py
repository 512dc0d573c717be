"""Head detectors: formulas on hand-made patterns, a hand-built previous-token head, GQA models."""

from __future__ import annotations

import math

import pytest
import torch

from mechscope import HookedModel
from mechscope.core.errors import MechscopeError
from mechscope.methods.heads import (
    THRESHOLDS,
    detect_heads,
    head_ablation_hooks,
    icl_score,
    label_head,
    repeated_random_tokens,
    scores_from_patterns,
)
from mechscope.toys.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
from tiny_models import tiny_model


def _pattern(length: int, key_of_query) -> torch.Tensor:
    """One head attending from each query q >= 1 to key_of_query(q) only; position 0 to itself."""
    pos = 2 * length + 1
    a = torch.zeros(1, 1, pos, pos)
    a[0, 0, 0, 0] = 1
    for q in range(1, pos):
        a[0, 0, q, key_of_query(q)] = 1
    return a


def test_formulas_on_hand_made_patterns():
    length = 5
    induction = _pattern(length, lambda q: q - length + 1 if q > length else 0)
    scores = scores_from_patterns(induction, length)
    assert scores["induction"].item() == 1.0
    assert scores["duplicate_token"].item() == 0.0
    assert scores["prev_token"].item() == 0.0
    duplicate = _pattern(length, lambda q: q - length if q > length else 0)
    assert scores_from_patterns(duplicate, length)["duplicate_token"].item() == 1.0
    bos = _pattern(length, lambda q: 0)
    bos_scores = scores_from_patterns(bos, length)
    assert bos_scores["bos"].item() == 1.0 and bos_scores["entropy"].item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.tril(torch.ones(2 * length + 1, 2 * length + 1))
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]
    expected = sum(math.log(q + 1) for q in range(1, 2 * length + 1)) / (2 * length)
    assert scores_from_patterns(uniform, length)["entropy"].item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(MechscopeError):
        scores_from_patterns(uniform, length + 1)


def test_label_uses_thresholds():
    base = {"prev_token": 0.0, "duplicate_token": 0.0, "induction": 0.0, "bos": 0.0}
    assert label_head(base) == "other"
    assert label_head({**base, "induction": THRESHOLDS["induction"]}) == "induction"
    assert label_head({**base, "induction": 0.5, "prev_token": 0.7}) == "prev_token"
    assert label_head({**base, "bos": 0.59}) == "other"


def hand_built_prev_token_model() -> HookedModel:
    """Layer 0 head 0 attends exactly to the previous position; every other head has zero q/k (uniform)."""
    n_pos, d_model, d_head = 32, 64, 32
    config = AttnOnlyConfig(vocab_size=16, hidden_size=d_model, num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=n_pos)
    torch.manual_seed(0)
    hf = AttnOnlyForCausalLM(config)
    model = hf.model
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        for ln in [model.norm] + [layer.input_layernorm for layer in model.layers]:
            ln.weight.fill_(1.0)
        model.embed_positions.weight[:, :n_pos] = torch.eye(n_pos)  # position p -> e_p
        model.embed_tokens.weight[:, n_pos:n_pos + 16] = torch.eye(16)  # token t -> e_{32+t}
        attn = model.layers[0].self_attn
        attn.k_proj.weight[:d_head, :n_pos] = torch.eye(n_pos)  # key of position j: e_j
        shift = torch.zeros(d_head, n_pos)
        shift[torch.arange(n_pos - 1), torch.arange(1, n_pos)] = 1.0  # query of position i: e_{i-1}
        attn.q_proj.weight[:d_head, :n_pos] = 20.0 * shift
        hf.lm_head.weight[:, n_pos:n_pos + 16] = torch.eye(16)
    return HookedModel(hf.eval(), name="hand-built")


def test_hand_built_previous_token_head_is_found():
    model = hand_built_prev_token_model()
    table = detect_heads(model, seq_len=10, batch=4)
    assert len(table) == 2 * 2
    by_head = {(r.layer, r.head): r for r in table}
    assert by_head[(0, 0)].prev_token > 0.99
    assert by_head[(0, 0)].label == "prev_token"
    for key, record in by_head.items():
        if key != (0, 0):
            assert record.prev_token < 0.3, key
            assert record.label != "prev_token"
            assert record.entropy > 1.0  # uniform causal attention


def test_gqa_model_gives_one_record_per_query_head():
    model = tiny_model("llama")  # 4 query heads share 2 key/value heads
    table = detect_heads(model, seq_len=8, batch=2)
    assert [(r.layer, r.head) for r in table] == [(layer, h) for layer in range(3) for h in range(4)]
    for r in table:
        for value in (r.prev_token, r.duplicate_token, r.induction, r.bos):
            assert 0.0 <= value <= 1.0
    assert set(table[0].to_json()) == {"layer", "head", "prev_token", "duplicate_token", "induction", "bos",
                                       "entropy", "label"}


def test_repeated_tokens_and_icl_on_random_model():
    model = tiny_model("gpt2")
    ids = repeated_random_tokens(model, seq_len=12, batch=3, seed=4)
    assert ids.shape == (3, 25)
    assert torch.equal(ids[:, 1:13], ids[:, 13:])
    assert all(len(set(row[1:13].tolist())) == 12 for row in ids)
    score = icl_score(model, ids)
    assert score.chance == pytest.approx(math.log(model.cfg.d_vocab))
    assert abs(score.icl_score) < 0.5  # a random model does not copy from context


def test_ablation_hooks_zero_the_chosen_head():
    model = tiny_model("llama")
    ids = repeated_random_tokens(model, seq_len=6, batch=2)
    seen = {}
    hooks = [*head_ablation_hooks([(1, 2)]), ("blocks.1.attn.hook_z", lambda z, hook: seen.setdefault("z", z))]
    model.run_with_hooks(ids, fwd_hooks=hooks)
    assert seen["z"][:, :, 2].abs().max() == 0 and seen["z"][:, :, 1].abs().max() > 0
    with pytest.raises(MechscopeError):
        head_ablation_hooks([(0, 0)], mode="resample")
