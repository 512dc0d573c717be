"""Activation-patching sweeps: exactness identities, batched == one-forward-per-cell, errors, results."""

from __future__ import annotations

import json

import pytest
import torch
from _patching_helpers import ANSWER, WRONG, char_model, pair_ids

from mechscope.core import names
from mechscope.core.errors import MechscopeError, TokenizationError
from mechscope.methods.patching import PairRuns, patch_every_block, patch_loop, patch_sweep
from mechscope.methods.patching.engine import Cell, _plan, run_cells
from tiny_models import tiny_model

KW = dict(answer=ANSWER, wrong=WRONG)


def _close_in_metric(result, reference, tol=1e-5):
    """Compare recoveries in metric units: |d recovery| * |clean - corrupt| <= tol."""
    scale = abs(result.clean - result.corrupt)
    gap = float((result.scores - reference).abs().max()) * scale
    assert gap <= tol, f"batched vs loop differ by {gap:.2e} in metric units"


def test_batched_sweep_equals_one_forward_per_cell(tiny):
    clean, corrupt = pair_ids()
    result = patch_sweep(tiny, clean, corrupt, site="resid_pre", by="layer,pos", memory_mb=0.05, **KW)
    reference = patch_loop(tiny, clean, corrupt, site="resid_pre", by="layer,pos", **KW)
    assert result.shape == tuple(reference.shape)
    _close_in_metric(result, reference)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox", "gemma3"])
@pytest.mark.parametrize("site,by", [("z", "layer,head,pos"), ("attn_out", "layer")])
def test_head_and_attention_sweeps_equal_loop(kind, site, by):
    model = tiny_model(kind)
    clean, corrupt = pair_ids()
    result = patch_sweep(model, clean, corrupt, site=site, by=by, **KW)
    _close_in_metric(result, patch_loop(model, clean, corrupt, site=site, by=by, **KW))


@pytest.mark.parametrize("site", ["resid_mid", "resid_post", "mlp_out"])
def test_other_sites_equal_loop_llama_and_gpt2(site):
    for kind in ("llama", "gpt2"):
        model = tiny_model(kind)
        clean, corrupt = pair_ids()
        result = patch_sweep(model, clean, corrupt, site=site, by="layer,pos", mode="noise", **KW)
        _close_in_metric(result, patch_loop(model, clean, corrupt, site=site, by="layer,pos", mode="noise", **KW))


def test_whole_residual_recovers_exactly_and_noising_mirrors(tiny):
    clean, corrupt = pair_ids()
    runs = PairRuns(tiny, clean, corrupt, answer=ANSWER, wrong=WRONG,
                    names=[names.resid_pre(i) for i in range(tiny.cfg.n_layers)])
    for mode, expected in (("denoise", 1.0), ("noise", 0.0)):
        by_layer = patch_sweep(tiny, clean, corrupt, site="resid_pre", by="layer", mode=mode, runs=runs)
        assert torch.allclose(by_layer.scores, torch.full_like(by_layer.scores, expected), atol=1e-5), by_layer.scores
    grid = patch_sweep(tiny, clean, corrupt, site="resid_pre", by="layer,pos", runs=runs)
    noise = patch_sweep(tiny, clean, corrupt, site="resid_pre", by="layer,pos", mode="noise", runs=runs)
    # Positions where both prompts hold the same token carry the same layer-0 residual: no effect either way.
    for p in (0, 4, 5):
        assert abs(float(grid.scores[0, p])) < 1e-5 and abs(float(noise.scores[0, p]) - 1) < 1e-5
    # Only the last position reaches the metric at the last layer's output.
    post = patch_sweep(tiny, clean, corrupt, site="resid_post", by="layer,pos", **KW)
    assert abs(float(post.scores[-1, -1]) - 1) < 1e-5
    assert float(post.scores[-1, :-1].abs().max()) < 1e-5


def test_patching_a_run_into_itself_changes_nothing():
    model = tiny_model("qwen2")
    clean, corrupt = pair_ids()
    site_names = [names.block(i, s) for i in range(3) for s in ("hook_resid_pre", "hook_mlp_out", "attn.hook_z")]
    runs = PairRuns(model, clean, corrupt, answer=ANSWER, wrong=WRONG, names=site_names)
    cells = [Cell(n, names.parse_layer(n), p, 1 if "hook_z" in n else None) for n in site_names for p in (None, 2)]
    values = run_cells(model, runs.pair.corrupt, runs.corrupt_acts, cells, runs.metric, runs.corrupt_resid)
    corrupt_rows = runs.metric(model(runs.pair.corrupt)).float()
    assert torch.allclose(values, corrupt_rows.expand_as(values), atol=1e-5)


def test_every_block_stacks_the_single_site_sweeps():
    model = tiny_model("gemma2")
    clean, corrupt = pair_ids()
    every = patch_every_block(model, clean, corrupt, by="layer", **KW)
    assert every.by == ("site", "layer") and every.labels[0] == ["resid_pre", "attn_out", "mlp_out"]
    for i, site in enumerate(every.labels[0]):
        single = patch_sweep(model, clean, corrupt, site=site, by="layer", **KW)
        assert torch.allclose(every.scores[i], single.scores, atol=1e-5)


def test_plan_groups_cells_by_layer_within_budget():
    layers = [0] * 4 + [1] * 4 + [2] * 4
    chunks = _plan(layers, n_layers=3, n_pairs=2, n_pos=5, max_rows=8)
    covered = [i for a, b in chunks for i in range(a, b)]
    assert covered == list(range(12))
    assert all((b - a) * 2 <= 8 for a, b in chunks)
    assert all(len({layers[i] for i in range(a, b)}) == 1 for a, b in chunks)


def test_staggered_plan_runs_one_pass_per_suffix_when_rows_join_at_their_own_layer():
    layers = [0] * 4 + [1] * 4 + [2] * 4
    assert _plan(layers, n_layers=3, n_pairs=2, n_pos=5, max_rows=24, staggered=True) == [(0, 12)]
    assert len(_plan(layers, n_layers=3, n_pairs=2, n_pos=5, max_rows=8, staggered=True)) == 3  # the budget still holds


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2"])
def test_sweep_without_layer_skipping_equals_one_forward_per_cell(kind):
    model = tiny_model(kind)
    clean, corrupt = pair_ids()
    result = patch_sweep(model, clean, corrupt, site="z", by="layer,head", skip_layers=False, **KW)
    reference = patch_loop(model, clean, corrupt, site="z", by="layer,head", **KW)
    _close_in_metric(result, reference)


def test_result_labels_top_json_and_pictures(tmp_path):
    model = char_model("llama")
    result = patch_sweep(model, "abcdefg", "abXYefg", answer="a", wrong="b", by="layer,pos")
    assert result.labels[1] == list("abcdefg") and result.labels[0] == [0, 1, 2]
    top = result.top(3)
    assert [r["score"] for r in top] == sorted((r["score"] for r in top), reverse=True)
    assert top[0]["score"] == pytest.approx(float(result.scores.max()))
    data = json.loads(result.to_json(tmp_path / "r.json"))
    for key in ("site", "method", "by", "labels", "scores", "clean", "corrupt", "provenance"):
        assert key in data
    assert data["by"] == ["layer", "pos"] and len(data["scores"]) == 3 and len(data["scores"][0]) == 7
    assert result.plot(tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in result.plot(tmp_path / "r.html").read_text()


def test_unequal_lengths_and_multi_token_answers_are_clear_errors():
    model = char_model("llama")
    with pytest.raises(TokenizationError, match=r"same number of tokens(.|\n)*clean:(.|\n)*corrupt:"):
        patch_sweep(model, "abcdef", "abc", answer="a", wrong="b")
    with pytest.raises(TokenizationError, match="single token.*'P', 'a'"):
        patch_sweep(model, "abc", "abd", answer="Pa", wrong="b")
    with pytest.raises(MechscopeError, match="does not apply"):
        patch_sweep(model, "abc", "abd", answer="a", wrong="b", site="resid_pre", by="layer,head")
    with pytest.raises(MechscopeError, match="Unknown patching site"):
        patch_sweep(model, "abc", "abd", answer="a", wrong="b", site="resid")
