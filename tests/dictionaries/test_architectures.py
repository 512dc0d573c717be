"""Architectures: shared interface, config validation, registry, and each forward/backward against
a hand-written dense reference (float64, tolerance 1e-10 unless stated)."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.topk_sae import calculate_topk_aux_acts

from mechscope.dictionaries import (
    DictionaryConfigError,
    available_architectures,
    make_dictionary,
)
from mechscope.dictionaries.jumprelu import JumpReLUFunction, StepFunction

ARCHS = ["batchtopk", "gated", "jumprelu", "relu", "topk"]
REGISTERED = ["batchtopk", "clt", "gated", "jumprelu", "relu", "topk"]  # + the cross-layer transcoder


def _make(arch: str, **kw):
    extra = {"k": 4} if "topk" in arch else {}
    return make_dictionary(arch, d_in=10, d_sae=24, seed=0, dtype="float64", **{**extra, **kw})


def _perturb(d, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in d.named_parameters():
            if name.startswith("b_") or name == "r_mag":
                p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def test_registry_lists_every_family_and_suggests_names():
    assert available_architectures() == REGISTERED
    with pytest.raises(DictionaryConfigError, match="Did you mean: 'topk'"):
        make_dictionary("topkk", d_in=4, d_sae=8)


@pytest.mark.parametrize("bad", [
    dict(d_in=0, d_sae=8), dict(d_in=4, d_sae=-1), dict(d_in=4, d_sae=8, input_scale=float("nan")),
    dict(d_in=4, d_sae=8, decoder_norm="sphere"), dict(d_in=4, d_sae=8, d_out=3, apply_b_dec_to_input=True),
    dict(d_in=4, d_sae=8, dtype="int8"), dict(d_in=4, d_sae=8, l1_coefficient=-1.0),
])
def test_relu_config_validates(bad):
    with pytest.raises(DictionaryConfigError):
        make_dictionary("relu", **bad)


@pytest.mark.parametrize("arch,bad", [("topk", dict(k=0)), ("topk", dict(k=99)), ("batchtopk", dict(threshold_lr=0.0)),
                                      ("jumprelu", dict(bandwidth=0.0)), ("gated", dict(decoder_norm="free"))])
def test_family_configs_validate(arch, bad):
    with pytest.raises(DictionaryConfigError):
        make_dictionary(arch, d_in=4, d_sae=8, **bad)


@pytest.mark.parametrize("arch", ARCHS)
def test_interface_shapes_and_width_errors(arch):
    d = _make(arch)
    x = torch.randn(6, 10, dtype=torch.float64)
    out = d(x)
    assert out.reconstruction.shape == (6, 10) and out.feature_acts.shape == (6, 24)
    assert out.firing_counts.shape == (24,) and out.loss.ndim == 0 and "mse" in out.losses
    assert torch.equal(out.fired, out.firing_counts > 0) and bool(out.fired.any())
    assert float(out.l0) == pytest.approx(float((out.feature_acts > 0).sum()) / 6)
    assert torch.allclose(out.loss, sum(out.losses.values()))
    d.eval()
    torch.testing.assert_close(d.decode(d.encode(x)), d(x).reconstruction)
    with pytest.raises(DictionaryConfigError, match=r"\[batch, 10\]"):
        d.encode(torch.randn(6, 11, dtype=torch.float64))


@pytest.mark.parametrize("arch", ARCHS)
def test_input_scale_keeps_model_units(arch):
    """A dictionary with input_scale s on x equals the unscaled one on s*x, divided by s."""
    plain, scaled = _make(arch), _make(arch, input_scale=3.0)
    _perturb(plain)
    scaled.load_state_dict(plain.state_dict())
    plain.eval(), scaled.eval()
    x = torch.randn(5, 10, dtype=torch.float64)
    torch.testing.assert_close(scaled(x).reconstruction, plain(3.0 * x).reconstruction / 3.0)
    torch.testing.assert_close(scaled.encode(x), plain.encode(3.0 * x))


def test_relu_loss_matches_formula_both_decoder_norms():
    for norm in ("unit", "weighted"):
        d = _make("relu", decoder_norm=norm, l1_coefficient=0.7)
        _perturb(d)
        with torch.no_grad():
            d.W_dec.mul_(torch.linspace(0.5, 2.0, 24, dtype=torch.float64)[:, None])
        x = torch.randn(8, 10, dtype=torch.float64)
        f = torch.relu((x - d.b_dec) @ d.W_enc + d.b_enc)
        x_hat = f @ d.W_dec + d.b_dec
        w = d.W_dec.norm(dim=1) if norm == "weighted" else torch.ones(24, dtype=torch.float64)
        out = d(x, sparsity_scale=0.5)
        torch.testing.assert_close(out.losses["mse"], ((x_hat - x) ** 2).sum(-1).mean())
        torch.testing.assert_close(out.losses["l1"], 0.7 * 0.5 * (f * w).sum(-1).mean())


def test_unit_norm_decoder_stays_on_the_sphere_after_steps():
    d = _make("relu", decoder_norm="unit")
    opt = torch.optim.Adam(d.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        d(torch.randn(16, 10, dtype=torch.float64)).loss.backward()
        d.before_optimizer_step()
        row_grad_along = (d.W_dec.grad * d.W_dec).sum(1)
        assert row_grad_along.abs().max() < 1e-12
        opt.step()
        d.after_optimizer_step()
    torch.testing.assert_close(d.W_dec.norm(dim=1), torch.ones(24, dtype=torch.float64))


def _dense_topk_reference(d, x, dead=None):
    pre = (x - d.b_dec) @ d.W_enc + d.b_enc
    vals, idx = pre.topk(d.cfg.k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    x_hat = f @ d.W_dec + d.b_dec
    loss = ((x_hat - x) ** 2).sum(-1).mean()
    if dead is not None:
        resid = (x - x_hat).detach()
        k_aux = min(d.cfg.aux_k, int(dead.sum()))
        # AuxK on raw pre-activations, built by SAELens's own helper (no ReLU: negative values count)
        e_hat = calculate_topk_aux_acts(k_aux, pre, dead) @ d.W_dec
        denom = ((resid - resid.mean(0)) ** 2).sum(-1).mean()
        loss = loss + d.cfg.aux_k_coefficient * ((e_hat - resid) ** 2).sum(-1).mean() / denom
    return loss, x_hat


@pytest.mark.parametrize("with_dead", [False, True])
def test_topk_sparse_kernels_match_dense_autograd(with_dead):
    d = _make("topk", aux_k=3)
    _perturb(d)
    x = torch.randn(16, 10, dtype=torch.float64)
    dead = torch.zeros(24, dtype=torch.bool)
    dead[::3] = True
    mask = dead if with_dead else None
    ref_loss, ref_xhat = _dense_topk_reference(d, x, mask)
    ref_grads = torch.autograd.grad(ref_loss, list(d.parameters()))
    out = d(x, dead_mask=mask)
    grads = torch.autograd.grad(out.loss, list(d.parameters()))
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.reconstruction, ref_xhat, atol=1e-10, rtol=0)
    for (name, _), g, r in zip(d.named_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=0, msg=lambda m, n=name: f"grad of {n}: {m}")
    assert int(out.l0) == 4 and int(out.firing_counts.sum()) == int((out.feature_acts > 0).sum())


def test_batchtopk_trains_batchwise_and_evaluates_with_its_threshold():
    d = _make("batchtopk", threshold_lr=0.5)
    _perturb(d)
    x = torch.randn(16, 10, dtype=torch.float64)
    out = d(x)
    per_token = (out.feature_acts > 0).sum(-1)
    assert int(per_token.sum()) == 4 * 16 and per_token.min() != per_token.max()
    kept_min = out.feature_acts.detach()[out.feature_acts.detach() > 0].min()
    d.after_optimizer_step()
    assert float(d.threshold) == pytest.approx(float(kept_min))  # the first batch sets it
    d(x)
    d.after_optimizer_step()
    assert float(d.threshold) == pytest.approx(float(kept_min))  # same batch, same minimum
    d.eval()
    pre = (x - d.b_dec) @ d.W_enc + d.b_enc
    # the smallest kept value equals the threshold: rounding decides it, so compare away from it
    away = (pre - d.threshold).abs() > 1e-9
    torch.testing.assert_close(d.encode(x)[away], (pre * (pre > d.threshold))[away])


def test_jumprelu_straight_through_gradients_match_formula():
    pre = torch.tensor([[0.30, 0.52, 1.0], [0.49, 0.10, 0.56]], dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64, requires_grad=True)
    eps = 0.1
    out = JumpReLUFunction.apply(pre, theta, eps)
    torch.testing.assert_close(out.detach(), torch.tensor([[0.0, 0.52, 1.0], [0.0, 0.0, 0.56]], dtype=torch.float64))
    out.sum().backward()
    # K((pre - theta)/eps) = 1 for |pre - theta| < 0.05: entries (0,1) 0.52, (1,0) 0.49; d/dtheta = -(theta/eps) * K
    torch.testing.assert_close(theta.grad, torch.tensor([-5.0, -5.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(pre.grad, torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64))
    theta.grad = None
    StepFunction.apply(pre, theta, eps).sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([-10.0, -10.0, 0.0], dtype=torch.float64))


def test_jumprelu_loss_is_mse_plus_l0():
    d = _make("jumprelu", l0_coefficient=0.3)
    _perturb(d)
    x = torch.randn(8, 10, dtype=torch.float64)
    pre = (x - d.b_dec) @ d.W_enc + d.b_enc
    fires = pre > d.threshold
    out = d(x)
    unit = (x - d.b_dec).pow(2).mean()  # the squared error per dimension of an empty code
    torch.testing.assert_close(out.losses["l0"], 0.3 * unit * fires.sum(-1).double().mean())
    assert float(out.l0) == pytest.approx(float(fires.sum(-1).double().mean()))


def test_gated_losses_match_formula():
    d = _make("gated", l1_coefficient=0.4)
    _perturb(d)
    x = torch.randn(8, 10, dtype=torch.float64)
    z = (x - d.b_dec) @ d.W_enc
    pi_gate, pi_mag = z + d.b_enc, z * d.r_mag.exp() + d.b_mag
    f = (pi_gate > 0) * pi_mag.relu()
    out = d(x)
    torch.testing.assert_close(out.feature_acts, f)
    torch.testing.assert_close(out.losses["l1"], 0.4 * pi_gate.relu().sum(-1).mean())
    torch.testing.assert_close(out.losses["aux"], ((pi_gate.relu() @ d.W_dec + d.b_dec - x) ** 2).sum(-1).mean())


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_transcoder_needs_target_and_predicts_other_width(arch):
    d = _make(arch, d_out=7, hook_name_out="blocks.0.hook_mlp_out")
    assert d.cfg.is_transcoder and d.cfg.apply_b_dec_to_input is False
    x, y = torch.randn(5, 10, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    with pytest.raises(DictionaryConfigError, match="target"):
        d(x)
    out = d(x, y)
    assert out.reconstruction.shape == (5, 7)
    torch.testing.assert_close(out.losses["mse"], ((out.reconstruction - y) ** 2).sum(-1).mean())


@pytest.mark.parametrize("norm", ["unit", "weighted"])
def test_relu_fused_l1_gradients_match_plain_autograd(norm):
    d = _make("relu", decoder_norm=norm, l1_coefficient=0.7)
    _perturb(d)
    with torch.no_grad():
        d.W_dec.mul_(torch.linspace(0.5, 2.0, 24, dtype=torch.float64)[:, None])
    x = torch.randn(8, 10, dtype=torch.float64)
    f = torch.relu((x - d.b_dec) @ d.W_enc + d.b_enc)
    w = d.W_dec.norm(dim=1) if norm == "weighted" else torch.ones(24, dtype=torch.float64)
    ref = ((f @ d.W_dec + d.b_dec - x) ** 2).sum(-1).mean() + 0.7 * 0.5 * (f * w).sum(-1).mean()
    ref_grads = torch.autograd.grad(ref, list(d.parameters()))
    out = d(x, sparsity_scale=0.5)
    torch.testing.assert_close(out.loss, ref, atol=1e-10, rtol=0)
    for (name, _), g, r in zip(d.named_parameters(), torch.autograd.grad(out.loss, list(d.parameters())), ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=0, msg=lambda m, n=name: f"grad of {n}: {m}")


@pytest.mark.parametrize("skewed", [False, True])
def test_batchtopk_selection_equals_a_full_sort(skewed):
    """Candidates per token + a batch threshold pick exactly the k*batch largest (a skewed token takes the fallback)."""
    d = make_dictionary("batchtopk", d_in=8, d_sae=200, k=4, seed=0)
    pre = torch.randn(64, 200, generator=torch.Generator().manual_seed(1))
    if skewed:
        pre[5] += 10.0  # this token alone holds more winners than its 4k = 16 candidates
    rows, cols, vals = d._select(pre)
    assert torch.all(rows[1:] >= rows[:-1])
    flat = pre.relu().reshape(-1)
    top = flat.topk(4 * 64).indices
    want = {(int(i) // 200, int(i) % 200) for i in top if flat[i] > 0}
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == want
    torch.testing.assert_close(vals, pre[rows, cols])
    assert (int((rows == 5).sum()) > 16) == skewed
