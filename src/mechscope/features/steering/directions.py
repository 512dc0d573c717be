"""Steering directions: where they come from, and how they are saved.

A `Direction` is a vector `[d]` at one hook site of a model, plus a record of how it was made.
Sources:

- `from_latent`: an SAE or transcoder latent, its decoder row in model units
  (`W_dec[i] / output_scale`), at the site the dictionary writes;
- `mean_difference`: contrastive activation addition (CAA), `mean(act | positive) - mean(act | negative)`
  at a chosen token of each text (the answer letter of an A/B pair, or the last token);
- `reading_vector`: representation engineering's reading vector, the first principal component of
  the paired differences `act(positive_i) - act(negative_i)`, signed so positives project higher;
- `from_probe`: a trained logistic probe's weight for one class, mapped back to model units;
- `from_vector`: any vector a user passes.

Saved as `<stem>.safetensors` (the vectors) plus `<stem>.json` (hook names, sources, provenance).

Example:
    >>> d = mean_difference(model, ["I love it", "Great day"], ["I hate it", "Awful day"],
    ...                     "blocks.12.hook_resid_post")                                # doctest: +SKIP
    >>> save_directions("out/sentiment", [d], provenance(model))                       # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from mechscope.core.errors import MechscopeError
from mechscope.core.files import check_writable, write_bytes, write_json
from mechscope.core.names import parse_layer
from mechscope.dictionaries.base import Dictionary
from mechscope.methods.probe_collect import collect_activations, site_hook_names
from mechscope.methods.probe_data import resolve_read_position
from mechscope.methods.probe_models import LogisticProbe

FORMAT = "mechscope-steering-directions"


@dataclass
class Direction:
    """A vector `[d]` at hook `hook_name`; `source` says how it was made (kind plus details).

    Example:
        >>> import torch
        >>> d = Direction(torch.tensor([3.0, 4.0]), "blocks.0.hook_resid_post", {"kind": "vector"})
        >>> d.norm, d.unit
        (5.0, tensor([0.6000, 0.8000]))
    """

    vector: Tensor
    hook_name: str
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @property
    def unit(self) -> Tensor:
        """The direction scaled to norm 1."""
        return self.vector / self.vector.norm().clamp_min(1e-12)


def check_width(model: Any, hook_name: str, vector: Tensor) -> None:
    """A clear error when `hook_name` is not a site of `model` or `vector` does not fit its width.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> check_width(model, "blocks.0.hook_resid_post", torch.zeros(16))      # fits: no error
        >>> check_width(model, "blocks.0.hook_resid_post", torch.zeros(32))
        Traceback (most recent call last):
        ...
        mechscope.core.errors.MechscopeError: The vector has shape (32,), but site 'blocks.0.hook_resid_post' of tiny has width 16.
    """
    model.check_name(hook_name)
    width = site_width(model, hook_name)
    if vector.ndim != 1 or vector.shape[0] != width:
        raise MechscopeError(f"The vector has shape {tuple(vector.shape)}, but site {hook_name!r} of "
                             f"{model.cfg.name} has width {width}.")


def site_width(model: Any, hook_name: str) -> int:
    """The width of a site's last axis (d_model for residual sites, d_mlp for `mlp.hook_post`, ...).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> site_width(model, "blocks.0.hook_resid_post"), site_width(model, "blocks.0.mlp.hook_post")
        (16, 32)
    """
    layer = parse_layer(hook_name)
    stop = layer + 1 if layer is not None and layer + 1 < model.cfg.n_layers else None
    _, cache = model.run_with_cache(torch.zeros(1, 1, dtype=torch.long), names=[hook_name], stop_at_layer=stop)
    act = cache[hook_name]
    return int(act[0, 0].numel()) if act.ndim > 3 else int(act.shape[-1])


def from_vector(model: Any, vector: Tensor | Sequence[float], hook_name: str, label: str = "user") -> Direction:
    """A user's vector at `hook_name` (checked against the site's width).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> d = from_vector(model, [1.0] * 16, "blocks.1.hook_resid_pre", label="ones")
        >>> d.hook_name, d.source, round(d.norm, 3)
        ('blocks.1.hook_resid_pre', {'kind': 'vector', 'label': 'ones'}, 4.0)
    """
    vector = torch.as_tensor(vector, dtype=torch.float32).detach().clone()
    check_width(model, hook_name, vector)
    return Direction(vector, hook_name, {"kind": "vector", "label": label})


def from_latent(sae: Dictionary, latent: int, model: Any | None = None) -> Direction:
    """Latent `latent`'s decoder row in model units, at the site the dictionary writes.

    Example:
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> d = from_latent(sae, 5)
        >>> d.hook_name, d.vector.shape, d.source["latent"]
        ('blocks.0.hook_resid_post', torch.Size([16]), 5)
    """
    d_sae = sae.cfg.d_sae
    if not isinstance(latent, int) or not 0 <= latent < d_sae:
        raise MechscopeError(f"Latent {latent} is out of range: this dictionary has latents 0..{d_sae - 1}.")
    hook_name = sae.cfg.hook_name_out or sae.cfg.hook_name
    if not hook_name:
        raise MechscopeError("The dictionary's config names no hook site; set cfg.hook_name.")
    vector = (sae.W_dec[latent].detach().float() / float(sae.cfg.output_scale or 1.0)).clone()
    if model is not None:
        check_width(model, hook_name, vector)
    return Direction(vector, hook_name, {"kind": "latent", "latent": latent, "architecture": sae.cfg.architecture,
                                         "d_sae": d_sae})


def _positions(model: Any, texts: Sequence[str], tokens: Sequence[str | None] | None) -> list[int]:
    if not texts:
        raise MechscopeError("No texts given: contrastive directions need at least one text per side.")
    if tokens is None:
        return [int(n) - 1 for n in model.tokenize(list(texts)).lengths]
    try:
        return [resolve_read_position(model.tokenizer, t, tok) for t, tok in zip(texts, tokens, strict=True)]
    except ValueError as exc:
        raise MechscopeError(str(exc)) from None


def read_activations(model: Any, texts: Sequence[str], hook_name: str,
                     tokens: Sequence[str | None] | None = None, batch_size: int = 16) -> Tensor:
    """Activations `[n, d]` (float32) at `hook_name`, read at each text's last token (or its `tokens[i]`).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> acts = read_activations(model, ["the cat sat", "a dog"], "blocks.0.hook_resid_post")
        >>> acts.shape, acts.dtype
        (torch.Size([2, 16]), torch.float32)
    """
    model.check_name(hook_name)
    positions = _positions(model, texts, tokens)
    layer = parse_layer(hook_name)
    key = layer if layer is not None else model.cfg.n_layers - 1
    return collect_activations(model, list(texts), positions, {key: hook_name}, batch_size)[key]


def mean_difference(model: Any, positive: Sequence[str], negative: Sequence[str], hook_name: str, *,
                    positive_tokens: Sequence[str | None] | None = None,
                    negative_tokens: Sequence[str | None] | None = None) -> Direction:
    """CAA: `mean(act | positive) - mean(act | negative)` at `hook_name`, read at the last token or the given tokens.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> d = mean_difference(model, ["the cat sat", "the cat ran"], ["a dog sat", "a dog ran"], "blocks.0.hook_resid_post")
        >>> pos = read_activations(model, ["the cat sat", "the cat ran"], "blocks.0.hook_resid_post")
        >>> neg = read_activations(model, ["a dog sat", "a dog ran"], "blocks.0.hook_resid_post")
        >>> torch.allclose(d.vector, pos.mean(0) - neg.mean(0)), d.source["kind"]
        (True, 'mean_difference')
    """
    pos = read_activations(model, positive, hook_name, positive_tokens)
    neg = read_activations(model, negative, hook_name, negative_tokens)
    return Direction(pos.mean(0) - neg.mean(0), hook_name,
                     {"kind": "mean_difference", "n_positive": len(positive), "n_negative": len(negative)})


def first_principal_component(diffs: Tensor, seed: int = 0) -> Tensor:
    """The unit first principal component of paired differences, signed so their mean projects >= 0.

    As in representation engineering, each difference's sign is flipped at random (seeded) before the
    PCA: the component is then the axis the pairs differ along, not the spread around their mean
    difference (which centring alone would leave).

    Example:
        >>> first_principal_component(torch.tensor([[3.0, 0.1], [1.0, -0.1], [2.0, 0.0]])).round(decimals=2)
        tensor([1.0000, 0.0100])
    """
    x = diffs.double()
    signs = torch.randint(0, 2, (len(x), 1), generator=torch.Generator().manual_seed(seed)).double() * 2 - 1
    flipped = x * signs
    _, _, vh = torch.linalg.svd(flipped - flipped.mean(0), full_matrices=False)
    pc = vh[0]
    if float(x.mean(0) @ pc) < 0:
        pc = -pc
    return pc.float()


def reading_vector(model: Any, positive: Sequence[str], negative: Sequence[str], hook_name: str, *,
                   positive_tokens: Sequence[str | None] | None = None,
                   negative_tokens: Sequence[str | None] | None = None) -> Direction:
    """RepE reading vector: the first PC of paired differences `act(positive_i) - act(negative_i)`.

    Unit norm; each difference's sign is flipped at random before the PCA (see
    `first_principal_component`).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> d = reading_vector(model, ["the cat sat", "the cat ran"], ["a dog sat", "a dog ran"], "blocks.0.hook_resid_post")
        >>> round(d.norm, 4), d.source["kind"]
        (1.0, 'reading_vector')
    """
    if len(positive) != len(negative):
        raise MechscopeError(f"Reading vectors need pairs: {len(positive)} positive and {len(negative)} negative texts.")
    pos = read_activations(model, positive, hook_name, positive_tokens)
    neg = read_activations(model, negative, hook_name, negative_tokens)
    return Direction(first_principal_component(pos - neg), hook_name, {"kind": "reading_vector", "n_pairs": len(pos)})


def directions_by_layer(model: Any, positive: Sequence[str], negative: Sequence[str], site: str = "resid_post",
                        layers: Sequence[int] | None = None, method: str = "mean_difference", *,
                        positive_tokens: Sequence[str | None] | None = None,
                        negative_tokens: Sequence[str | None] | None = None) -> list[Direction]:
    """One contrastive direction per layer at `site`, from one pass over each side's texts.

    `method`: `mean_difference` or `reading_vector`.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.core.provenance import provenance
        >>> pos, neg = ["the cat sat", "the cat ran"], ["a dog sat", "a dog ran"]
        >>> ds = directions_by_layer(model, pos, neg, "resid_post", layers=[0, 1])
        >>> [d.hook_name for d in ds]
        ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']
        >>> torch.allclose(ds[1].vector, mean_difference(model, pos, neg, "blocks.1.hook_resid_post").vector, atol=1e-5)
        True
        >>> paths = save_directions("cat-vs-dog", ds, provenance(model))
    """
    if method not in ("mean_difference", "reading_vector"):
        raise MechscopeError(f"method={method!r}: use 'mean_difference' or 'reading_vector'.")
    if method == "reading_vector" and len(positive) != len(negative):
        raise MechscopeError(f"Reading vectors need pairs: {len(positive)} positive and {len(negative)} negative texts.")
    hooks = site_hook_names(model, site, list(layers) if layers is not None else None)
    pos = collect_activations(model, list(positive), _positions(model, positive, positive_tokens), hooks)
    neg = collect_activations(model, list(negative), _positions(model, negative, negative_tokens), hooks)
    out = []
    for layer, hook in hooks.items():
        if method == "mean_difference":
            vector, source = pos[layer].mean(0) - neg[layer].mean(0), {"kind": "mean_difference",
                                                                      "n_positive": len(positive),
                                                                      "n_negative": len(negative)}
        else:
            vector, source = first_principal_component(pos[layer] - neg[layer]), {"kind": "reading_vector",
                                                                                   "n_pairs": len(positive)}
        out.append(Direction(vector, hook, {**source, "layer": layer}))
    return out


def from_probe(model: Any, probe: LogisticProbe, hook_name: str, class_index: int = 1) -> Direction:
    """The direction along which probe class `class_index` gains logit, in model units: `weight[c] / std`.

    For two classes the difference `weight[c] - weight[other]` is used (what separates them).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.methods.probe_models import fit_logistic
        >>> X, y = torch.randn(40, 16), torch.arange(40) % 2
        >>> X[y == 1, 0] += 3.0                                  # class 1 sits further along dimension 0
        >>> d = from_probe(model, fit_logistic(X, y), "blocks.0.hook_resid_post")
        >>> int(d.vector.abs().argmax()), d.source["kind"]
        (0, 'probe')
    """
    weight = probe.weight
    if not 0 <= class_index < weight.shape[0]:
        raise MechscopeError(f"Class index {class_index} is out of range: the probe has {weight.shape[0]} classes.")
    w = weight[class_index] - weight[1 - class_index] if weight.shape[0] == 2 else weight[class_index]
    vector = (w / probe.std).float()
    check_width(model, hook_name, vector)
    return Direction(vector, hook_name, {"kind": "probe", "class_index": class_index,
                                         "classes": [str(c) for c in probe.classes]})


def projection_accuracy(direction: Direction | Tensor, positive: Tensor, negative: Tensor) -> float:
    """Pairwise accuracy of a reading vector: the fraction of pairs `i` with `pos_i . v > neg_i . v`.

    Example:
        >>> import torch
        >>> positive, negative = torch.tensor([[2.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [2.0, 1.0]])
        >>> projection_accuracy(torch.tensor([1.0, 0.0]), positive, negative)      # pair 1 projects the wrong way
        0.5
    """
    v = direction.vector if isinstance(direction, Direction) else direction
    return float(((positive.float() @ v.float()) > (negative.float() @ v.float())).double().mean())


def save_directions(stem: str | Path, directions: Sequence[Direction], provenance: dict[str, Any],
                    force: bool = False) -> tuple[Path, Path]:
    """Write `<stem>.safetensors` (`direction_0`, ...) and `<stem>.json` (hooks, sources, provenance).

    Example:
        >>> import torch
        >>> d = Direction(torch.ones(4), "blocks.0.hook_resid_post", {"kind": "vector"})
        >>> tensors, meta = save_directions("dirs", [d], provenance={"model": "tiny"})
        >>> tensors.name, meta.name
        ('dirs.safetensors', 'dirs.json')
    """
    stem = Path(stem)
    tensors_path, json_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    check_writable(json_path, force)
    if not json_path.exists():  # a tensors file without our JSON beside it is someone else's
        check_writable(tensors_path, force)
    tensors = {f"direction_{i}": d.vector.detach().float().contiguous().cpu() for i, d in enumerate(directions)}
    write_bytes(tensors_path, save_safetensors(tensors, metadata={"format": FORMAT}), force=True)
    meta = {"format": FORMAT, "format_version": 1, "tensors": tensors_path.name,
            "directions": [{"key": f"direction_{i}", "hook_name": d.hook_name, "norm": d.norm, "source": d.source}
                           for i, d in enumerate(directions)],
            "provenance": provenance}
    write_json(json_path, meta, force)
    return tensors_path, json_path


def load_directions(stem: str | Path) -> list[Direction]:
    """Read what `save_directions` wrote (give the stem, the `.json` or the `.safetensors` path).

    Example:
        >>> import torch
        >>> _ = save_directions("dirs", [Direction(torch.ones(4), "blocks.0.hook_resid_post", {"kind": "vector"})], {})
        >>> [(d.hook_name, d.vector.tolist()) for d in load_directions("dirs.json")]
        [('blocks.0.hook_resid_post', [1.0, 1.0, 1.0, 1.0])]
    """
    stem = Path(stem)
    json_path = stem.with_suffix(".json")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        tensors = load_safetensors((json_path.parent / meta["tensors"]).read_bytes())
        return [Direction(tensors[row["key"]], row["hook_name"], row.get("source", {})) for row in meta["directions"]]
    except FileNotFoundError as exc:
        raise MechscopeError(f"No saved directions at {json_path}: {exc.strerror}.") from None
    except (KeyError, TypeError, ValueError, SafetensorError) as exc:
        raise MechscopeError(f"{json_path} is not a readable steering-directions file ({exc}).") from None


@dataclass
class Pairs:
    """Contrastive pairs: `positive[i]` against `negative[i]`, each read at its last token or its `*_tokens[i]`.

    Example:
        >>> pairs = Pairs(["I love it"], ["I hate it"], None, None)
        >>> list(zip(pairs.positive, pairs.negative))
        [('I love it', 'I hate it')]
    """

    positive: list[str]
    negative: list[str]
    positive_tokens: list[str | None] | None
    negative_tokens: list[str | None] | None


def load_pairs(path: str | Path) -> Pairs:
    """Read contrastive pairs from JSONL: `{"positive": ..., "negative": ...}` per line.

    Optional `positive_token` / `negative_token`: the substring whose last token is read (e.g. the
    answer letter of an A/B question).

    Example:
        >>> from pathlib import Path
        >>> _ = Path("pairs.jsonl").write_text('{"positive": "Q? A", "negative": "Q? B", "positive_token": "A", "negative_token": "B"}\\n')
        >>> pairs = load_pairs("pairs.jsonl")
        >>> pairs.positive, pairs.negative_tokens
        (['Q? A'], ['B'])
    """
    from mechscope.core.files import iter_jsonl

    pos, neg, pos_tok, neg_tok = [], [], [], []
    try:
        for lineno, row in iter_jsonl(path):
            if not isinstance(row, dict) or "positive" not in row or "negative" not in row:
                raise MechscopeError(f"{path}:{lineno}: each line needs 'positive' and 'negative' texts.")
            pos.append(str(row["positive"]))
            neg.append(str(row["negative"]))
            pos_tok.append(row.get("positive_token"))
            neg_tok.append(row.get("negative_token"))
    except FileNotFoundError:
        raise MechscopeError(f"No pairs file at {path}.") from None
    except ValueError as exc:
        raise MechscopeError(str(exc)) from None
    if not pos:
        raise MechscopeError(f"{path}: no pairs.")
    has_tokens = any(t is not None for t in pos_tok + neg_tok)
    return Pairs(pos, neg, pos_tok if has_tokens else None, neg_tok if has_tokens else None)
