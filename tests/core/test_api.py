"""The run_with_cache / run_with_hooks / hooks() API and its errors."""

from __future__ import annotations

import pytest
import torch

import mechscope
from mechscope.core import names
from mechscope.core.errors import HookNameError, HookShapeError, ModelLoadError
from tiny_models import tiny_ids, tiny_model


def _our_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())


@pytest.fixture
def llama():
    return tiny_model("llama")


def test_names_select_by_list_predicate_and_none(llama) -> None:
    ids = tiny_ids()
    _, everything = llama.run_with_cache(ids)
    assert list(everything) == llama.hook_names()
    _, some = llama.run_with_cache(ids, names=[names.resid_post(0), names.z(2)])
    assert set(some) == {names.resid_post(0), names.z(2)}
    _, resid = llama.run_with_cache(ids, names=lambda n: n.endswith("hook_resid_post"))
    assert len(resid) == llama.cfg.n_layers
    assert resid.stack("hook_resid_post").shape == (llama.cfg.n_layers, *ids.shape, llama.cfg.d_model)


def test_shapes_follow_the_documented_table(llama) -> None:
    ids = tiny_ids(batch=2, pos=7)
    _, cache = llama.run_with_cache(ids)
    c = llama.cfg
    assert cache[names.q(0)].shape == (2, 7, c.n_heads, c.d_head)
    assert cache[names.k(0)].shape == (2, 7, c.n_kv_heads, c.d_head)
    assert cache[names.pattern(0)].shape == (2, c.n_heads, 7, 7)
    assert cache[names.result(0)].shape == (2, 7, c.n_heads, c.d_model)
    assert cache[names.mlp_post(0)].shape == (2, 7, c.d_mlp)


def test_stop_at_layer_returns_no_logits_and_no_later_layers(llama) -> None:
    logits, cache = llama.run_with_cache(tiny_ids(), stop_at_layer=1)
    assert logits is None
    assert names.resid_post(0) in cache and names.resid_pre(1) not in cache
    with pytest.raises(HookNameError, match="after stop_at_layer"):
        llama.run_with_cache(tiny_ids(), names=[names.resid_post(2)], stop_at_layer=1)


def test_unknown_hook_name_suggests_the_nearest(llama) -> None:
    with pytest.raises(HookNameError, match="blocks.0.hook_resid_pre"):
        llama.run_with_cache(tiny_ids(), names=["blocks.0.hook_resid_pr"])
    with pytest.raises(HookNameError, match="Did you mean"):
        llama.run_with_hooks(tiny_ids(), fwd_hooks=[("blocks.1.attn.hook_zz", lambda a, h: None)])
    assert _our_hooks(llama) == 0


def test_wrong_shape_from_a_hook_is_a_clear_error_and_hooks_are_removed(llama) -> None:
    with pytest.raises(HookShapeError, match=r"returned .*\(3,\)"):
        llama.run_with_hooks(tiny_ids(), fwd_hooks=[(names.resid_pre(1), lambda a, h: torch.zeros(3))])
    assert _our_hooks(llama) == 0


def test_hooks_context_removes_hooks_after_an_error(llama) -> None:
    def explode(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with llama.hooks([(names.resid_post(0), explode)]):
            assert _our_hooks(llama) > 0
            llama(tiny_ids())
    assert _our_hooks(llama) == 0
    clean = llama(tiny_ids())
    with llama.hooks([(names.resid_post(0), lambda a, h: a * 0)]):
        assert not torch.equal(llama(tiny_ids()), clean)
    assert torch.equal(llama(tiny_ids()), clean)


def test_permanent_hooks_apply_until_reset(llama) -> None:
    clean = llama(tiny_ids())
    llama.add_permanent_hook(names.resid_post(0), lambda a, h: a * 0)
    assert not torch.equal(llama(tiny_ids()), clean)
    _, cache = llama.run_with_cache(tiny_ids(), names=[names.resid_post(0)])
    assert cache[names.resid_post(0)].abs().max() == 0
    llama.reset_hooks()
    assert torch.equal(llama(tiny_ids()), clean)


def test_missing_model_path_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        mechscope.load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="config.json"):
        mechscope.load_model(str(tmp_path))


def test_saved_folder_round_trip(tmp_path) -> None:
    llama = tiny_model("llama")
    llama.hf_model.save_pretrained(tmp_path / "tiny")
    loaded = mechscope.load_model(str(tmp_path / "tiny"), device="cpu")
    assert torch.equal(loaded(tiny_ids()), llama(tiny_ids()))


@pytest.mark.slow
def test_text_errors_on_the_default_model(default_model) -> None:
    from mechscope.core.errors import TokenizationError

    with pytest.raises(TokenizationError, match="Empty prompt"):
        default_model("")
    with pytest.raises(TokenizationError, match="tokens, not one"):
        default_model.to_single_token(" Eiffel Tower")
    assert default_model.to_str_tokens(default_model.to_single_token(" Paris") * torch.ones(1, dtype=torch.long)) == [" Paris"]


def test_unreachable_hub_id_is_one_clear_sentence(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty HF cache
    with pytest.raises(ModelLoadError, match="cannot be reached") as info:
        mechscope.load_model("some-org/some-model")
    assert str(info.value).count(". ") == 0 and "load_model('DIR')" in str(info.value)
