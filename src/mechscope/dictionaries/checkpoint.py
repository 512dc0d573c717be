"""Training checkpoints: weights and optimizer state in safetensors, everything else in JSON.

A checkpoint is a folder `step_{step:08d}` holding `dictionary.safetensors` (the module's state
dict), `optimizer.safetensors` (per-parameter tensors, keys `state.{i}.{name}`), and
`state.json` (step, optimizer hyper-parameters, dictionary config, trainer counters and the
random generator state). It is written to a temporary folder and renamed into place, so a
killed run never leaves a half-written checkpoint under a final name. Nothing is pickled.

Example:
    >>> latest_checkpoint("/nonexistent") is None
    True
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mechscope.dictionaries.errors import CheckpointError

STATE_FILE = "state.json"
WEIGHTS_FILE = "dictionary.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


def generator_state_to_json(gen: torch.Generator) -> str:
    """A generator's state as base64 text (its bytes, unchanged)."""
    return base64.b64encode(bytes(gen.get_state().tolist())).decode("ascii")


def generator_state_from_json(text: str) -> torch.Tensor:
    """Inverse of `generator_state_to_json`: the ByteTensor to pass to `Generator.set_state`."""
    return torch.tensor(list(base64.b64decode(text)), dtype=torch.uint8)


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{idx}.{name}"] = t.detach().contiguous().clone()
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    root: str | Path, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
) -> Path:
    """Write the checkpoint of `step` under `root` and return its folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(weights, str(tmp / WEIGHTS_FILE))
    opt_tensors, opt_meta = _optimizer_to_files(optimizer)
    save_file(opt_tensors, str(tmp / OPTIMIZER_FILE))
    with open(tmp / STATE_FILE, "w") as f:
        json.dump({"step": step, "optimizer": opt_meta, **state}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file())


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, `root` itself if it is one, or None."""
    root = Path(root)
    if (root / STATE_FILE).is_file():
        return root
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read `(module_state_dict, optimizer_state_dict, state)` from a checkpoint (or its parent folder)."""
    folder = latest_checkpoint(path)
    if folder is None:
        raise CheckpointError(f"no checkpoint found at {path} (expected step_*/{STATE_FILE})")
    try:
        with open(folder / STATE_FILE) as f:
            state = json.load(f)
        weights = load_file(str(folder / WEIGHTS_FILE))
        opt_tensors = load_file(str(folder / OPTIMIZER_FILE))
    except (OSError, json.JSONDecodeError, SafetensorError) as err:
        raise CheckpointError(f"checkpoint {folder} is unreadable: {err}") from err
    return weights, _optimizer_from_files(opt_tensors, state.pop("optimizer")), state
