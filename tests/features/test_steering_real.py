"""Steering on the real default model (SmolLM2-135M-Instruct): exact identities, cache agreement, a reading
vector on a real property against random directions, and a two-hop country swap."""

from __future__ import annotations

import pytest
import torch

from mechscope.dictionaries import make_dictionary
from mechscope.features.steering import (
    Add,
    Clamp,
    generate,
    mean_difference,
    projection_accuracy,
    read_activations,
    reading_vector,
    steering,
)

pytestmark = pytest.mark.slow
PROMPT = "The official language of the country where Paris is located is"
SITE = "blocks.15.hook_resid_post"


@torch.no_grad()
def test_zero_coefficient_and_clamp_to_current_are_exact(default_model) -> None:
    model = default_model
    plain = model(PROMPT)
    with steering(model, [Add(torch.randn(576), 0.0, hook_name=SITE)]):
        assert torch.equal(model(PROMPT), plain)
    sae = make_dictionary("topk", d_in=576, d_sae=4608, k=32, hook_name=SITE, input_scale=0.14, seed=0)
    _, cache = model.run_with_cache(PROMPT, names=[SITE])
    codes = sae.encode(cache[SITE][0])
    pos = 7
    latent = int(codes[pos].argmax())
    with steering(model, [Clamp(sae, latent, float(codes[pos, latent]), where=[pos])]):
        assert (model(PROMPT) - plain).abs().max() <= 1e-6
    with steering(model, [Clamp(sae, latent, float(codes[pos, latent]) + 20.0, where=[pos])]):
        assert (model(PROMPT) - plain).abs().max() > 1e-2


def test_cached_and_uncached_generation_agree_under_steering(default_model) -> None:
    direction = torch.randn(576, generator=torch.Generator().manual_seed(0))
    steer = [Add(direction, 2.0, hook_name="blocks.10.hook_resid_post", where="generated")]
    prompts = ["I went to the", "The weather today is"]
    cached = generate(default_model, prompts, steer, max_new_tokens=10, stop_at_eos=False)
    uncached = generate(default_model, prompts, steer, max_new_tokens=10, stop_at_eos=False, use_cache=False)
    assert torch.equal(cached.tokens, uncached.tokens)


SUBJECTS = ["The movie", "The food", "My day", "The hotel", "The concert", "The book", "The service", "Our trip",
            "The game", "The party", "The lecture", "The weather"]
ADJECTIVES = [("wonderful", "terrible"), ("great", "awful"), ("delightful", "horrible"), ("excellent", "dreadful"),
              ("lovely", "miserable"), ("amazing", "disappointing"), ("fantastic", "boring"), ("pleasant", "unpleasant")]


def _pairs(subjects: list[str], adjectives: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    return ([f"{s} was {p}." for s in subjects for p, _ in adjectives],
            [f"{s} was {n}." for s in subjects for _, n in adjectives])


def test_sentiment_reading_vector_beats_random_directions_on_held_out_pairs(default_model) -> None:
    model, hook = default_model, "blocks.14.hook_resid_post"
    train, test = _pairs(SUBJECTS[:8], ADJECTIVES[:5]), _pairs(SUBJECTS[8:], ADJECTIVES[5:])  # new subjects, new words
    rv, caa = reading_vector(model, *train, hook), mean_difference(model, *train, hook)
    pos, neg = read_activations(model, test[0], hook), read_activations(model, test[1], hook)
    train_pos, train_neg = read_activations(model, train[0], hook), read_activations(model, train[1], hook)

    def text_accuracy(v: torch.Tensor) -> float:  # each held-out text on its own, at the training midpoint
        threshold = float((train_pos @ v).mean() + (train_neg @ v).mean()) / 2
        return float(torch.cat([(pos @ v) > threshold, (neg @ v) <= threshold]).double().mean())

    gen = torch.Generator().manual_seed(0)
    randoms = [torch.randn(576, generator=gen) for _ in range(100)]
    random_texts = sorted(text_accuracy(v) for v in randoms)
    random_pairs = sum(projection_accuracy(v, pos, neg) for v in randoms) / len(randoms)
    assert projection_accuracy(rv, pos, neg) == 1.0 and projection_accuracy(caa, pos, neg) == 1.0
    assert abs(random_pairs - 0.5) < 0.15  # a random direction is right on half the pairs on average
    assert text_accuracy(rv.vector) >= 0.95 and text_accuracy(caa.vector) >= 0.95
    assert abs(sum(random_texts) / len(random_texts) - 0.5) < 0.1 and random_texts[94] <= 0.9  # 95th percentile


@torch.no_grad()
def test_two_hop_country_swap_changes_the_language(default_model) -> None:
    model, hook = default_model, "blocks.8.hook_resid_post"
    contexts = ["I travelled to {}", "She was born in {}", "The president of {}", "We moved to {}",
                "The history of {}", "The map of {}", "He studied in {}", "The economy of {}"]
    swap = mean_difference(model, [c.format("Germany") for c in contexts], [c.format("France") for c in contexts],
                           hook)
    french, german = model.to_single_token(" French"), model.to_single_token(" German")
    position = model.to_str_tokens(PROMPT).index(" Paris")
    assert int(model(PROMPT)[0, -1].argmax()) == french
    with steering(model, [Add(swap, 1.0, where=[position])]):
        assert int(model(PROMPT)[0, -1].argmax()) == german
    noise = torch.randn(576, generator=torch.Generator().manual_seed(1))
    with steering(model, [Add(noise / noise.norm() * swap.norm, 1.0, where=[position], hook_name=hook)]):
        assert int(model(PROMPT)[0, -1].argmax()) == french


def test_gemma3_cached_and_uncached_generation_agree_under_steering() -> None:
    import mechscope

    model = mechscope.load_model("gemma3-270m")
    site = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    steer = [Add(direction / direction.norm() * 20.0, 1.0, hook_name=site)]
    prompts = ["The Eiffel Tower is in the city of", "Once upon a time"]
    cached = generate(model, prompts, steer, max_new_tokens=6, stop_at_eos=False)
    uncached = generate(model, prompts, steer, max_new_tokens=6, stop_at_eos=False, use_cache=False)
    plain = generate(model, prompts, max_new_tokens=6, stop_at_eos=False)
    assert torch.equal(cached.tokens, uncached.tokens) and not torch.equal(cached.tokens, plain.tokens)
