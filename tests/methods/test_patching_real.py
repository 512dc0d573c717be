"""Patching on the real default model (SmolLM2-135M-Instruct): the Eiffel Tower / Colosseum pair."""

from __future__ import annotations

import pytest
import torch

from mechscope.core import names
from mechscope.methods.patching import PairRuns, patch_loop, patch_sweep
from mechscope.methods.patching.engine import Cell, run_cells

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Colosseum is in the city of"
KW = dict(answer=" Paris", wrong=" Rome")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def resid_sweep(default_model):
    return patch_sweep(default_model, CLEAN, CORRUPT, site="resid_pre", by="layer,pos", **KW)


def test_recovery_moves_from_subject_to_last_token(default_model, resid_sweep):
    scores, tokens = resid_sweep.scores, resid_sweep.labels[1]
    assert len(default_model.to_str_tokens(CLEAN)) == len(default_model.to_str_tokens(CORRUPT)) == len(tokens)
    assert resid_sweep.clean > 0 > resid_sweep.corrupt  # ' Paris' wins on the clean prompt, ' Rome' on the other
    subject = [i for i, t in enumerate(tokens) if t != default_model.to_str_tokens(CORRUPT)[i]]
    assert subject == [1, 2, 3]
    early, late = scores[:4], scores[-4:]
    assert all(int(row.argmax()) in subject for row in early) and early[:, -1].abs().max() < 0.05
    assert all(int(row.argmax()) == len(tokens) - 1 for row in late) and late[:, subject].abs().max() < 0.1
    assert late[:, -1].min() > 0.5


def test_exact_identities_on_the_real_model(default_model):
    n = default_model.cfg.n_layers
    resid = [names.resid_pre(i) for i in range(n)] + [names.resid_post(n - 1)]
    runs = PairRuns(default_model, CLEAN, CORRUPT, names=resid, **KW)
    whole = patch_sweep(default_model, CLEAN, CORRUPT, site="resid_pre", by="layer", runs=runs)
    assert (whole.scores - 1).abs().max() < 1e-4
    last = run_cells(default_model, runs.pair.corrupt, runs.clean_acts, [Cell(names.resid_post(n - 1), n - 1, 8)],
                     runs.metric, runs.corrupt_resid)
    assert abs(float(runs.recovery(last.mean(1))[0]) - 1) < 1e-4
    itself = run_cells(default_model, runs.pair.corrupt, runs.corrupt_acts,
                       [Cell(names.resid_pre(i), i, p) for i in (0, 12, 29) for p in (2, 8)], runs.metric,
                       runs.corrupt_resid)
    assert (itself - runs.corrupt_value).abs().max() < 1e-4


def test_batched_heads_equal_one_forward_per_cell(default_model):
    # The last three layers keep the loop short; the batched pass starts at layer 27.
    model = default_model
    z_names = [names.z(layer) for layer in range(27, 30)]
    runs = PairRuns(model, CLEAN, CORRUPT, names=z_names, **KW)
    cells = [Cell(names.z(layer), layer, None, head) for layer in range(27, 30) for head in range(model.cfg.n_heads)]
    batched = runs.recovery(runs.patched(cells, "denoise"))
    with torch.no_grad():
        for cell, score in zip(cells, batched, strict=True):
            def hook(act, point, cell=cell):
                act = act.clone()
                act[:, :, cell.head] = runs.clean_acts[cell.name][:, :, cell.head]
                return act

            value = runs.metric(model.run_with_hooks(runs.pair.corrupt, fwd_hooks=[(cell.name, hook)])).mean()
            assert abs(float(score) - float(runs.recovery(value))) < 1e-5


@pytest.mark.parametrize("site,by", [("resid_pre", "layer,pos"), ("z", "layer,head")])
def test_full_sweeps_equal_one_forward_per_cell(default_model, site, by):
    # Every cell at real size: suffix passes with the base run's keys and values, layer skipping,
    # batching across layers and heads; against 270 plain forwards. 1e-5 in recovery units (float32
    # through 30 layers in another order of operations: up to 1.5e-5 in logit-difference units).
    result = patch_sweep(default_model, CLEAN, CORRUPT, site=site, by=by, **KW)
    reference = patch_loop(default_model, CLEAN, CORRUPT, site=site, by=by, **KW)
    gap = float((result.scores - reference).abs().max())
    assert gap < 1e-5, gap


def test_suffix_passes_on_gemma3_equal_one_forward_per_cell():
    # A second real family (sliding-window and global layers): a few suffix starts in the last two layers.
    import mechscope

    model = mechscope.load_model("gemma3-270m")
    n = model.cfg.n_layers
    runs = PairRuns(model, CLEAN, CORRUPT, names=[names.resid_pre(i) for i in range(n)], **KW)
    assert runs.corrupt_resid.kv is not None
    cells = [Cell(names.resid_pre(layer), layer, p) for layer in (n - 2, n - 1) for p in (1, 3, runs.pair.n_pos - 1)]
    batched = runs.patched(cells, "denoise")
    with torch.no_grad():
        for cell, value in zip(cells, batched, strict=True):
            def hook(act, point, cell=cell):
                act = act.clone()
                act[:, cell.pos] = runs.clean_acts[cell.name][:, cell.pos]
                return act

            expected = runs.metric(model.run_with_hooks(runs.pair.corrupt, fwd_hooks=[(cell.name, hook)])).mean()
            assert abs(float(value) - float(expected)) < 1e-4, (cell, float(value), float(expected))
