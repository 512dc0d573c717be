"""`target_l0` on the default model: a ReLU-L1 SAE on layer 15's residual stream ends within 10% of the asked L0
on the tokens it trained on."""

from __future__ import annotations

import pytest
import torch

from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.metrics import mean_l0
from mechscope.dictionaries.streaming import iter_site_batches
from mechscope.dictionaries.trainer import Trainer, TrainerConfig


@pytest.mark.slow
def test_target_l0_on_the_default_model(default_model):
    rows = torch.cat(list(iter_site_batches(default_model, "blocks.15.hook_resid_post", source="pydoc", split=None,
                                            batch_size=512, max_tokens=6144)))
    gen = torch.Generator().manual_seed(0)
    rows = rows[torch.randperm(rows.shape[0], generator=gen)]  # held-out tokens drawn from the same texts
    train, held_out = rows[:5120], rows[5120:]
    batches = (train[torch.randint(0, train.shape[0], (256,), generator=gen)] for _ in range(400))
    sae = make_dictionary("relu", d_in=576, d_sae=576, seed=0)
    Trainer(sae, TrainerConfig(total_steps=400, target_l0=20.0, progress=False, log_every=400)).fit(batches)
    with torch.no_grad():
        l0_train, l0_held_out = mean_l0(sae.encode(train)), mean_l0(sae.encode(held_out))
    assert abs(l0_train - 20.0) <= 2.0, l0_train  # measured 19.8
    # 400 steps of 256 over 5,120 tokens are 20 epochs: held-out tokens fire a little more (measured 22.8)
    assert abs(l0_held_out - 20.0) <= 4.0, l0_held_out
