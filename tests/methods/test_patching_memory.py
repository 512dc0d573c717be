"""A sweep over a 512-token prompt stays within the memory cap a user sets (`memory_mb`).

Peak memory is the process's peak resident set during the sweep (benchmarks/common.py
`peak_memory_mb`), above its size before, measured in a fresh process. The same sweep with a
16x larger cap must use more memory, so the measurement can tell the cap apart from nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from mechscope import HookedModel
from mechscope.core.errors import MechscopeError
from mechscope.methods.patching import patch_sweep

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from common import peak_memory_mb  # noqa: E402

N_POS = 512


def _long_context_model() -> HookedModel:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024)
    return HookedModel(AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval(), name="tiny-llama-1k")


def _measure() -> dict[str, float]:
    """Peak MiB of the 512-token sweep under caps of 24 and 384 MiB, and the largest score difference."""
    model = _long_context_model()
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(4, 90, (1, N_POS), generator=g)
    corrupt = clean.clone()
    corrupt[0, 5:9] = torch.randint(4, 90, (4,), generator=g)
    kw = dict(answer=7, wrong=11, site="resid_pre", by="layer,pos")
    patch_sweep(model, clean[:, :16], corrupt[:, :16], **kw)  # warm up kernels and allocator outside the measurement
    results = {}
    peaks = {cap: peak_memory_mb(lambda cap=cap: results.setdefault(cap, patch_sweep(model, clean, corrupt,
                                                                                    memory_mb=cap, **kw)))
             for cap in (24, 384)}
    assert results[24].shape == (2, N_POS)
    scale = abs(results[24].clean - results[24].corrupt)  # compare in metric units
    return {"peak_24": peaks[24], "peak_384": peaks[384],
            "max_diff": float((results[24].scores - results[384].scores).abs().max()) * scale}


def test_512_token_sweep_stays_within_the_cap():
    # Measured in a fresh process: in a long test session the heap is fragmented by earlier tests,
    # and the resident set then grows by pages unrelated to the sweep.
    code = f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           "import test_patching_memory as t; print(json.dumps(t._measure()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["peak_24"] <= 24 * 1.25, found
    assert found["peak_384"] > found["peak_24"], found
    assert found["max_diff"] < 1e-5, found


def test_a_cap_below_one_row_still_runs_one_row_at_a_time():
    model = _long_context_model()
    clean = torch.randint(4, 90, (1, 64), generator=torch.Generator().manual_seed(1))
    corrupt = clean.flip(-1)
    small = patch_sweep(model, clean, corrupt, answer=7, wrong=11, by="layer,pos", memory_mb=0.01)
    large = patch_sweep(model, clean, corrupt, answer=7, wrong=11, by="layer,pos")
    assert float((small.scores - large.scores).abs().max()) * abs(small.clean - small.corrupt) < 1e-5


@pytest.mark.parametrize("cap", [0, -5])
def test_a_cap_that_is_not_positive_is_refused(cap):
    model = _long_context_model()
    clean = torch.randint(4, 90, (1, 8), generator=torch.Generator().manual_seed(1))
    with pytest.raises(MechscopeError, match="memory_mb must be a positive"):
        patch_sweep(model, clean, clean.flip(-1), answer=7, wrong=11, memory_mb=cap)
