"""Interventions: exact identities, position selection, composition, bad input, and a planted-direction toy."""

from __future__ import annotations

import pytest
import torch

from mechscope.core.errors import HookNameError, MechscopeError
from mechscope.dictionaries import make_dictionary
from mechscope.features.steering import (
    Ablate,
    Add,
    Clamp,
    Direction,
    PositionState,
    Swap,
    from_latent,
    from_vector,
    steering,
)
from tiny_lm import tiny_lm
from tiny_models import tiny_ids

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


@pytest.fixture(scope="module")
def sae():
    return make_dictionary("relu", d_in=64, d_sae=128, hook_name=SITE, seed=0)  # about half the latents fire


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _vector(seed: int = 0, width: int = 64) -> torch.Tensor:
    return torch.randn(width, generator=torch.Generator().manual_seed(seed))


def test_coefficient_zero_is_bit_identical(model) -> None:
    ids = tiny_ids(2, 9)
    plain = model(ids)
    with steering(model, [Add(_vector(), 0.0, hook_name=SITE)]):
        steered = model(ids)
    assert torch.equal(plain, steered)
    with steering(model, [Add(_vector(), 1.0, hook_name=SITE)]):
        assert not torch.equal(plain, model(ids))


@pytest.mark.parametrize("where", ["all", [2, 5], [-1]])
def test_add_changes_the_site_by_exactly_the_vector_where_chosen(model, where) -> None:
    ids = tiny_ids(2, 9)
    vector = _vector(1)
    _, plain = model.run_with_cache(ids, names=[SITE])
    with steering(model, [Add(vector, 3.0, where=where, hook_name=SITE)]):
        _, steered = model.run_with_cache(ids, names=[SITE])
    chosen = torch.zeros(9, dtype=torch.bool)
    chosen[slice(None) if where == "all" else list(where)] = True
    before, after = plain[SITE], steered[SITE]
    assert torch.equal(after[:, chosen], before[:, chosen] + 3.0 * vector)
    assert torch.equal(after[:, ~chosen], before[:, ~chosen])


def test_site_norm_units(model) -> None:
    d = Direction(_vector(2), SITE)
    add = Add(d, 2.0, site_norm=5.0)
    assert torch.allclose(add.vector.norm(), torch.tensor(10.0))
    assert add.describe()["units"] == "site_norm"
    assert Add(d, 2.0).describe()["units"] == "direction_norm"


def test_clamp_to_current_value_changes_nothing(model, sae) -> None:
    ids = tiny_ids(1, 8)
    plain, cache = model.run_with_cache(ids, names=[SITE])
    codes = sae.encode(cache[SITE][0])
    pos, latent = 4, int(codes[4].argmax())
    assert codes[pos, latent] > 0
    with steering(model, [Clamp(sae, latent, float(codes[pos, latent]), where=[pos])]):
        clamped = model(ids)
    assert (clamped - plain).abs().max() <= 1e-6
    inactive = int((codes == 0).all(0).nonzero()[0])
    with steering(model, [Clamp(sae, inactive, 0.0)]):  # a latent that is 0 everywhere, clamped to 0
        same = model(ids)
    assert (same - plain).abs().max() <= 1e-6


def test_clamp_sets_the_latent_and_keeps_the_error(model, sae) -> None:
    ids = tiny_ids(1, 8)
    _, plain = model.run_with_cache(ids, names=[SITE])
    with steering(model, [Clamp(sae, [7, 9], [6.0, 0.0])]):
        _, steered = model.run_with_cache(ids, names=[SITE])
    before, after = plain[SITE][0], steered[SITE][0]
    f_before = sae.encode(before)
    expected = before + (6.0 - f_before[:, 7:8]) * sae.W_dec[7] + (0.0 - f_before[:, 9:10]) * sae.W_dec[9]
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=0)
    # the stream is the reconstruction from the edited codes plus the original error term x - x_hat
    edited = f_before.clone()
    edited[:, 7], edited[:, 9] = 6.0, 0.0
    torch.testing.assert_close(after, sae.decode(edited) + (before - sae.decode(f_before)), atol=1e-5, rtol=0)


def test_clamp_matches_adding_the_decoder_row(model, sae) -> None:
    """Clamping an inactive latent to v is adding v * (decoder row), i.e. `Add(from_latent(...), v)`."""
    ids = tiny_ids(1, 8)
    _, cache = model.run_with_cache(ids, names=[SITE])
    codes = sae.encode(cache[SITE][0])
    latent = int((codes == 0).all(0).nonzero()[0])
    with steering(model, [Clamp(sae, latent, 4.0)]):
        clamped = model(ids)
    with steering(model, [Add(from_latent(sae, latent), 4.0)]):
        added = model(ids)
    torch.testing.assert_close(clamped, added, atol=1e-5, rtol=0)


def test_swap_moves_activation_from_down_to_up(model, sae) -> None:
    ids = tiny_ids(1, 8)
    _, plain = model.run_with_cache(ids, names=[SITE])
    codes = sae.encode(plain[SITE][0])
    down = int(codes.sum(0).argmax())
    up = int((codes == 0).all(0).nonzero()[0])
    with steering(model, [Swap(sae, down=[down], up=[up])]):
        _, steered = model.run_with_cache(ids, names=[SITE])
    expected = plain[SITE][0] + codes[:, down:down + 1] * (sae.W_dec[up] - sae.W_dec[down])
    torch.testing.assert_close(steered[SITE][0], expected, atol=1e-5, rtol=0)


def test_transcoder_clamp_to_current_value_changes_nothing(model) -> None:
    tc = make_dictionary("relu", d_in=64, d_sae=32, hook_name="blocks.1.hook_resid_mid",
                         hook_name_out="blocks.1.hook_mlp_out", seed=1)
    ids = tiny_ids(1, 6)
    plain, cache = model.run_with_cache(ids, names=["blocks.1.hook_resid_mid"])
    codes = tc.encode(cache["blocks.1.hook_resid_mid"][0])
    latent = int(codes[3].argmax())
    with steering(model, [Clamp(tc, latent, float(codes[3, latent]), where=[3])]):
        same = model(ids)
    assert (same - plain).abs().max() <= 1e-6
    with steering(model, [Clamp(tc, latent, float(codes[3, latent]) + 5.0, where=[3])]):
        moved = model(ids)
    assert torch.equal(moved[0, :3], plain[0, :3]) and not torch.allclose(moved[0, 3], plain[0, 3])


def test_ablate_projects_out_and_caps(model) -> None:
    ids = tiny_ids(2, 7)
    d = Direction(_vector(3), SITE)
    with steering(model, [Ablate(d)]):
        _, cache = model.run_with_cache(ids, names=[SITE])
    assert (cache[SITE] @ d.unit).abs().max() < 1e-4
    _, plain = model.run_with_cache(ids, names=[SITE])
    proj = plain[SITE] @ d.unit
    cap = float(proj.median())
    with steering(model, [Ablate(d, cap=cap)]):
        _, capped = model.run_with_cache(ids, names=[SITE])
    torch.testing.assert_close(capped[SITE] @ d.unit, proj.clamp(max=cap), atol=1e-4, rtol=0)


def test_interventions_compose_in_order(model) -> None:
    ids = tiny_ids(1, 6)
    d = Direction(_vector(4), SITE)
    with steering(model, [Add(d, 5.0), Ablate(d)]):
        _, both = model.run_with_cache(ids, names=[SITE])
    with steering(model, [Ablate(d)]):
        _, ablated = model.run_with_cache(ids, names=[SITE])
    torch.testing.assert_close(both[SITE], ablated[SITE], atol=1e-4, rtol=0)


def test_position_state_masks_prompt_generated_and_listed() -> None:
    state = PositionState(offset=0, start=torch.tensor([2, 0]), prompt_len=torch.tensor([3, 5]))
    prompt = state.mask("prompt", 2, 6, torch.device("cpu"))
    assert prompt.tolist() == [[False, False, True, True, True, False], [True] * 5 + [False]]
    assert state.mask("generated", 2, 6, torch.device("cpu")).tolist() == [[False] * 5 + [True], [False] * 5 + [True]]
    assert state.mask([0, -1], 2, 6, torch.device("cpu")).tolist() == [
        [False, False, True, False, True, False], [True, False, False, False, True, False]]
    state.offset = 6  # one cached step: the token at padded index 6 is generated in both rows
    assert state.mask("generated", 2, 1, torch.device("cpu")).tolist() == [[True], [True]]
    assert state.mask("all", 2, 1, torch.device("cpu")) is None


def test_bad_input_gives_one_line_errors(model, sae) -> None:
    with pytest.raises(MechscopeError, match="out of range: this dictionary has latents 0..127"):
        with steering(model, [Clamp(sae, 128, 1.0)]):
            pass
    with pytest.raises(MechscopeError, match="out of range"):
        from_latent(sae, -1)
    with pytest.raises(MechscopeError, match=r"shape \(65,\).*width 64"):
        with steering(model, [Add(torch.zeros(65), 1.0, hook_name=SITE)]):
            pass
    with pytest.raises(HookNameError, match="Unknown hook name 'blocks.9.hook_resid_post'. Did you mean"):
        from_vector(model, torch.zeros(64), "blocks.9.hook_resid_post")
    with pytest.raises(MechscopeError, match="where="):
        Add(torch.zeros(64), 1.0, where="everywhere", hook_name=SITE)
    wrong_site = make_dictionary("relu", d_in=32, d_sae=16, hook_name=SITE, seed=0)
    with pytest.raises(MechscopeError, match="width 64"):
        with steering(model, [Clamp(wrong_site, 0, 1.0)]):
            pass


def test_hooks_are_removed_after_the_block(model) -> None:
    ids = tiny_ids(1, 5)
    plain = model(ids)
    with pytest.raises(RuntimeError):
        with steering(model, [Add(_vector(), 9.0, hook_name=SITE)]):
            raise RuntimeError("boom")
    assert torch.equal(model(ids), plain)
