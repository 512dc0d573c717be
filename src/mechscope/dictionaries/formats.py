"""Dictionaries on disk in the SAELens layout: a folder with `cfg.json` and `sae_weights.safetensors`.

Written files load in SAELens (`sae_lens.SAE.load_from_disk`) with the same outputs, and folders
saved by SAELens load here. Architecture names map as:

| mechscope | SAELens |
| --- | --- |
| `relu` (SAE / transcoder) | `standard` / `transcoder` |
| `topk` | `topk` |
| `batchtopk` | `jumprelu` with the learned threshold (what it is at evaluation) |
| `jumprelu` (SAE / transcoder) | `jumprelu` / `jumprelu_transcoder` |
| `gated` | `gated` (`b_gate` is our `b_enc`) |
| `relu` / `jumprelu` transcoder with `skip` | `skip_transcoder` / `jumprelu_skip_transcoder` (`W_skip [d_out, d_in]`) |

Input normalisation is folded into the weights the way SAELens does, so both libraries work in
model units with unchanged feature activations: `W_enc * s_in`, `W_dec / s_out`, `b_dec / s_out`
(and `W_skip * s_in / s_out`). The scales are recorded (`metadata.activation_norm_scale_in/out` and
the `mechscope` block, which also holds our full config); loading here unfolds them again. `metadata` also records
`hook_name`, `hook_name_out`, `model_name`.

Example:
    >>> from mechscope.dictionaries import make_dictionary
    >>> import tempfile, torch
    >>> sae = make_dictionary("topk", d_in=8, d_sae=16, k=2, seed=0, hook_name="blocks.0.hook_resid_post")
    >>> folder = save_dictionary(sae, tempfile.mkdtemp() + "/sae")
    >>> load_dictionary(folder).cfg.hook_name
    'blocks.0.hook_resid_post'
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from mechscope.dictionaries.base import Dictionary, DictionaryConfig, dictionary_class
from mechscope.dictionaries.errors import DictionaryConfigError, DictionaryFormatError

logger = logging.getLogger(__name__)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
FORMAT_VERSION = 1
SAELENS_LAYOUT_VERSION = "6.54.0"  # the SAELens on-disk layout these files follow

_TO_SAELENS = {("relu", False): "standard", ("relu", True): "transcoder", ("topk", False): "topk",
               ("batchtopk", False): "jumprelu", ("jumprelu", False): "jumprelu",
               ("jumprelu", True): "jumprelu_transcoder", ("gated", False): "gated"}
_FROM_SAELENS = {"standard": "relu", "transcoder": "relu", "topk": "topk", "jumprelu": "jumprelu",
                 "jumprelu_transcoder": "jumprelu", "gated": "gated",
                 "skip_transcoder": "relu", "jumprelu_skip_transcoder": "jumprelu"}
_SKIP_SAELENS = {"relu": "skip_transcoder", "jumprelu": "jumprelu_skip_transcoder"}


def saelens_architecture(d: Dictionary) -> str:
    """The SAELens architecture name a dictionary is written as (`mechscope.*` where SAELens has none).

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> saelens_architecture(make_dictionary("relu", d_in=4, d_sae=8))
        'standard'
        >>> saelens_architecture(make_dictionary("batchtopk", d_in=4, d_sae=8, k=2))
        'jumprelu'
    """
    key = (d.cfg.architecture, d.cfg.is_transcoder)
    if d.cfg.skip:
        return _SKIP_SAELENS.get(key[0], f"mechscope.{key[0]}_skip_transcoder")
    return _TO_SAELENS.get(key, f"mechscope.{d.cfg.architecture}{'_transcoder' if key[1] else ''}")


def _to_saelens_weights(d: Dictionary) -> dict[str, Tensor]:
    s_in, s_out = d.cfg.input_scale, d.cfg.output_scale
    assert s_out is not None
    sd = {k: v.detach().clone() for k, v in d.state_dict().items()}
    sd["W_enc"] = sd["W_enc"] * s_in
    sd["W_dec"] = sd["W_dec"] / s_out
    sd["b_dec"] = sd["b_dec"] / s_out
    if "W_skip" in sd:
        sd["W_skip"] = sd["W_skip"] * (s_in / s_out)
    arch = d.cfg.architecture
    if arch == "jumprelu":
        sd["threshold"] = sd.pop("log_threshold").exp()
    elif arch == "batchtopk":
        theta = float(sd.pop("threshold"))
        sd["threshold"] = torch.full_like(sd["b_enc"], max(theta, 0.0))
    elif arch == "gated":
        sd["b_gate"] = sd.pop("b_enc")
    return {k: v.contiguous() for k, v in sd.items()}


def save_dictionary(d: Dictionary, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write `d` to the folder `path` (created); refuses to replace existing files unless `overwrite`.

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> sae = make_dictionary("jumprelu", d_in=4, d_sae=8, seed=0)
        >>> folder = save_dictionary(sae, "jr")
        >>> sorted(p.name for p in folder.iterdir())
        ['cfg.json', 'sae_weights.safetensors']
        >>> save_dictionary(sae, "jr")
        Traceback (most recent call last):
        ...
        FileExistsError: ...
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if not overwrite and ((folder / CFG_FILE).exists() or (folder / WEIGHTS_FILE).exists()):
        raise FileExistsError(f"{folder} already holds a dictionary; pass overwrite=True to replace it")
    c = d.cfg
    arch = saelens_architecture(d)
    if arch.startswith("mechscope."):
        logger.warning("SAELens has no %s architecture; %s will load in mechscope only", arch, folder)
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": c.d_in, "d_sae": c.d_sae, "dtype": c.dtype, "device": "cpu",
        "apply_b_dec_to_input": bool(c.apply_b_dec_to_input), "normalize_activations": "none",
        "reshape_activations": "hook_z" if (c.hook_name or "").endswith("hook_z") else "none",
        "metadata": {"sae_lens_version": SAELENS_LAYOUT_VERSION, "hook_name": c.hook_name,
                     "hook_name_out": c.hook_name_out, "model_name": c.model_name,
                     "activation_norm_scale_in": c.input_scale, "activation_norm_scale_out": c.output_scale},
        "mechscope": {"format_version": FORMAT_VERSION, "config": c.to_dict()},
    }
    if c.is_transcoder:
        cfg["d_out"] = c.d_out
    if arch == "topk":
        cfg["k"] = c.k  # type: ignore[attr-defined]
        cfg["rescale_acts_by_decoder_norm"] = False
    save_file(_to_saelens_weights(d), str(folder / WEIGHTS_FILE))
    with open(folder / CFG_FILE, "w") as f:
        json.dump(cfg, f, indent=1)
    return folder


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise DictionaryFormatError(f"{p} is missing (a dictionary folder holds {CFG_FILE} and {WEIGHTS_FILE})")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DictionaryFormatError(f"{cfg_path} is not valid JSON: {err}") from err
    try:
        weights = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise DictionaryFormatError(f"{w_path} is corrupt or truncated: {err}") from err
    return cfg, weights


def _config_from_saelens(cfg: dict[str, Any], arch: str) -> DictionaryConfig:
    meta = cfg.get("metadata") or {}
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", "expected_average_only_in", None):
        raise DictionaryFormatError(
            f"normalize_activations={norm!r} is refused: SAELens rescales each token by statistics of that token "
            "(layer_norm: its mean and std; constant_norm_rescale: its norm; covariance_whitening: a whitening "
            "matrix) and undoes it after decoding, a per-token state that mechscope's separate encode/decode do "
            "not keep; only 'none' and 'expected_average_only_in' (a constant scale, already folded) load")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        logger.warning("reshape_activations=%r ignored: pass flattened [batch, d_in] inputs", cfg["reshape_activations"])
    fields: dict[str, Any] = {
        "d_in": int(cfg["d_in"]), "d_sae": int(cfg["d_sae"]), "d_out": int(cfg.get("d_out", cfg["d_in"])),
        "hook_name": meta.get("hook_name", cfg.get("hook_name")), "model_name": meta.get("model_name", cfg.get("model_name")),
        "hook_name_out": meta.get("hook_name_out", cfg.get("hook_name_out")),
        "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)), "decoder_norm": "free",
        "dtype": str(cfg.get("dtype", "float32")).replace("torch.", ""),
    }
    cls = dictionary_class(arch).config_class
    if arch in ("relu", "gated"):
        fields["decoder_norm"] = "weighted"
    if cfg.get("architecture") in _SKIP_SAELENS.values():
        fields["skip"] = True
    if arch == "topk":
        fields["k"] = int(cfg["k"])
    return cls(**fields)


def load_dictionary(path: str | Path) -> Dictionary:
    """Read a dictionary folder written here or by SAELens; errors name the bad file.

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> sae = make_dictionary("gated", d_in=4, d_sae=8, seed=0, input_scale=2.0)
        >>> again = load_dictionary(save_dictionary(sae, "gated_sae"))
        >>> x = torch.randn(3, 4)
        >>> type(again).__name__, again.cfg.input_scale, torch.allclose(again.encode(x), sae.encode(x), atol=1e-5)
        ('GatedSAE', 2.0, True)
    """
    folder = Path(path)
    cfg, w = _read(folder)
    try:
        block = cfg.get("mechscope")
        if block is not None:
            data = dict(block["config"])
            arch = data["architecture"]
            config = dictionary_class(arch).config_class.from_dict(data)
        else:
            sl_arch = cfg.get("architecture", "standard")
            if sl_arch not in _FROM_SAELENS:
                raise DictionaryFormatError(f"{folder / CFG_FILE}: SAELens architecture {sl_arch!r} is not supported "
                                            f"(supported: {sorted(_FROM_SAELENS)})")
            arch = _FROM_SAELENS[sl_arch]
            config = _config_from_saelens(cfg, arch)
        d = dictionary_class(arch)(config)
        d.load_state_dict(_from_saelens_weights(w, config, cfg), strict=True)
    except (KeyError, TypeError, DictionaryConfigError, RuntimeError) as err:
        raise DictionaryFormatError(f"{folder / CFG_FILE} and {folder / WEIGHTS_FILE} do not describe a valid "
                                    f"dictionary: {err}") from err
    return d


def _from_saelens_weights(w: dict[str, Tensor], c: DictionaryConfig, cfg: dict[str, Any]) -> dict[str, Tensor]:
    dtype = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
             "bfloat16": torch.bfloat16}[c.dtype]
    sd = {k: v.to(dtype) for k, v in w.items() if k != "scaling_factor"}
    for k, v in sd.items():
        if not torch.isfinite(v).all() and k != "threshold":
            raise DictionaryFormatError(f"{WEIGHTS_FILE}: tensor {k!r} holds NaN or Inf")
    if c.architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        norms = sd["W_dec"].norm(dim=1)  # fold: topk(pre * n) then (f / n) @ W_dec
        sd["W_enc"], sd["b_enc"], sd["W_dec"] = sd["W_enc"] * norms, sd["b_enc"] * norms, sd["W_dec"] / norms[:, None]
    if c.architecture == "jumprelu":
        th = sd.pop("threshold")
        if bool((th <= 0).any()):
            # SAELens computes ReLU(pre) * (pre > threshold): a threshold <= 0 acts exactly as 0, which
            # log(0) = -inf represents (exp(-inf) = 0), so such latents fire whenever pre > 0.
            logger.info("%d JumpReLU thresholds <= 0 act as 0, as in SAELens", int((th <= 0).sum()))
        sd["log_threshold"] = th.clamp_min(0).log()
    elif c.architecture == "batchtopk":
        th = sd.pop("threshold")
        sd["threshold"] = th.double().max() if th.numel() else torch.tensor(-1.0, dtype=torch.float64)
    elif c.architecture == "gated":
        sd["b_enc"] = sd.pop("b_gate")
    s_in, s_out = c.input_scale, c.output_scale
    assert s_out is not None
    if s_in != 1.0 or s_out != 1.0:
        sd["W_enc"] = sd["W_enc"] / s_in
        sd["W_dec"] = sd["W_dec"] * s_out
        sd["b_dec"] = sd["b_dec"] * s_out
        if "W_skip" in sd:
            sd["W_skip"] = sd["W_skip"] * (s_out / s_in)
    return sd
