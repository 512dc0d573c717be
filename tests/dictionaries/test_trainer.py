"""Trainer: schedules, initialisation, dead latents, logs, checkpoints and bit-identical resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mechscope.dictionaries import CheckpointError, DictionaryConfigError, make_dictionary
from mechscope.dictionaries.checkpoint import list_checkpoints
from mechscope.dictionaries.errors import TrainingDivergedError
from mechscope.dictionaries.initialisation import geometric_median
from mechscope.dictionaries.metrics import fixed_norm_scale, mean_l0
from mechscope.dictionaries.resampling import resample_dead_latents
from mechscope.dictionaries.schedule import L0Controller
from mechscope.dictionaries.synthetic import SyntheticData
from mechscope.dictionaries.trainer import Trainer, TrainerConfig


def _stream(n: int, batch: int = 64, d: int = 8, seed: int = 0, pairs: bool = False):
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(24, d, generator=gen)
    for _ in range(n):
        codes = torch.rand(batch, 24, generator=gen) * (torch.rand(batch, 24, generator=gen) < 0.15)
        x = codes @ basis + 3.0
        yield (x, x[:, :5] * 2.0) if pairs else x


def _make(arch: str, **kw):
    extra = {"k": 3} if "topk" in arch else {}
    return make_dictionary(arch, d_in=8, d_sae=32, seed=0, **{**extra, **kw})


def test_lr_and_sparsity_schedules():
    cfg = TrainerConfig(total_steps=100, lr=1.0, lr_warmup_steps=10, lr_decay_fraction=0.2, sparsity_warmup_steps=4)
    assert [cfg.lr_at(s) for s in (0, 4, 9, 50, 80, 90, 99)] == pytest.approx([0.1, 0.5, 1.0, 1.0, 1.0, 0.5, 0.05])
    assert [cfg.sparsity_scale_at(s) for s in (0, 1, 3, 50)] == [0.25, 0.5, 1.0, 1.0]
    with pytest.raises(DictionaryConfigError):
        TrainerConfig(total_steps=10, checkpoint_every=5)  # no checkpoint_dir


def test_geometric_median_is_robust_and_exact_on_symmetric_points():
    square = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) + 5.0
    torch.testing.assert_close(geometric_median(square), torch.tensor([5.0, 5.0]))
    pts = torch.cat([torch.zeros(9, 3), torch.full((1, 3), 1000.0)])
    assert geometric_median(pts).norm() < 1e-2 < pts.mean(0).norm()


def test_initialisation_sets_scale_and_decoder_bias():
    sae = _make("relu")
    batches = list(_stream(6))
    Trainer(sae, TrainerConfig(total_steps=1, lr=1e-12, progress=False, init_batches=2, b_dec_init="mean")).fit(batches)
    sample = torch.cat(batches[:2])
    assert sae.cfg.input_scale == pytest.approx(fixed_norm_scale(sample))
    assert (sample * sae.cfg.input_scale).norm(dim=1).mean() == pytest.approx(8 ** 0.5)
    torch.testing.assert_close(sae.b_dec.detach(), (sample * sae.cfg.input_scale).mean(0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_training_reduces_loss_and_logs_jsonl(arch, tmp_path):
    sae = _make(arch)
    log = tmp_path / "log.jsonl"
    cfg = TrainerConfig(total_steps=60, lr=3e-3, progress=False, log_every=20, log_path=str(log))
    with torch.no_grad():
        first = next(_stream(1, seed=5))
    result = Trainer(sae, cfg).fit(_stream(60))
    assert result.steps == 60
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40, 60]
    assert {"l0", "explained_variance", "dead_fraction", "mse", "lr"} <= set(rows[-1])
    assert rows[-1]["mse"] < rows[0]["mse"]
    assert rows[-1]["explained_variance"] > 0.3
    with torch.no_grad():
        assert sae(first).losses["mse"] < sae.cfg.d_in  # better than predicting the mean (EV > 0)


def test_transcoder_trains_on_pairs():
    tc = _make("relu", d_out=5, hook_name_out="blocks.0.hook_mlp_out", l1_coefficient=0.3)
    cfg = TrainerConfig(total_steps=300, lr=3e-3, progress=False, log_every=300)
    result = Trainer(tc, cfg).fit(_stream(300, pairs=True))
    assert result.metrics["explained_variance"] > 0.5
    assert tc.cfg.output_scale != tc.cfg.input_scale  # targets scaled on their own


def test_dead_latents_get_aux_k_gradient():
    sae = _make("topk")
    trainer = Trainer(sae, TrainerConfig(total_steps=1, progress=False, dead_window_tokens=10))
    trainer.tokens_since_fired[:16] = 100  # mark half the latents dead
    x = next(_stream(1))
    out = sae(x, dead_mask=trainer.tokens_since_fired >= 10)
    assert float(out.losses["aux_k"].detach()) > 0
    out.losses["aux_k"].backward()
    assert sae.W_enc.grad[:, :16].abs().sum() > 0 and sae.W_enc.grad[:, 16:].abs().sum() == 0


def test_resampling_revives_dead_latents():
    sae = _make("relu", l1_coefficient=0.1)
    with torch.no_grad():
        sae.b_enc[:8] = -1e4  # never fire
    cfg = TrainerConfig(total_steps=20, lr=1e-3, progress=False, dead_window_tokens=256, resample_every=10)
    trainer = Trainer(sae, cfg)
    trainer.fit(_stream(20))
    assert float(sae.b_enc.detach()[:8].min()) > -1e3  # re-initialised (b_enc = 0, then trained)
    assert int((trainer.tokens_since_fired[:8] < 256).sum()) == 8


def test_resampling_resets_jumprelu_thresholds_and_gated_magnitudes():
    """A resampled JumpReLU latent fires on the token it was drawn from (its old threshold would
    keep it silent); a resampled Gated latent's magnitude path restarts at r_mag = b_mag = 0; their
    Adam moments are cleared."""
    x = next(_stream(1, batch=64))
    for arch in ("jumprelu", "gated"):
        sae = _make(arch)
        sae.cfg.input_scale = sae.cfg.output_scale = float(fixed_norm_scale(x))
        opt = torch.optim.Adam(sae.parameters())
        sae(x).loss.backward()
        opt.step()
        dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
        dead[:3] = True
        with torch.no_grad():
            if arch == "jumprelu":
                sae.log_threshold[:3] = math.log(1e3)
            else:
                sae.r_mag[:3], sae.b_mag[:3] = -4.0, -50.0
        assert resample_dead_latents(sae, opt, dead, x, None, torch.Generator().manual_seed(0)) == 3
        extra = sae.log_threshold if arch == "jumprelu" else sae.b_mag
        assert float(opt.state[extra]["exp_avg"][:3].abs().max()) == 0.0
        assert float(opt.state[extra]["exp_avg"][3:].abs().max()) > 0.0  # the others keep theirs
        if arch == "jumprelu":
            assert float(sae.threshold.detach()[:3].max()) < 1e3
            assert bool((sae.encode(x)[:, :3] > 0).any(0).all()), "each resampled latent fires on the batch"
        else:
            assert float(sae.r_mag.detach()[:3].abs().max()) == 0.0 and float(sae.b_mag.detach()[:3].abs().max()) == 0.0


def test_nan_inputs_are_rejected():
    bad = [torch.full((64, 8), float("nan"))] * 3
    with pytest.raises(DictionaryConfigError, match="NaN"):
        Trainer(_make("relu"), TrainerConfig(total_steps=3, progress=False)).fit(bad)


def _fresh(arch: str, ckpt_dir, total: int, **kw):
    cfg = TrainerConfig(total_steps=total, lr=3e-3, lr_warmup_steps=3, sparsity_warmup_steps=5, progress=False,
                        dead_window_tokens=200, resample_every=4, checkpoint_dir=str(ckpt_dir),
                        checkpoint_every=kw.pop("every", None), seed=7, **kw)
    return Trainer(_make(arch), cfg)


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_resumed_run_is_bit_identical_to_uninterrupted(arch, tmp_path):
    n = 12
    straight = _fresh(arch, tmp_path / "a", 2 * n)
    straight.fit(_stream(2 * n))

    interrupted = _fresh(arch, tmp_path / "b", 2 * n, every=n)
    interrupted.fit(_stream(n))  # the stream ends after n steps: a killed run
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == [f"step_{n:08d}"]
    assert {p.suffix for p in (tmp_path / "b" / f"step_{n:08d}").iterdir()} == {".safetensors", ".json"}

    resumed = _fresh(arch, tmp_path / "b", 2 * n, every=n)  # new objects, as in a new process
    resumed.fit(_stream(2 * n), resume_from=tmp_path / "b")
    assert resumed.step == 2 * n
    a, b = straight.dictionary.state_dict(), resumed.dictionary.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{arch}: {name} differs after resume"
    assert torch.equal(straight.tokens_since_fired, resumed.tokens_since_fired)
    assert straight.dictionary.cfg.input_scale == resumed.dictionary.cfg.input_scale


def test_existing_checkpoints_are_not_overwritten(tmp_path):
    _fresh("relu", tmp_path, 4, every=2).fit(_stream(4))
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        _fresh("relu", tmp_path, 4, every=2).fit(_stream(4))


def test_resume_checks_the_dictionary_shape(tmp_path):
    _fresh("relu", tmp_path, 4, every=2).fit(_stream(4))
    other = Trainer(make_dictionary("relu", d_in=8, d_sae=16), TrainerConfig(total_steps=4, progress=False))
    with pytest.raises(CheckpointError, match="d_sae"):
        other.fit(_stream(4), resume_from=tmp_path)


def _checkpointed(tmp_path):
    _fresh("relu", tmp_path, 4, every=2).fit(_stream(4))
    return tmp_path / "step_00000004"


def _zero_block(path):
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + 16: header + 80] = bytes(64)  # inside the tensor data: the header still parses
    path.write_bytes(bytes(data))


def _drop_key(path):
    state = json.loads(path.read_text())
    del state["tokens_since_fired"]
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("damage,file,message", [
    (_zero_block, "dictionary.safetensors", "dictionary.safetensors is damaged: its sha256 differs"),
    (_drop_key, "state.json", "state.json is incomplete: missing tokens_since_fired"),
    (lambda p: p.write_text(p.read_text()[:100]), "state.json", "state.json is unreadable or truncated"),
    (lambda p: p.unlink(), "optimizer.safetensors", "optimizer.safetensors is missing"),
])
def test_damaged_checkpoint_gives_one_clear_line(tmp_path, damage, file, message):
    folder = _checkpointed(tmp_path)
    damage(folder / file)
    with pytest.raises(CheckpointError, match=message) as info:
        _fresh("relu", tmp_path, 8, every=2).fit(_stream(8), resume_from=tmp_path)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_resume_with_other_settings_lists_them_and_refuses_unless_allowed(tmp_path):
    _checkpointed(tmp_path)
    with pytest.raises(CheckpointError, match=r"settings differ .*lr 0\.003 -> 0\.01") as info:
        trainer = Trainer(_make("relu"), TrainerConfig(
            total_steps=4, lr=1e-2, lr_warmup_steps=3, sparsity_warmup_steps=5, progress=False, dead_window_tokens=200,
            resample_every=4, checkpoint_dir=str(tmp_path), checkpoint_every=2, seed=7))
        trainer.fit(_stream(4), resume_from=tmp_path)
    assert "\n" not in str(info.value)
    trainer.fit(_stream(4), resume_from=tmp_path, allow_changes=True)
    assert trainer.step == 4


def test_divergence_names_the_step_and_keeps_the_last_checkpoint(tmp_path):
    batches = list(_stream(10))
    batches[6] = batches[6].clone()
    batches[6][3, 2] = float("inf")
    trainer = _fresh("relu", tmp_path, 10, every=2)
    with pytest.raises(TrainingDivergedError, match="step 6: the loss is .*NaN or Inf activations") as info:
        trainer.fit(batches)
    assert "step_00000006" in str(info.value) and "\n" not in str(info.value)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004", "step_00000006"]


def test_target_l0_needs_a_penalty_architecture():
    with pytest.raises(DictionaryConfigError, match="sets its L0 with k"):
        Trainer(_make("topk"), TrainerConfig(total_steps=3, target_l0=4.0))


@pytest.mark.parametrize("arch", ["relu", pytest.param("jumprelu", marks=pytest.mark.slow),
                                  pytest.param("gated", marks=pytest.mark.slow)])
def test_target_l0_ends_within_ten_percent_on_synthetic_data(arch):
    """The controller steers the coefficient from its default; the L0 is measured in eval mode on fresh data."""
    data = SyntheticData(seed=1, true_l0=4.0)
    sae = make_dictionary(arch, d_in=data.d_model, d_sae=128, seed=1)
    trainer = Trainer(sae, TrainerConfig(total_steps=800, target_l0=4.0, progress=False, log_every=800))
    trainer.fit(data.batches(256, 800))
    sae.eval()
    with torch.no_grad():
        l0 = mean_l0(sae.encode(data.sample(4096)))
    assert abs(l0 - 4.0) <= 0.4, (arch, l0)
    name = sae.cfg.sparsity_coefficient
    assert getattr(sae.cfg, name) != getattr(type(sae.cfg), name)  # the coefficient reached is the one saved


def test_l0_controller_law():
    c = L0Controller(target=10.0, gain=0.5)
    assert c.update(10.0) == 1.0  # on target: unchanged
    assert c.update(20.0) == pytest.approx(math.exp(0.1))  # 0.5 * log 2 = 0.35, bounded to 0.1
    assert c.update(10.0 * math.exp(-0.1)) == pytest.approx(math.exp(0.05))
    assert c.update(0.0) == pytest.approx(math.exp(-0.05))  # nothing fires: floor at target/20, finite
