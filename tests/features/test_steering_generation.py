"""Generation with interventions: cached = uncached, batched = one by one, = HF generate, and a planted toy."""

from __future__ import annotations

import pytest
import torch

from mechscope.core.errors import MechscopeError
from mechscope.dictionaries import make_dictionary
from mechscope.features.steering import Ablate, Add, Clamp, Direction, generate, steering
from mechscope.features.steering.generate import left_pad
from tiny_lm import tiny_lm

PROMPTS = ["a b c", "d e f g h i", "j k"]


def _interventions(model, kind: str):
    site = f"blocks.{model.cfg.n_layers - 2}.hook_resid_post"
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    if kind == "add_all":
        return [Add(vector, 3.0, hook_name=site)]
    if kind == "add_generated":
        return [Add(vector, 3.0, where="generated", hook_name=site)]
    if kind == "clamp_prompt":
        sae = make_dictionary("topk", d_in=model.cfg.d_model, d_sae=96, k=6, hook_name=site, seed=0)
        return [Clamp(sae, [5, 11], 4.0, where="prompt")]
    return [Add(vector, 2.0, where=[1, -1], hook_name=site), Ablate(Direction(vector.flip(0), site))]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize("kind", ["add_all", "add_generated", "clamp_prompt", "listed_and_ablate"])
def test_cached_and_uncached_generation_agree_under_steering(family, kind) -> None:
    model = tiny_lm(family)
    interventions = _interventions(model, kind)
    for temperature, top_p in ((0.0, 1.0), (0.9, 0.8)):
        cached = generate(model, PROMPTS, interventions, max_new_tokens=12, temperature=temperature, top_p=top_p,
                          seed=3, stop_at_eos=False)
        plain = generate(model, PROMPTS, interventions, max_new_tokens=12, temperature=temperature, top_p=top_p,
                         seed=3, stop_at_eos=False, use_cache=False)
        assert torch.equal(cached.tokens, plain.tokens), (family, kind, temperature)


def test_batched_generation_equals_one_prompt_at_a_time() -> None:
    model = tiny_lm("llama")
    interventions = _interventions(model, "listed_and_ablate")
    together = generate(model, PROMPTS, interventions, max_new_tokens=10, stop_at_eos=False)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, prompt, interventions, max_new_tokens=10, stop_at_eos=False)
        assert torch.equal(alone.tokens[0], together.tokens[row])


def test_unsteered_generation_equals_hf_generate() -> None:
    model = tiny_lm("llama")
    ids, mask, _ = left_pad(model, PROMPTS)
    hf = model.hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                 pad_token_id=2, eos_token_id=None)
    ours = generate(model, PROMPTS, max_new_tokens=10, stop_at_eos=False)
    assert torch.equal(hf[:, ids.shape[1]:], ours.tokens)


def test_generated_only_steering_leaves_the_prompt_alone() -> None:
    model = tiny_lm("llama")
    plain = generate(model, PROMPTS, max_new_tokens=6, stop_at_eos=False)
    late = generate(model, PROMPTS, _interventions(model, "add_generated"), max_new_tokens=6, stop_at_eos=False)
    early = generate(model, PROMPTS, _interventions(model, "add_all"), max_new_tokens=6, stop_at_eos=False)
    assert torch.equal(late.tokens[:, 0], plain.tokens[:, 0])  # the first new token is read off the prompt
    assert not torch.equal(late.tokens, plain.tokens)
    assert not torch.equal(early.tokens, plain.tokens)


def test_sampling_is_seeded() -> None:
    model = tiny_lm("llama")
    a = generate(model, PROMPTS, max_new_tokens=8, temperature=1.0, seed=1, stop_at_eos=False)
    b = generate(model, PROMPTS, max_new_tokens=8, temperature=1.0, seed=1, stop_at_eos=False)
    c = generate(model, PROMPTS, max_new_tokens=8, temperature=1.0, seed=2, stop_at_eos=False)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)


def test_generation_stops_rows_at_end_of_text() -> None:
    model = tiny_lm("llama")
    eos = model.tokenizer.eos_token_id
    site = "blocks.2.hook_resid_post"
    direction = Direction(model.lm_head.weight[eos].detach().clone(), site)
    out = generate(model, PROMPTS, [Add(direction, 50.0)], max_new_tokens=5)
    assert out.lengths.tolist() == [1, 1, 1] and out.tokens[:, 0].tolist() == [eos] * 3


def test_bad_generation_settings() -> None:
    model = tiny_lm("llama")
    with pytest.raises(MechscopeError, match="top_p"):
        generate(model, "a b", top_p=0.0)
    with pytest.raises(MechscopeError, match="temperature"):
        generate(model, "a b", temperature=-1.0)


def _planted_model(token: int = 7):
    """A tiny Llama whose unembedding reads `token` along one direction `v` of the final residual only."""
    model = tiny_lm("llama")
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    unit = v / v.norm()
    with torch.no_grad():
        model.final_norm.weight.fill_(1.0)
        W = model.lm_head.weight
        W -= (W @ unit)[:, None] * unit  # no other token reads v
        W[token] = 4.0 * unit
    return model, Direction(v, f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"), token


@torch.no_grad()
def test_planted_direction_moves_the_output_monotonically_and_ablation_removes_it() -> None:
    model, direction, token = _planted_model()
    ids = torch.tensor([[0, 5, 9, 13, 20, 31]])
    coefs = [-3.0, -1.0, -0.3, 0.0, 0.3, 1.0, 3.0]
    logit, ablated = [], []
    for coef in coefs:
        with steering(model, [Add(direction, coef)]):
            logit.append(model(ids)[0, :, token])
        with steering(model, [Add(direction, coef), Ablate(direction)]):
            ablated.append(model(ids)[0, :, token])
    logit, ablated = torch.stack(logit), torch.stack(ablated)
    assert (logit.diff(dim=0) > 0).all()  # strictly increasing with the coefficient at every position
    # the direction is gone, whatever was added: the token's logit is 0 up to float error (the final
    # RMS norm divides by a residual norm of about 0.3, which magnifies rounding), against a range of > 5
    assert float(logit.max() - logit.min()) > 5 and ablated.abs().max() < 2e-3
    top = generate(model, "a b c", [Add(direction, 3.0)], max_new_tokens=3, stop_at_eos=False)
    assert top.tokens[0].tolist() == [token] * 3
    gone = generate(model, "a b c", [Add(direction, 3.0), Ablate(direction)], max_new_tokens=3, stop_at_eos=False)
    assert token not in gone.tokens[0].tolist()
