"""BatchTopK's per-token warm-up: TopK's selection (exactly `k` per token, threshold untouched) for the
first `per_token_warmup` fraction of the Trainer's steps, batch selection afterwards."""

from __future__ import annotations

import torch

from mechscope.dictionaries.base import make_dictionary
from mechscope.dictionaries.synthetic import SyntheticData


def _sae(warmup: float):
    return make_dictionary("batchtopk", d_in=32, d_sae=64, seed=0, k=3, per_token_warmup=warmup)


def test_warmup_selects_per_token_and_leaves_the_threshold():
    sae = _sae(0.5)
    sae.train()
    x = SyntheticData(seed=0).sample(256)
    sae.training_progress = 0.2
    out = sae(x)
    per_token = torch.bincount(out.sparse_acts.rows, minlength=256)
    assert int(per_token.max()) <= 3 and float(sae.threshold) == -1.0
    sae.after_optimizer_step()
    assert float(sae.threshold) == -1.0  # not tracked during the warm-up

    sae.training_progress = 0.5
    out = sae(x)
    per_token = torch.bincount(out.sparse_acts.rows, minlength=256)
    assert int(per_token.max()) > 3  # batch selection: some tokens take more than k
    assert abs(int(per_token.sum()) - 3 * 256) <= 3 * 256 * 0.01 + 1
    sae.after_optimizer_step()
    assert float(sae.threshold) > 0


def test_outside_the_trainer_there_is_no_warmup():
    sae = _sae(0.6)
    sae.train()
    out = sae(SyntheticData(seed=0).sample(256))
    assert int(torch.bincount(out.sparse_acts.rows, minlength=256).max()) > 3
