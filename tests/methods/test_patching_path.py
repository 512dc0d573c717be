"""Path patching against a hand-written three-run oracle and against activation patching."""

from __future__ import annotations

import pytest
import torch
from _patching_helpers import ANSWER, WRONG, pair_ids

from mechscope.core import names
from mechscope.methods.metrics import LogitDiff
from mechscope.methods.patching import patch_sweep
from mechscope.methods.patching.path import path_patch
from tiny_models import tiny_model

KW = dict(answer=ANSWER, wrong=WRONG)


def _oracle(model, clean, corrupt, sender, receiver):
    """Path patching of one head into one head's query/key/value, written out with run_with_hooks."""
    metric = LogitDiff(torch.tensor(ANSWER), torch.tensor(WRONG))
    z_names = [names.z(layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names=z_names)
        _, corrupt_cache = model.run_with_cache(corrupt, names=z_names)
        s_layer, s_head = sender
        r_layer, r_head, which = receiver
        r_name = names.block(r_layer, f"attn.hook_{which}")
        r_index = r_head if which == "q" else r_head // model.cfg.n_kv_groups
        seen = {}

        def freeze(act, point):
            out = corrupt_cache[point.name].clone()
            if point.name == names.z(s_layer):
                out[:, :, s_head] = clean_cache[point.name][:, :, s_head]
            return out

        def record(act, point):
            seen["act"] = act.clone()

        model.run_with_hooks(corrupt, fwd_hooks=[*((n, freeze) for n in z_names), (r_name, record)])

        def patch(act, point):
            out = act.clone()
            out[:, :, r_index] = seen["act"][:, :, r_index]
            return out

        patched = metric(model.run_with_hooks(corrupt, fwd_hooks=[(r_name, patch)])).mean()
        c, k = metric(model(clean)).mean(), metric(model(corrupt)).mean()
    return float((patched - k) / (c - k))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_path_patching_matches_the_three_run_oracle(kind):
    model = tiny_model(kind)
    clean, corrupt = pair_ids()
    receivers = [(2, 1, "q"), (2, 3, "v")]
    result = path_patch(model, clean, corrupt, receivers=[receivers[0]], memory_mb=0.02, **KW)
    assert result.by == ("layer", "head") and result.shape == (3, 4)
    for layer in range(2):
        for head in range(4):
            expected = _oracle(model, clean, corrupt, (layer, head), receivers[0])
            assert abs(float(result.scores[layer, head]) - expected) < 1e-4
    # Senders at or after the receiver's layer cannot reach it.
    assert torch.equal(result.scores[2], torch.zeros(4))
    single = path_patch(model, clean, corrupt, receivers=[receivers[1]], senders=[(0, 2), (1, 0)], **KW)
    assert single.labels == [["0.2", "1.0"]]
    assert abs(float(single.scores[1]) - _oracle(model, clean, corrupt, (1, 0), receivers[1])) < 1e-4


def test_last_layer_direct_path_equals_activation_patching():
    model = tiny_model("llama")
    clean, corrupt = pair_ids()
    direct = path_patch(model, clean, corrupt, receivers=["resid"], **KW)
    heads = patch_sweep(model, clean, corrupt, site="z", by="layer,head", **KW)
    # In the last layer nothing downstream can be frozen away: the direct path is the whole effect.
    assert torch.allclose(direct.scores[-1], heads.scores[-1], atol=1e-5)
    # The same holds for the last MLP, with every other MLP frozen as well.
    mlp = path_patch(model, clean, corrupt, receivers=["resid"], senders=[("mlp", 2)], freeze_mlps=True, **KW)
    mlp_act = patch_sweep(model, clean, corrupt, site="mlp_out", by="layer", **KW)
    assert abs(float(mlp.scores[0]) - float(mlp_act.scores[2])) < 1e-5


def test_receivers_in_different_layers_do_not_depend_on_chunking():
    model = tiny_model("llama")
    clean, corrupt = pair_ids()
    receivers = [(1, 1, "q"), "resid"]
    one_pass = path_patch(model, clean, corrupt, receivers=receivers, memory_mb=512, **KW)
    # A tiny memory budget puts each sender in its own chunk; a chunk of layer-1 senders starts
    # after the layer-1 receiver, whose input is then the corrupted run's.
    chunked = path_patch(model, clean, corrupt, receivers=receivers, memory_mb=0.02, **KW)
    assert torch.allclose(one_pass.scores, chunked.scores, atol=1e-5)
    assert one_pass.scores.abs().sum() > 0
