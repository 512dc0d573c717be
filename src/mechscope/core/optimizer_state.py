"""Optimizer state as safetensors-ready tensors plus JSON-ready settings (no pickle), for every trainer.

`optimizer_to_tensors` flattens `optimizer.state_dict()` into tensors named `state.{i}.{name}`
(scalars such as Adam's `step` become 0-d tensors) and the JSON-ready `param_groups`;
`optimizer_from_tensors` rebuilds the state dict for `optimizer.load_state_dict`.

Example:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.ones(2))
    >>> opt = torch.optim.Adam([p]); p.grad = torch.ones(2); opt.step()
    >>> tensors, meta = optimizer_to_tensors(opt)
    >>> sorted(tensors)
    ['state.0.exp_avg', 'state.0.exp_avg_sq', 'state.0.step']
    >>> opt.load_state_dict(optimizer_from_tensors(tensors, meta))
"""

from __future__ import annotations

from typing import Any

import torch


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`(tensors, meta)`: per-parameter state as tensors `state.{i}.{name}`, and `{"param_groups": ...}`.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = torch.optim.Adam([w], lr=0.1)
        >>> w.sum().backward(); opt.step()
        >>> tensors, meta = optimizer_to_tensors(opt)
        >>> sorted(tensors), meta["param_groups"][0]["lr"]
        (['state.0.exp_avg', 'state.0.exp_avg_sq', 'state.0.step'], 0.1)
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{idx}.{name}"] = t.detach().contiguous().clone()
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `optimizer_to_tensors`: a state dict for `optimizer.load_state_dict`.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = torch.optim.Adam([w], lr=0.1)
        >>> w.sum().backward(); opt.step()
        >>> fresh = torch.optim.Adam([w], lr=0.1)
        >>> fresh.load_state_dict(optimizer_from_tensors(*optimizer_to_tensors(opt)))
        >>> torch.equal(fresh.state[w]["exp_avg"], opt.state[w]["exp_avg"])
        True
    """
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}
