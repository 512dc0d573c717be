"""`ActivationCache`: the activations of one run, by hook name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from mechscope.core import names
from mechscope.core.errors import HookNameError, unknown_name_message


class ActivationCache(Mapping[str, Tensor]):
    """A read-only mapping from hook name to activation, with helpful misses.

    Example:
        >>> cache = ActivationCache({"blocks.0.hook_resid_pre": torch.zeros(1, 2, 4)})
        >>> cache["blocks.0.hook_resid_pre"].shape
        torch.Size([1, 2, 4])
    """

    def __init__(self, activations: dict[str, Tensor]) -> None:
        self._acts = activations

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._acts[name]
        except KeyError:
            raise HookNameError(unknown_name_message("cached hook name", name, self._acts)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations)"

    def stack(self, suffix: str) -> Tensor:
        """Stack `blocks.{l}.{suffix}` over layers present in the cache: [n_layers, ...].

        Example: `cache.stack("hook_resid_post")` -> [n_layers, batch, pos, d_model].
        """
        keyed = sorted(
            (layer, act) for name, act in self._acts.items()
            if names.suffix_of(name) == suffix and (layer := names.parse_layer(name)) is not None
        )
        if not keyed:
            raise HookNameError(f"No cached activations end with {suffix!r}.")
        return torch.stack([act for _, act in keyed])
