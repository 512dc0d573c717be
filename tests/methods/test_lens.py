"""Logit lens: exact at the last layer, rank/probability bookkeeping, JSON layout."""

from __future__ import annotations

import pytest
import torch

from mechscope.core.errors import HookNameError, MechscopeError
from mechscope.methods.lens import iter_lens_logits, lens_sites, logit_lens
from mechscope.methods.metrics import kl_divergence
from tiny_models import tiny_ids, tiny_model


def test_final_row_equals_model_logits(tiny):
    ids = tiny_ids(2, 9)
    rows = list(iter_lens_logits(tiny, ids))
    name, last, final = rows[-1]
    assert name == f"blocks.{tiny.cfg.n_layers - 1}.hook_resid_post"
    expected = tiny(ids)
    torch.testing.assert_close(last, expected, atol=1e-5, rtol=0, msg="logit lens at the final layer != logits")
    torch.testing.assert_close(final, expected, atol=1e-5, rtol=0)
    # earlier rows are genuinely different reads of the stream
    assert (rows[0][1] - expected).abs().max() > 1e-3


def test_sites_layers_and_sublayers():
    model = tiny_model("llama")
    rows = lens_sites(model, "layers")
    assert rows == [f"blocks.{i}.hook_resid_pre" for i in range(3)] + ["blocks.2.hook_resid_post"]
    sub = lens_sites(model, "sublayers")
    assert sub[:3] == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre"]
    assert len(sub) == 2 * 3 + 1
    parallel = tiny_model("gpt_neox")  # parallel attention/MLP: no resid_mid
    assert len(lens_sites(parallel, "sublayers")) == 3 + 1
    assert lens_sites(model, ["blocks.1.hook_resid_post", "blocks.0.hook_resid_mid"]) == [
        "blocks.0.hook_resid_mid", "blocks.1.hook_resid_post"]
    with pytest.raises(HookNameError):
        lens_sites(model, ["blocks.9.hook_resid_pre"])
    with pytest.raises(MechscopeError):
        lens_sites(model, ["blocks.0.attn.hook_z"])


def test_rank_prob_and_top_are_consistent():
    model = tiny_model("gemma2")  # final soft-cap and tied embeddings
    ids = tiny_ids(1, 7)
    logits = model(ids)[0]
    top_final = int(logits[-1].argmax())
    bottom_final = int(logits[-1].argmin())
    result = logit_lens(model, ids, k=4, targets=[top_final, bottom_final])
    assert result.top_ids.shape == (len(result.layers), 7, 4)
    labels = list(result.target_rank)
    assert result.target_rank[labels[0]][-1, -1].item() == 0
    assert result.target_rank[labels[1]][-1, -1].item() == logits.shape[-1] - 1
    probs = torch.softmax(logits[-1], dim=-1)
    assert result.target_prob[labels[0]][-1, -1].item() == pytest.approx(probs[top_final].item(), abs=1e-6)
    assert result.top_ids[-1, -1, 0].item() == top_final
    # rank agrees with the top-k list wherever the target appears in it
    for row in range(len(result.layers)):
        for pos in range(7):
            rank = int(result.target_rank[labels[0]][row, pos])
            if rank < 4:
                assert result.top_ids[row, pos, rank].item() == top_final
    assert result.kl_to_final[-1].abs().max() < 1e-5
    assert (result.kl_to_final[0] > 1e-4).all()


def test_json_layout():
    model = tiny_model("gpt2")
    result = logit_lens(model, tiny_ids(1, 5), k=3, targets=[5])
    data = result.to_json()
    assert {"layers", "tokens", "top", "targets", "provenance"} <= set(data)
    assert len(data["top"]) == len(data["layers"]) and len(data["top"][0]) == 5 and len(data["top"][0][0]) == 3
    token, prob = data["top"][0][0][0]
    assert isinstance(token, str) and 0 <= prob <= 1
    target = data["targets"]["5"]
    assert len(target["rank"]) == len(data["layers"]) and len(target["prob"][0]) == 5
    assert data["provenance"]["lens"] == "logit"


def test_batch_of_prompts_is_refused():
    with pytest.raises(MechscopeError, match="one prompt"):
        logit_lens(tiny_model("llama"), tiny_ids(2, 5))


def test_kl_divergence_hand_value():
    p = torch.tensor([0.0, 0.0])  # uniform over two tokens
    q = torch.log(torch.tensor([0.9, 0.1]))
    expected = 0.5 * (torch.log(torch.tensor(0.5 / 0.9)) + torch.log(torch.tensor(0.5 / 0.1)))
    assert kl_divergence(p, q).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.slow
def test_default_model_final_layer_and_paris(default_model):
    prompt = "The Eiffel Tower is in the city of"
    result = logit_lens(default_model, prompt, targets=[" Paris"])
    logits = default_model(prompt)
    final_probs = torch.softmax(logits[0, -1].float(), dim=-1)
    assert result.target_prob[" Paris"][-1, -1].item() == pytest.approx(final_probs[default_model.to_single_token(" Paris")].item(), abs=1e-5)
    assert result.target_rank[" Paris"][-1, -1].item() == 0
    assert result.target_rank[" Paris"][0, -1].item() > 100  # the embedding alone does not predict it
    *_, (name, last, final) = iter_lens_logits(default_model, prompt)
    torch.testing.assert_close(last, logits, atol=1e-5, rtol=0)
