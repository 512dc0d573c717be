"""Composable interventions at any hook site, and a context manager that holds them for any run.

- `Add(direction, coef)`: adds `coef * vector` (coefficient in units of the direction's own norm), or,
  with `site_norm=s`, `coef * s * unit` (coefficient in units of the site's typical activation norm,
  see `typical_norm`).
- `Clamp(sae, latents, value)`: sets SAE latents to `value` by adding `decoder_row * (value - current)`,
  so the SAE's reconstruction error stays in the stream and clamping to the current value is a no-op.
- `Swap(sae, down, up, value)`: clamps `down` latents to 0 and `up` latents to `value` (default: the
  summed activation the `down` latents had at that token), in one edit.
- `Ablate(direction, cap=None)`: removes the component along the direction (`x - (x.u) u`), or with
  `cap=c` only the part above `c` (`x - max(0, x.u - c) u`).

Each takes `where`: `"all"` (default), `"prompt"`, `"generated"` or a list of token indices within each
row's text (negative counts from the end of the prompt). Outside generation every position is a prompt
position, and negative indices count from the end of the input as passed (right padding included).
Interventions apply in the order given; several at one site compose.

Example:
    >>> with steering(model, [Add(direction, 4.0), Clamp(sae, [1234], 8.0)]):   # doctest: +SKIP
    ...     logits = model("I went to the")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from mechscope.core.errors import MechscopeError
from mechscope.dictionaries.base import Dictionary
from mechscope.dictionaries.streaming import flatten_site
from mechscope.features.steering.directions import Direction, check_width

Where = Literal["all", "prompt", "generated"] | Sequence[int]
Hook = tuple[str, Callable[[Tensor, Any], Tensor | None]]


@dataclass
class PositionState:
    """Where the current forward pass sits in each row: generation updates it before every step.

    `offset`: index (in the padded sequence) of the first position of this forward pass;
    `start [batch]`: index of each row's first real token (left padding); `prompt_len [batch]`:
    each row's prompt length (None outside generation: every position is a prompt position).

    Example:
        >>> import torch
        >>> state = PositionState(offset=0, start=torch.tensor([0, 1]), prompt_len=torch.tensor([2, 1]))
        >>> state.mask("generated", batch=2, n_pos=3, device=torch.device("cpu"))     # row 1 is left-padded by one
        tensor([[False, False,  True],
                [False, False,  True]])
    """

    offset: int = 0
    start: Tensor | None = None
    prompt_len: Tensor | None = None

    def mask(self, where: Where, batch: int, n_pos: int, device: torch.device) -> Tensor | None:
        """Bool `[batch, pos]` of the positions `where` selects, or None for every position."""
        if isinstance(where, str) and where == "all":
            return None
        index = torch.arange(self.offset, self.offset + n_pos, device=device).expand(batch, n_pos)
        if self.start is not None:
            index = index - self.start.to(device)[:, None]
        length = self.prompt_len.to(device)[:, None] if self.prompt_len is not None else None
        if where == "prompt":
            return (index >= 0) if length is None else (index >= 0) & (index < length)
        if where == "generated":
            return torch.zeros_like(index, dtype=torch.bool) if length is None else index >= length
        end = length if length is not None else torch.full((batch, 1), n_pos, device=device)
        chosen = torch.zeros_like(index, dtype=torch.bool)
        for p in where:
            chosen |= index == (p + end if p < 0 else torch.full_like(end, p))
        return chosen


def _apply(act: Tensor, new_flat: Tensor, mask: Tensor | None) -> Tensor:
    new = new_flat.reshape(act.shape)
    if mask is None:
        return new
    shape = (*mask.shape, *([1] * (act.ndim - 2)))
    return torch.where(mask.reshape(shape), new, act)


def _check_where(where: Where) -> None:
    if isinstance(where, str):
        if where not in ("all", "prompt", "generated"):
            raise MechscopeError(f"where={where!r}: use 'all', 'prompt', 'generated' or a list of token indices.")
    elif not all(isinstance(p, int) for p in where):
        raise MechscopeError(f"where={where!r}: token indices must be integers.")


class Intervention:
    """Base class: `hooks(model, state)` returns `(hook name, fn)` pairs for `model.hooks`.

    Example:
        >>> import torch
        >>> add = Add(torch.ones(16), 2.0, hook_name="blocks.0.hook_resid_post")
        >>> isinstance(add, Intervention), add.describe()["kind"]
        (True, 'add')
    """

    where: Where

    def validate(self, model: Any) -> None:
        """Raise a one-line `MechscopeError` when this intervention does not fit `model`."""

    def hooks(self, model: Any, state: PositionState) -> list[Hook]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


def _as_direction(direction: Direction | Tensor, hook_name: str | None) -> Direction:
    if isinstance(direction, Direction):
        return direction if hook_name is None else Direction(direction.vector, hook_name, direction.source)
    if hook_name is None:
        raise MechscopeError("A raw vector needs hook_name=... (or pass a Direction).")
    return Direction(torch.as_tensor(direction, dtype=torch.float32), hook_name, {"kind": "vector"})


class _AlongDirection(Intervention):
    """Shared by `Add` and `Ablate`: a `Direction` (or a raw vector with `hook_name`) at its site."""

    direction: Direction | Tensor
    hook_name: str | None

    def __post_init__(self) -> None:
        self.direction = _as_direction(self.direction, self.hook_name)
        _check_where(self.where)

    def validate(self, model: Any) -> None:
        assert isinstance(self.direction, Direction)
        check_width(model, self.direction.hook_name, self.direction.vector)


@dataclass
class Add(_AlongDirection):
    """Add `coef * direction.vector`, or `coef * site_norm * direction.unit` when `site_norm` is given.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> plain = model(ids)
        >>> with steering(model, [Add(torch.ones(16), 4.0, hook_name="blocks.0.hook_resid_post")]):
        ...     steered = model(ids)
        >>> bool((steered - plain).abs().max() > 0), torch.equal(model(ids), plain)   # hooks removed after the block
        (True, True)
    """

    direction: Direction | Tensor
    coef: float
    where: Where = "all"
    site_norm: float | None = None
    hook_name: str | None = None

    @property
    def vector(self) -> Tensor:
        d = self.direction
        assert isinstance(d, Direction)
        return self.coef * (d.vector if self.site_norm is None else self.site_norm * d.unit)

    def hooks(self, model: Any, state: PositionState) -> list[Hook]:
        assert isinstance(self.direction, Direction)
        vector = self.vector.to(model.device, model.dtype)

        def add(act: Tensor, hook: Any) -> Tensor:
            flat = flatten_site(act)
            return _apply(act, flat + vector, state.mask(self.where, act.shape[0], act.shape[1], act.device))

        return [(self.direction.hook_name, add)]

    def describe(self) -> dict[str, Any]:
        assert isinstance(self.direction, Direction)
        return {"kind": "add", "hook_name": self.direction.hook_name, "coef": self.coef,
                "units": "site_norm" if self.site_norm is not None else "direction_norm",
                "site_norm": self.site_norm, "direction_norm": self.direction.norm, "where": _where(self.where),
                "source": self.direction.source}


@dataclass
class Ablate(_AlongDirection):
    """Project the direction out (`x - (x.u) u`), or with `cap` remove only the part above it.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.features.steering.directions import Direction
        >>> direction = Direction(torch.randn(16), "blocks.0.hook_resid_post")
        >>> seen = {}
        >>> read = [("blocks.0.hook_resid_post", lambda act, hook: seen.update(act=act))]
        >>> with torch.no_grad(), steering(model, [Ablate(direction)]), model.hooks(read):
        ...     _ = model(torch.tensor([[1, 2, 3]]))
        >>> float((seen["act"] @ direction.unit).abs().max()) < 1e-5             # nothing left along it
        True
    """

    direction: Direction | Tensor
    cap: float | None = None
    where: Where = "all"
    hook_name: str | None = None

    def hooks(self, model: Any, state: PositionState) -> list[Hook]:
        assert isinstance(self.direction, Direction)
        unit = self.direction.unit.to(model.device, model.dtype)

        def ablate(act: Tensor, hook: Any) -> Tensor:
            flat = flatten_site(act)
            proj = flat @ unit
            amount = proj if self.cap is None else (proj - self.cap).clamp_min(0)
            new = flat - amount[..., None] * unit
            return _apply(act, new, state.mask(self.where, act.shape[0], act.shape[1], act.device))

        return [(self.direction.hook_name, ablate)]

    def describe(self) -> dict[str, Any]:
        assert isinstance(self.direction, Direction)
        return {"kind": "ablate", "hook_name": self.direction.hook_name, "cap": self.cap,
                "where": _where(self.where), "source": self.direction.source}


def _where(where: Where) -> str | list[int]:
    return where if isinstance(where, str) else list(where)


@dataclass
class _LatentEdit(Intervention):
    """Shared by `Clamp` and `Swap`: set some latents of `sae` to targets, as `W_dec * (target - current)`."""

    sae: Dictionary
    where: Where = field(default="all", kw_only=True)

    def edited(self) -> list[int]:
        """The latents this edit sets, in the order `targets` returns their values."""
        raise NotImplementedError

    def targets(self, current: Tensor) -> Tensor:
        """Target values `[n, k]` of `edited()` latents from their current values `[n, k]`."""
        raise NotImplementedError

    def validate(self, model: Any) -> None:
        cfg = self.sae.cfg
        for latent in self.edited():
            if not isinstance(latent, int) or not 0 <= latent < cfg.d_sae:
                raise MechscopeError(f"Latent {latent} is out of range: this dictionary has latents 0..{cfg.d_sae - 1}.")
        if not cfg.hook_name:
            raise MechscopeError("The dictionary's config names no hook site; set cfg.hook_name.")
        model.check_name(cfg.hook_name)
        model.check_name(cfg.hook_name_out or cfg.hook_name)
        check_width(model, cfg.hook_name, torch.zeros(cfg.d_in))
        check_width(model, cfg.hook_name_out or cfg.hook_name, torch.zeros(int(cfg.d_out or cfg.d_in)))
        _check_where(self.where)

    def hooks(self, model: Any, state: PositionState) -> list[Hook]:
        cfg = self.sae.cfg
        index = torch.tensor(self.edited(), dtype=torch.long, device=self.sae.W_dec.device)
        rows = (self.sae.W_dec.detach()[index] / float(cfg.output_scale or 1.0)).to(model.device, model.dtype)
        read_name, write_name = cfg.hook_name, cfg.hook_name_out or cfg.hook_name
        stash: dict[str, Tensor] = {}

        def read(act: Tensor, hook: Any) -> None:
            flat = flatten_site(act)
            with torch.no_grad():
                codes = self.sae.encode(flat.reshape(-1, flat.shape[-1]))
            current = codes[:, index.to(codes.device)]
            change = (self.targets(current) - current).to(model.dtype)
            stash["delta"] = (change @ rows).reshape(*flat.shape[:2], -1)

        def write(act: Tensor, hook: Any) -> Tensor:
            flat = flatten_site(act)
            new = flat + stash.pop("delta").to(flat.device)
            return _apply(act, new, state.mask(self.where, act.shape[0], act.shape[1], act.device))

        if read_name == write_name:
            def both(act: Tensor, hook: Any) -> Tensor:
                read(act, hook)
                return write(act, hook)
            return [(read_name, both)]
        return [(read_name, read), (write_name, write)]


@dataclass
class Clamp(_LatentEdit):
    """Set latents `latents` of `sae` to `value` (one value, or one per latent).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> with steering(model, [Clamp(sae, [3], 0.0, where=[-1])]):     # last token only
        ...     steered = model(ids)
        >>> changed = (steered - model(ids)).abs().amax(-1)[0] > 0
        >>> changed[:2].tolist()                                           # earlier positions untouched
        [False, False]
        >>> Clamp(sae, [3], 5.0).describe()
        {'kind': 'clamp', 'hook_name': 'blocks.0.hook_resid_post', 'latents': [3], 'value': 5.0, 'where': 'all'}
    """

    latents: int | Sequence[int] = ()
    value: float | Sequence[float] = 0.0

    def edited(self) -> list[int]:
        return [self.latents] if isinstance(self.latents, int) else list(self.latents)

    def validate(self, model: Any) -> None:
        super().validate(model)
        if not isinstance(self.value, (int, float)) and len(self.value) != len(self.edited()):
            raise MechscopeError(f"Clamp got {len(self.value)} values for {len(self.edited())} latents.")

    def targets(self, current: Tensor) -> Tensor:
        value = torch.as_tensor(self.value, dtype=current.dtype, device=current.device)
        return value.expand_as(current)

    def describe(self) -> dict[str, Any]:
        return {"kind": "clamp", "hook_name": self.sae.cfg.hook_name_out or self.sae.cfg.hook_name,
                "latents": self.edited(), "value": self.value, "where": _where(self.where)}


@dataclass
class Swap(_LatentEdit):
    """Turn latents `down` to 0 and `up` to `value` (default: the summed activation `down` had there).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> swap = Swap(sae, down=[1, 2], up=[7])
        >>> swap.targets(torch.tensor([[0.5, 1.5, 0.0]]))         # down latents to 0, up gets their sum
        tensor([[0., 0., 2.]])
        >>> with steering(model, [swap]):
        ...     logits = model(torch.tensor([[1, 2, 3]]))
        >>> logits.shape
        torch.Size([1, 3, 9])
    """

    down: Sequence[int] = ()
    up: Sequence[int] = ()
    value: float | None = None

    def edited(self) -> list[int]:
        return [*self.down, *self.up]

    def targets(self, current: Tensor) -> Tensor:
        n_down = len(self.down)
        up = current[:, :n_down].sum(-1, keepdim=True) if self.value is None else torch.full_like(current[:, :1],
                                                                                                  self.value)
        return torch.cat([torch.zeros_like(current[:, :n_down]), up.expand(-1, len(self.up))], dim=-1)

    def describe(self) -> dict[str, Any]:
        return {"kind": "swap", "hook_name": self.sae.cfg.hook_name_out or self.sae.cfg.hook_name,
                "down": list(self.down), "up": list(self.up), "value": self.value, "where": _where(self.where)}


def typical_norm(model: Any, hook_name: str, texts: Sequence[str]) -> float:
    """Mean L2 norm of the activation at `hook_name` over the tokens of `texts`, leaving out position 0.

    Position 0 (often BOS) is left out: its norm is many times that of other tokens in most models.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> norm = typical_norm(model, "blocks.1.hook_resid_post", ["the cat sat", "a dog ran on the mat"])
        >>> norm > 0
        True
    """
    model.check_name(hook_name)
    batch = model.tokenize(list(texts))
    _, cache = model.run_with_cache(batch, names=[hook_name])
    act = flatten_site(cache[hook_name]).float()
    mask = batch.attention_mask.to(act.device).bool().clone()
    mask[:, 0] = False
    norms = act.norm(dim=-1)[mask]
    if norms.numel() == 0:
        raise MechscopeError("typical_norm needs texts with at least two tokens.")
    return float(norms.mean())


@contextmanager
def steering(model: Any, interventions: Sequence[Intervention],
             state: PositionState | None = None) -> Iterator[PositionState]:
    """Within the block every run (forward, cache, generation) of `model` has the interventions applied.

    Yields the `PositionState` the hooks read; `generate` moves it along, plain runs leave it at 0.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> model = tiny_model(vocab_size=50)       # 2-layer random Llama, width 16
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> with steering(model, [Add(torch.ones(16), 2.0, hook_name="blocks.1.hook_resid_pre")]) as state:
        ...     steered = model(ids)
        >>> state.offset, bool((steered - model(ids)).abs().max() > 0)
        (0, True)
    """
    state = state or PositionState()
    for intervention in interventions:
        intervention.validate(model)
    hooks = [hook for intervention in interventions for hook in intervention.hooks(model, state)]
    with model.hooks(hooks):
        yield state
