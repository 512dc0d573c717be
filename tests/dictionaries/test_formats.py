"""SAELens on-disk layout: files written here load in SAELens with the same outputs, and back.

Tolerance: 1e-5 absolute on activations of order 1 (float32; folding the input scale into the
weights changes rounding only).
"""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.dictionaries import DictionaryFormatError, make_dictionary
from mechscope.dictionaries.formats import CFG_FILE, WEIGHTS_FILE, load_dictionary, save_dictionary

sae_lens = pytest.importorskip("sae_lens")

D_IN, D_SAE = 12, 40

CASES = {
    "relu": dict(architecture="relu", decoder_norm="weighted"),
    "relu-unit": dict(architecture="relu"),
    "topk": dict(architecture="topk", k=5),
    "batchtopk": dict(architecture="batchtopk", k=5),
    "jumprelu": dict(architecture="jumprelu"),
    "gated": dict(architecture="gated"),
    "relu-transcoder": dict(architecture="relu", d_out=9, hook_name_out="blocks.1.hook_mlp_out"),
    "jumprelu-transcoder": dict(architecture="jumprelu", d_out=9, hook_name_out="blocks.1.hook_mlp_out"),
}


def _randomised(case: str):
    kwargs = dict(CASES[case])
    arch = kwargs.pop("architecture")
    d = make_dictionary(arch, d_in=D_IN, d_sae=D_SAE, seed=1, hook_name="blocks.1.hook_resid_post",
                        model_name="tiny-test", input_scale=2.5, output_scale=0.7 if "transcoder" in case else None,
                        **kwargs)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in d.named_parameters():
            if name.startswith("b_") or name in ("r_mag",):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        if arch == "jumprelu":
            d.log_threshold.copy_(torch.log(0.05 + 0.2 * torch.rand(D_SAE, generator=gen)))
        if arch == "batchtopk":
            d.threshold.fill_(0.15)
    return d.eval()


def _inputs(d_in: int = D_IN) -> torch.Tensor:
    return torch.randn(32, d_in, generator=torch.Generator().manual_seed(3)) * 0.8


@pytest.mark.parametrize("case", sorted(CASES))
def test_saved_here_loads_in_saelens_with_same_outputs(case, tmp_path, assert_close):
    d = _randomised(case)
    folder = save_dictionary(d, tmp_path / case)
    theirs = sae_lens.SAE.load_from_disk(folder)
    x = _inputs()
    with torch.no_grad():
        mine_acts, mine_out = d.encode(x), d(x, torch.zeros(32, d.cfg.d_out)).reconstruction
        their_acts = theirs.encode(x)
        their_out = theirs.decode(their_acts)
    assert (mine_acts > 0).sum() > 0, "the test input activates no latent"
    assert_close(their_acts, mine_acts, atol=1e-5, what=f"{case} feature acts")
    assert_close(their_out, mine_out, atol=1e-5, what=f"{case} reconstruction")


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_here_keeps_config_and_outputs(case, tmp_path, assert_close):
    d = _randomised(case)
    back = load_dictionary(save_dictionary(d, tmp_path / case)).eval()
    assert type(back) is type(d)
    assert back.cfg.to_dict() == d.cfg.to_dict()
    assert back.cfg.input_scale == d.cfg.input_scale and back.cfg.hook_name == "blocks.1.hook_resid_post"
    x = _inputs()
    with torch.no_grad():
        assert_close(back.encode(x), d.encode(x), atol=1e-5, what=f"{case} feature acts")
        assert_close(back.W_dec, d.W_dec, atol=1e-6, what=f"{case} W_dec")
    cfg = json.loads((tmp_path / case / CFG_FILE).read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "tiny-test"
    assert cfg["metadata"]["activation_norm_scale_in"] == 2.5
    assert (cfg["d_in"], cfg["d_sae"]) == (D_IN, D_SAE)
    assert cfg["mechscope"]["config"]["architecture"] == d.cfg.architecture


def _saelens_sae(arch: str):
    from sae_lens.saes import (
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    classes = {"standard": (StandardSAE, StandardSAEConfig, {}), "topk": (TopKSAE, TopKSAEConfig, {"k": 6}),
               "topk-rescaled": (TopKSAE, TopKSAEConfig, {"k": 6, "rescale_acts_by_decoder_norm": True}),
               "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}), "gated": (GatedSAE, GatedSAEConfig, {})}
    cls, cfg_cls, extra = classes[arch]
    sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **extra))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if name.startswith("W") else 0.1))
        if arch == "jumprelu":
            sae.threshold.copy_(0.05 + 0.2 * torch.rand(D_SAE, generator=gen))
    return sae


@pytest.mark.parametrize("arch", ["standard", "topk", "topk-rescaled", "jumprelu", "gated"])
def test_saved_by_saelens_loads_here_with_same_outputs(arch, tmp_path, assert_close):
    theirs = _saelens_sae(arch)
    theirs.save_model(tmp_path / arch)
    mine = load_dictionary(tmp_path / arch).eval()
    x = _inputs()
    with torch.no_grad():
        their_acts = theirs.encode(x)
        their_out = theirs.decode(their_acts)
        mine_acts = mine.encode(x)
        mine_out = mine.decode(mine_acts)
    assert (their_acts > 0).sum() > 0
    if arch == "topk-rescaled":  # folded decoder norms: same reconstruction, activations scaled by ||W_dec||
        assert torch.equal(their_acts > 0, mine_acts > 0)
    else:
        assert_close(mine_acts, their_acts, atol=1e-5, what=f"{arch} feature acts")
    assert_close(mine_out, their_out, atol=1e-5, what=f"{arch} reconstruction")


def test_truncated_weights_file_names_the_file(tmp_path):
    folder = save_dictionary(_randomised("topk"), tmp_path / "sae")
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(DictionaryFormatError, match=WEIGHTS_FILE):
        load_dictionary(folder)


def test_corrupt_weights_and_config_are_reported(tmp_path):
    folder = save_dictionary(_randomised("relu"), tmp_path / "sae")
    (folder / WEIGHTS_FILE).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DictionaryFormatError, match="corrupt or truncated"):
        load_dictionary(folder)
    folder2 = save_dictionary(_randomised("relu"), tmp_path / "sae2")
    (folder2 / CFG_FILE).write_text("{not json")
    with pytest.raises(DictionaryFormatError, match=CFG_FILE):
        load_dictionary(folder2)


def test_missing_file_and_no_silent_overwrite(tmp_path):
    with pytest.raises(DictionaryFormatError, match="missing"):
        load_dictionary(tmp_path)
    d = _randomised("relu")
    save_dictionary(d, tmp_path / "sae")
    with pytest.raises(FileExistsError):
        save_dictionary(d, tmp_path / "sae")
    save_dictionary(d, tmp_path / "sae", overwrite=True)


def test_width_mismatch_in_weights_is_a_format_error(tmp_path):
    folder = save_dictionary(_randomised("relu"), tmp_path / "sae")
    cfg = json.loads((folder / CFG_FILE).read_text())
    cfg["mechscope"]["config"]["d_sae"] = D_SAE + 1
    (folder / CFG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(DictionaryFormatError, match="valid dictionary"):
        load_dictionary(folder)


def test_saelens_jumprelu_with_negative_and_zero_thresholds_gives_saelens_outputs(tmp_path, assert_close):
    theirs = _saelens_sae("jumprelu")
    with torch.no_grad():
        theirs.threshold[:10] = -0.3  # negative: SAELens's ReLU makes these act as 0
        theirs.threshold[10:15] = 0.0
        theirs.b_enc[:15] -= 0.2  # some pre-activations fall between the threshold and 0
    theirs.save_model(tmp_path / "sl")
    mine = load_dictionary(tmp_path / "sl").eval()
    x = _inputs()
    with torch.no_grad():
        pre = x @ theirs.W_enc + theirs.b_enc - theirs.b_dec @ theirs.W_enc
        assert bool(((pre[:, :10] < 0) & (pre[:, :10] > -0.3)).any())  # the case a logarithm got wrong
        their_acts, mine_acts = theirs.encode(x), mine.encode(x)
        assert_close(mine_acts, their_acts, atol=1e-5, what="feature acts")
        assert_close(mine.decode(mine_acts), theirs.decode(their_acts), atol=1e-5, what="reconstruction")
        assert torch.isfinite(mine_acts).all() and (mine_acts[:, :15] > 0).any()
    # and back: written here, read by SAELens, the same outputs again
    back = sae_lens.SAE.load_from_disk(save_dictionary(mine, tmp_path / "back"))
    with torch.no_grad():
        assert_close(back.encode(x), their_acts, atol=1e-5, what="round-trip feature acts")


def test_saelens_normalize_activations(tmp_path, assert_close):
    from sae_lens.saes import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations="expected_average_only_in"))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) * 0.3)
    sae.save_model(tmp_path / "avg")
    mine = load_dictionary(tmp_path / "avg").eval()
    x = _inputs()
    with torch.no_grad():
        assert_close(mine.decode(mine.encode(x)), sae.decode(sae.encode(x)), atol=1e-5, what="expected_average_only_in")
    for mode in ("layer_norm", "constant_norm_rescale"):
        other = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations=mode))
        other.save_model(tmp_path / mode)
        with pytest.raises(DictionaryFormatError, match=f"normalize_activations='{mode}' is refused: SAELens rescales"):
            load_dictionary(tmp_path / mode)
