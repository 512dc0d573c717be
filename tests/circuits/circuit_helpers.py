"""Tiny models and random transcoder sets for the circuit-tracing tests."""

from __future__ import annotations

import torch

from mechscope.core import names
from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.transcoder_set import PerLayerTranscoders


def random_transcoders(model, d_sae: int = 32, seed: int = 0, architecture: str = "relu") -> PerLayerTranscoders:
    """An untrained per-layer set whose ReLU features fire on about half the positions."""
    d = model.cfg.d_model
    tcs = []
    for layer in range(model.cfg.n_layers):
        t = make_dictionary(architecture, d_in=d, d_sae=d_sae, d_out=d, seed=seed + layer,
                            hook_name=names.ln2(layer), hook_name_out=names.mlp_out(layer))
        with torch.no_grad():
            t.W_dec.mul_(0.3)
            t.b_dec.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed + 100 + layer))
        tcs.append(t)
    return PerLayerTranscoders(tcs)


class TranscoderMLP(torch.nn.Module):
    """An MLP that computes exactly a ReLU transcoder (`gate_proj`/`down_proj`, as the Llama table names them)."""

    def __init__(self, transcoder) -> None:
        super().__init__()
        c = transcoder.cfg
        d_sae, d = c.d_sae, c.d_in
        self.gate_proj = torch.nn.Linear(d, d_sae)
        self.down_proj = torch.nn.Linear(d_sae, d)
        self.up_proj = torch.nn.Identity()  # named by the family table; never called
        with torch.no_grad():
            self.gate_proj.weight.copy_(transcoder.W_enc.T * c.input_scale)
            self.gate_proj.bias.copy_(transcoder.b_enc)
            self.down_proj.weight.copy_(transcoder.W_dec.T / c.output_scale)
            self.down_proj.bias.copy_(transcoder.b_dec / c.output_scale)

    def forward(self, x):
        return self.down_proj(self.gate_proj(x).relu())


def model_made_of_transcoders(seed: int = 0):
    """A tiny Llama whose MLPs are exactly the ReLU transcoders of the returned set."""
    from mechscope import HookedModel
    from tiny_models import tiny_hf_model

    hf = tiny_hf_model("llama", seed)
    probe = HookedModel(hf, name="tiny-llama")
    tcs = random_transcoders(probe, seed=seed)
    for layer, t in zip(hf.model.layers, tcs.transcoders, strict=True):
        layer.mlp = TranscoderMLP(t)
    return HookedModel(hf, name="tiny-llama-transcoder-mlps"), tcs
