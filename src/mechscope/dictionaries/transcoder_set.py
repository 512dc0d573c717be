"""A set of transcoders that together replace every MLP of a model (the input of circuit tracing).

Every set answers the same questions in model units, whatever its kind:

- `encode(layer, x [pos, d_model]) -> [pos, d_sae]`: feature activations of the features that
  read the MLP input of `layer` (what the MLP reads: the MLP norm's output, `mlp_input_hook`);
- `encoder_vectors(layer, feats) -> [n, d_model]`: each feature's pre-activation is
  `x @ vec + const`, the direction a gradient is injected along;
- `decoder_vectors(layer, feats) -> [n, n_layers - layer, d_model]`: what one unit of each
  feature adds to the MLP output (`blocks.{l}.hook_mlp_out`) of layers `layer, layer+1, ...`
  (only the first slot is non-zero for a per-layer set);
- `decode_to(layer, acts: list[[pos, d_sae]]) -> [pos, d_model]`: layer's MLP output prediction from
  the activations of layers `0..layer` (`reconstruct` does every layer);
- `skip(layer, x [pos, d_model]) -> [pos, d_model]`: the linear skip term of a skip transcoder
  (`has_skip`), added to the prediction: layer's MLP output is predicted as
  `decode_to(layer, acts) + skip(layer, x)`, with `x` the MLP input of that layer.

`PerLayerTranscoders` wraps one mechscope transcoder (any architecture) per layer and is saved
as a folder of SAELens-layout subfolders `layer_{l}/` plus `transcoders.json`.
A cross-layer transcoder (`mechscope.dictionaries.clt`) implements the same interface.
`save_circuit_tracer` / `from_circuit_tracer` write and read circuit-tracer's single-layer
layout: one safetensors file per layer with `W_enc [F, d]`, `W_dec [F, d]`, `b_enc`, `b_dec`,
for JumpReLU `activation_function.threshold`, and for skip transcoders `W_skip [d, d]` (applied as
`x @ W_skip.T`, as circuit-tracer's `compute_skip` does) (model units; ReLU and JumpReLU only).

Example:
    >>> import torch
    >>> from mechscope.dictionaries import make_dictionary
    >>> tcs = [make_dictionary("relu", d_in=8, d_sae=16, d_out=8, hook_name_out=f"blocks.{i}.hook_mlp_out")
    ...        for i in range(2)]
    >>> s = PerLayerTranscoders(tcs)
    >>> s.decoder_vectors(1, torch.tensor([0, 3])).shape
    torch.Size([2, 1, 8])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mechscope.core import names
from mechscope.core.files import atomic_write_json, claim_output_dir
from mechscope.dictionaries.base import Dictionary, make_dictionary
from mechscope.dictionaries.errors import DictionaryConfigError, DictionaryFormatError
from mechscope.dictionaries.formats import load_dictionary, save_dictionary

SET_FILE = "transcoders.json"
OUTPUT_SUFFIX = "hook_mlp_out"


def mlp_input_hook(model: Any, layer: int) -> str:
    """The hook name of what layer `layer`'s MLP reads (its norm's output, weight applied):
    `ln2.hook_out` where the model names the norm's pieces as TransformerLens does, else `ln2.hook_normalized`.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from mechscope.core.hooked import HookedModel
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> mlp_input_hook(HookedModel(LlamaForCausalLM(cfg), name="tiny"), 1)
        'blocks.1.ln2.hook_...'
    """
    name = names.block(layer, "ln2.hook_out")
    return name if name in model.sites else names.block(layer, "ln2.hook_normalized")


class TranscoderSet(nn.Module):
    """Interface of a whole-model transcoder set (see the module docstring).

    Example:
        >>> import torch
        >>> tcs = [make_dictionary("relu", d_in=8, d_sae=16, d_out=8, hook_name_out=f"blocks.{i}.hook_mlp_out", seed=i)
        ...        for i in range(2)]
        >>> s: TranscoderSet = PerLayerTranscoders(tcs)
        >>> x = [torch.randn(3, 8) for _ in range(2)]
        >>> recon = s.reconstruct([s.encode(layer, x[layer]) for layer in range(2)], x)
        >>> [tuple(r.shape) for r in recon], s.output_hook(1), s.has_skip
        ([(3, 8), (3, 8)], 'blocks.1.hook_mlp_out', False)
    """

    kind: str = ""
    n_layers: int
    d_model: int

    def d_sae(self, layer: int) -> int:
        raise NotImplementedError

    def encode(self, layer: int, x: Tensor) -> Tensor:
        raise NotImplementedError

    def encoder_vectors(self, layer: int, feats: Tensor) -> Tensor:
        raise NotImplementedError

    def decoder_vectors(self, layer: int, feats: Tensor) -> Tensor:
        raise NotImplementedError

    def decode_to(self, layer: int, acts: list[Tensor]) -> Tensor:
        raise NotImplementedError

    @property
    def has_skip(self) -> bool:
        """True when some layer's prediction has a linear skip term (`skip`)."""
        return False

    def skip(self, layer: int, x: Tensor) -> Tensor:
        """The skip term of `layer` for its MLP input `x [pos, d_model]` (zeros without one)."""
        return x.new_zeros(x.shape)

    def reconstruct(self, acts: list[Tensor], inputs: list[Tensor] | None = None) -> list[Tensor]:
        """Every layer's MLP output prediction `[pos, d_model]` from all layers' activations (and, for a set
        with skip terms, every layer's MLP input `inputs[l] [pos, d_model]`)."""
        out = [self.decode_to(layer, acts[: layer + 1]) for layer in range(self.n_layers)]
        if self.has_skip:
            if inputs is None:
                raise DictionaryConfigError("this transcoder set has skip connections: reconstruct needs the MLP "
                                            "inputs too, reconstruct(acts, inputs)")
            out = [o + self.skip(layer, inputs[layer]).to(o.dtype) for layer, o in enumerate(out)]
        return out

    def output_hook(self, layer: int) -> str:
        """The site `layer`'s MLP output prediction replaces."""
        return names.block(layer, OUTPUT_SUFFIX)

    def check_model(self, model: Any) -> None:
        """A clear error when the set does not fit `model` (layer count or width)."""
        if model.cfg.n_layers != self.n_layers or model.cfg.d_model != self.d_model:
            raise DictionaryConfigError(
                f"the {self.kind} transcoder set has {self.n_layers} layers of width {self.d_model}; the model has "
                f"{model.cfg.n_layers} layers of width {model.cfg.d_model}"
            )


class PerLayerTranscoders(TranscoderSet):
    """One transcoder per layer, `transcoders[l]` mapping layer l's MLP input to its MLP output.

    Example:
        >>> tcs = [make_dictionary("jumprelu", d_in=8, d_sae=16, d_out=8, hook_name_out=f"blocks.{i}.hook_mlp_out")
        ...        for i in range(3)]
        >>> s = PerLayerTranscoders(tcs)
        >>> s.kind, s.n_layers, s.d_model, s.d_sae(2)
        ('per_layer', 3, 8, 16)
        >>> PerLayerTranscoders([])
        Traceback (most recent call last):
        ...
        mechscope.dictionaries.errors.DictionaryConfigError: a transcoder set needs at least one transcoder
    """

    kind = "per_layer"

    def __init__(self, transcoders: list[Dictionary]) -> None:
        super().__init__()
        if not transcoders:
            raise DictionaryConfigError("a transcoder set needs at least one transcoder")
        widths = {(t.cfg.d_in, t.cfg.d_out) for t in transcoders}
        if len(widths) != 1 or next(iter(widths))[0] != next(iter(widths))[1]:
            raise DictionaryConfigError(f"every transcoder must map d_model to d_model, got (d_in, d_out) {widths}")
        self.transcoders = nn.ModuleList(transcoders)
        self.n_layers = len(transcoders)
        self.d_model = transcoders[0].cfg.d_in

    def d_sae(self, layer: int) -> int:
        return self.transcoders[layer].cfg.d_sae

    def encode(self, layer: int, x: Tensor) -> Tensor:
        return self.transcoders[layer].encode(x)

    def encoder_vectors(self, layer: int, feats: Tensor) -> Tensor:
        t = self.transcoders[layer]
        return (t.W_enc[:, feats].T * t.cfg.input_scale).detach()

    def decoder_vectors(self, layer: int, feats: Tensor) -> Tensor:
        t = self.transcoders[layer]
        return (t.W_dec[feats] / t.cfg.output_scale).detach().unsqueeze(1)

    def decode_to(self, layer: int, acts: list[Tensor]) -> Tensor:
        t = self.transcoders[layer]
        f = acts[layer]
        return (f.to(t.W_dec.dtype) @ t.W_dec + t.b_dec) / t.cfg.output_scale  # the features' part (no skip term)

    @property
    def has_skip(self) -> bool:
        return any(t.cfg.skip for t in self.transcoders)

    def skip(self, layer: int, x: Tensor) -> Tensor:
        return self.transcoders[layer].skip_output(x)

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write `path/transcoders.json` and `path/layer_{l}/` (SAELens layout) for every layer.

        The folder must be new, empty or mechscope's (a foreign non-empty folder needs `force`)."""
        folder = claim_output_dir(path, force=force)
        for layer, t in enumerate(self.transcoders):
            save_dictionary(t, folder / f"layer_{layer}", overwrite=True)
        meta = {"kind": self.kind, "n_layers": self.n_layers, "d_model": self.d_model,
                "input": "the MLP's input (its norm's output)", "output_hook": f"blocks.{{l}}.{OUTPUT_SUFFIX}",
                "layers": [f"layer_{i}" for i in range(self.n_layers)]}
        atomic_write_json(folder / SET_FILE, meta)
        return folder


    def save_circuit_tracer(self, path: str | Path, *, force: bool = False) -> list[Path]:
        """Write `path/layer_{l}.safetensors` in circuit-tracer's single-layer layout; returns the files."""
        folder = claim_output_dir(path, force=force)
        files = []
        for layer, t in enumerate(self.transcoders):
            arch = t.cfg.architecture
            if arch not in ("relu", "jumprelu") or t.cfg.apply_b_dec_to_input:
                raise DictionaryConfigError(f"circuit-tracer's single-layer layout holds ReLU and JumpReLU transcoders "
                                            f"reading the raw input; layer {layer} is {arch}")
            s_in, s_out = t.cfg.input_scale, float(t.cfg.output_scale)  # type: ignore[arg-type]
            tensors = {"W_enc": (t.W_enc * s_in).T, "W_dec": t.W_dec / s_out, "b_enc": t.b_enc, "b_dec": t.b_dec / s_out}
            if arch == "jumprelu":
                tensors["activation_function.threshold"] = t.log_threshold.exp()  # type: ignore[operator]
            if self.has_skip:  # circuit-tracer reads the skip flag from layer 0 and computes it on every layer
                W_skip = t.skip_weight()
                tensors["W_skip"] = W_skip if W_skip is not None else t.W_dec.new_zeros(self.d_model, self.d_model)
            files.append(folder / f"layer_{layer}.safetensors")
            save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, str(files[-1]))
        return files

    @classmethod
    def from_circuit_tracer(cls, paths: list[str | Path]) -> PerLayerTranscoders:
        """Read circuit-tracer single-layer files, one per layer in layer order."""
        transcoders = []
        for layer, path in enumerate(paths):
            try:
                w = load_file(str(path))
                F, d = w["W_enc"].shape
            except (OSError, ValueError, KeyError) as err:
                raise DictionaryFormatError(f"{path} is not a circuit-tracer transcoder file: {err}") from err
            skip = "W_skip" in w
            if skip and tuple(w["W_skip"].shape) != (d, d):
                raise DictionaryFormatError(f"{path}: W_skip has shape {tuple(w['W_skip'].shape)}, expected {(d, d)}")
            jump = "activation_function.threshold" in w
            t = make_dictionary("jumprelu" if jump else "relu", d_in=d, d_sae=F, d_out=d, decoder_norm="free" if jump
                                else "weighted", hook_name_out=names.mlp_out(layer), apply_b_dec_to_input=False,
                                skip=skip)
            state = {"W_enc": w["W_enc"].T, "W_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"]}
            if skip:
                state["W_skip"] = w["W_skip"]
            if jump:
                state["log_threshold"] = w["activation_function.threshold"].reshape(F).clamp_min(1e-30).log()
            t.load_state_dict({k: v.float().contiguous() for k, v in state.items()})
            transcoders.append(t)
        return cls(transcoders)


def load_transcoder_set(path: str | Path) -> TranscoderSet:
    """Read a set written by `save` (per-layer) or `CrossLayerTranscoder.save` (cross-layer).

    Example:
        >>> tcs = [make_dictionary("relu", d_in=8, d_sae=16, d_out=8, hook_name_out=f"blocks.{i}.hook_mlp_out")
        ...        for i in range(2)]
        >>> s = load_transcoder_set(PerLayerTranscoders(tcs).save("tcs"))
        >>> type(s).__name__, s.n_layers
        ('PerLayerTranscoders', 2)
    """
    folder = Path(path)
    meta_path = folder / SET_FILE
    if not meta_path.is_file():
        raise DictionaryFormatError(f"{meta_path} is missing: {folder} is not a transcoder set folder "
                                    "(write one with `mechscope transcoders train` or PerLayerTranscoders.save)")
    try:
        meta = json.loads(meta_path.read_text())
        kind = meta["kind"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as err:
        raise DictionaryFormatError(f"{meta_path} is not a valid transcoder set description: {err}") from err
    if kind == "per_layer":
        return PerLayerTranscoders([load_dictionary(folder / sub) for sub in meta["layers"]])
    if kind == "cross_layer":
        from mechscope.dictionaries.clt import CLTSet, CrossLayerTranscoder

        return CLTSet(CrossLayerTranscoder.load(folder))
    raise DictionaryFormatError(f"{meta_path}: unknown transcoder set kind {kind!r} (per_layer or cross_layer)")

