"""Suffix-only patching passes (the base run's keys and values reused): equal to one forward per cell, on every family.

Prompts are longer than the tiny models' sliding windows (8) and the second pair is
right-padded, so sliding-window masks, per-pair metric positions and padding all meet the
KV-cache path. Tolerance: 1e-5 in metric units (float32; the suffix pass orders sums differently).
"""

from __future__ import annotations

import pytest
import torch
from _patching_helpers import ANSWER, WRONG, pair_ids

from mechscope.core import names
from mechscope.core.tokens import TokenBatch
from mechscope.methods.patching import PairRuns, engine, packing, patch_loop, patch_sweep
from mechscope.methods.patching.engine import floor_work, run_cells, suffix_starts
from mechscope.methods.patching.sweep import site_cells
from tiny_models import CONFIGS, tiny_model

KW = dict(answer=ANSWER, wrong=WRONG)
N_POS = 12


def _padded_pair() -> tuple[TokenBatch, TokenBatch]:
    clean, corrupt = pair_ids(n_pos=N_POS, shared=(0, 4, 5, 9))
    mask = torch.ones_like(clean)
    mask[1, 9:] = 0  # the second pair has 9 real tokens
    return TokenBatch(clean, mask), TokenBatch(corrupt, mask.clone())


def _gap(result, reference) -> float:
    return float((result.scores - reference).abs().max()) * abs(result.clean - result.corrupt)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_suffix_passes_equal_one_forward_per_cell(kind):
    model = tiny_model(kind)
    clean, corrupt = _padded_pair()
    runs = PairRuns(model, clean, corrupt, names=[names.resid_pre(i) for i in range(model.cfg.n_layers)], **KW)
    assert runs.corrupt_resid.kv is not None, "keys and values of the base run were not kept"
    for mode in ("denoise", "noise"):
        result = patch_sweep(model, clean, corrupt, site="resid_pre", by="layer,pos", mode=mode, **KW)
        reference = patch_loop(model, clean, corrupt, site="resid_pre", by="layer,pos", mode=mode, **KW)
        assert _gap(result, reference) <= 1e-5, (mode, _gap(result, reference))


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2", "mistral"])
def test_packed_rows_split_by_length_and_memory_equal_loop(kind, monkeypatch):
    """Cells of one layer dealt over several packed rows, and layers over several passes, still equal the loop."""
    model = tiny_model(kind)
    clean, corrupt = _padded_pair()
    passes = []
    run_packed = packing.run_packed
    monkeypatch.setattr(packing, "run_packed", lambda *args: passes.append(1) or run_packed(*args))
    monkeypatch.setattr(packing, "PACK_MAX_TOKENS", 10)
    result = patch_sweep(model, clean, corrupt, site="resid_pre", by="layer,pos", memory_mb=2, **KW)
    reference = patch_loop(model, clean, corrupt, site="resid_pre", by="layer,pos", **KW)
    assert len(passes) >= 2 and _gap(result, reference) <= 1e-5
    passes.clear()  # a cap below one layer's packed rows falls back to unpacked passes
    result = patch_sweep(model, clean, corrupt, site="resid_pre", by="layer,pos", memory_mb=0.2, **KW)
    assert not passes and _gap(result, reference) <= 1e-5


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2", "gpt_neox"])
def test_head_by_position_suffix_passes_equal_loop(kind):
    model = tiny_model(kind)
    clean, corrupt = _padded_pair()
    result = patch_sweep(model, clean, corrupt, site="z", by="layer,head,pos", memory_mb=0.2, **KW)
    reference = patch_loop(model, clean, corrupt, site="z", by="layer,head,pos", **KW)
    assert _gap(result, reference) <= 1e-5


def _layer_tokens(model, fn) -> int:
    """Layer x token work of `fn()`: query positions seen by every decoder layer that really runs."""
    seen = []
    handles = [layer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(
        (args[0] if args else kwargs["hidden_states"]).shape[:2].numel()), with_kwargs=True)
        for layer in model.layers]
    try:
        fn()
    finally:
        for handle in handles:
            handle.remove()
    return sum(seen)


def test_sweep_work_lies_between_the_floor_and_layer_skipping_alone(monkeypatch):
    model = tiny_model("llama")
    clean, corrupt = pair_ids(n_pairs=1, n_pos=N_POS)
    runs = PairRuns(model, clean, corrupt, names=[names.resid_pre(i) for i in range(model.cfg.n_layers)],
                    answer=ANSWER[0], wrong=WRONG[0])
    cells, _ = site_cells(model, "resid_pre", ("layer", "pos"), N_POS)

    def work() -> int:
        return _layer_tokens(model, lambda: run_cells(model, runs.pair.corrupt, runs.clean_acts, cells, runs.metric,
                                                      runs.corrupt_resid, base_acts=runs.corrupt_acts))

    starts = suffix_starts(cells, runs.metric, N_POS, runs.clean_acts, runs.corrupt_acts)
    floor = floor_work(cells, starts, model.cfg.n_layers, N_POS)
    layers_only = sum((model.cfg.n_layers - c.layer) * N_POS for c in cells)  # without reusing keys and values
    # Packed rows share one layout per pass, so a segment may start a little before its cell.
    assert floor <= work() <= 1.25 * floor < layers_only
    monkeypatch.setattr(packing, "packable", lambda *args: False)
    assert floor <= work() < layers_only
    # Rows join the batch at their own layer: with a fixed cost per pass too large to pay twice,
    # one pass per suffix start still does exactly the floor's work.
    by_start = {}
    for cell, start in zip(cells, starts, strict=True):
        by_start.setdefault(start, []).append(cell)
    for start, group in by_start.items():
        assert _layer_tokens(model, lambda group=group: run_cells(
            model, runs.pair.corrupt, runs.clean_acts, group, runs.metric, runs.corrupt_resid,
            base_acts=runs.corrupt_acts)) == floor_work(group, [start] * len(group), model.cfg.n_layers, N_POS)
    # With no fixed cost per pass the planner runs every cell on exactly its own suffix and layers.
    monkeypatch.setattr(engine, "PASS_COST_TOKENS", 0)
    assert work() == floor


def test_positions_where_source_equals_base_are_not_run():
    model = tiny_model("llama")
    clean, corrupt = pair_ids(n_pairs=1, n_pos=N_POS, shared=(0, 1, 4))
    runs = PairRuns(model, clean, corrupt, names=[names.resid_pre(0), names.z(1)], answer=ANSWER[0],
                    wrong=WRONG[0])
    cells, _ = site_cells(model, "resid_pre", ("layer", "pos"), N_POS)
    cells = [c for c in cells if c.layer == 0]
    starts = suffix_starts(cells, runs.metric, N_POS, runs.clean_acts, runs.corrupt_acts)
    # Embeddings of shared tokens are equal: those cells start at the metric's position, the others at their own.
    same = (clean[0] == corrupt[0]).tolist()
    assert same[0] and same[1] and same[4] and not same[2]
    assert starts == [N_POS - 1 if same[p] else p for p in range(N_POS)]
    heads, _ = site_cells(model, "z", ("layer", "head"), N_POS)
    heads = [c for c in heads if c.layer == 1]
    assert suffix_starts(heads, runs.metric, N_POS, runs.clean_acts, runs.corrupt_acts) == [2] * len(heads)
