"""Zero, mean and resample ablations, on their own and inside sweeps."""

from __future__ import annotations

import json

import pytest
import torch
from _patching_helpers import ANSWER, WRONG, pair_ids

from mechscope.core import names
from mechscope.core.errors import MechscopeError
from mechscope.methods.interventions import Target, ablate, ablation_sweep
from mechscope.methods.metrics import LogitDiff
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def test_zero_ablation_of_one_head_equals_a_hand_written_hook(model):
    ids, _ = pair_ids()

    def zero_head(act, point):
        act = act.clone()
        act[:, 3, 2] = 0
        return act

    with torch.no_grad():
        expected = model.run_with_hooks(ids, fwd_hooks=[(names.z(1), zero_head)])
    got = ablate(model, ids, [Target(names.z(1), pos=3, head=2)], kind="zero")
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, model(ids), atol=1e-4)


def test_mean_and_resample_ablation_from_reference_prompts(model):
    ids, other = pair_ids()
    with torch.no_grad():
        plain, other_logits = model(ids[:1]), model(other[:1])
    everything = [Target(names.resid_pre(0))]
    # The mean over a one-prompt reference set is that prompt's activation.
    assert torch.allclose(ablate(model, ids[:1], everything, "mean", reference=ids[:1]), plain, atol=1e-5)
    assert torch.allclose(ablate(model, ids[:1], everything, "resample", reference=other[:1]), other_logits, atol=1e-5)
    # Mean over two prompts at layer 0 = the run on the mean embedding.
    mean_embed = model.run_with_cache(other, names=[names.resid_pre(0)])[1][names.resid_pre(0)].mean(0, keepdim=True)
    with torch.no_grad():
        expected = model.run_with_hooks(ids[:1], fwd_hooks=[(names.resid_pre(0), lambda a, p: mean_embed)])
    assert torch.allclose(ablate(model, ids[:1], everything, "mean", reference=other), expected, atol=1e-5)
    flat = ablate(model, ids[:1], everything, "mean", reference=other[:, :4], mean_over="batch_pos")
    assert flat.shape == plain.shape
    with pytest.raises(MechscopeError, match="reference prompts of 7 tokens"):
        ablate(model, ids, everything, "mean", reference=other[:, :4])
    with pytest.raises(MechscopeError, match="needs reference prompts"):
        ablate(model, ids, everything, "resample")
    with pytest.raises(MechscopeError, match="kind must be one of"):
        ablate(model, ids, everything, "noise")


def test_ablation_sweep_equals_one_ablation_per_cell(model, tmp_path):
    ids, other = pair_ids()
    metric = LogitDiff(torch.tensor(ANSWER), torch.tensor(WRONG))
    for kind, reference in (("zero", None), ("resample", other)):
        sweep = ablation_sweep(model, ids, answer=ANSWER, wrong=WRONG, site="z", by="layer,head", kind=kind,
                               reference=reference)
        with torch.no_grad():
            base = float(metric(model(ids)).mean())
        assert sweep.clean == pytest.approx(base, abs=1e-5)
        for layer in range(3):
            for head in range(4):
                logits = ablate(model, ids, [Target(names.z(layer), head=head)], kind, reference=reference)
                assert abs(float(metric(logits).mean().detach()) - base - float(sweep.scores[layer, head])) < 1e-5
    data = json.loads(sweep.to_json(tmp_path / "a.json"))
    assert data["method"] == "resample_ablation" and data["corrupt"] is None
