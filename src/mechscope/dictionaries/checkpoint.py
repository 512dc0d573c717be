"""Training checkpoints: weights and optimizer state in safetensors, everything else in JSON, each file hashed.

A checkpoint is a folder `step_{step:08d}` holding `dictionary.safetensors` (the module's state
dict), `optimizer.safetensors` (per-parameter tensors, keys `state.{i}.{name}`), and
`state.json` (step, optimizer hyper-parameters, dictionary config, trainer counters, the
random generator state, and `files`: the sha256 of each safetensors file). It is written to a
temporary folder and renamed into place, so a killed run never leaves a half-written checkpoint
under a final name. Loading verifies every hash and the state's keys, so a damaged file (even
one whose header still parses), a truncated or incomplete state file or a missing file gives
one `CheckpointError` naming the file. Nothing is pickled.

Example:
    >>> latest_checkpoint("/nonexistent") is None
    True
    >>> differences({"lr": 1e-3, "seed": 0}, {"lr": 2e-3, "seed": 0})
    ['lr 0.001 -> 0.002']
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mechscope.core.files import atomic_write_json, sha256_file
from mechscope.core.optimizer_state import optimizer_from_tensors, optimizer_to_tensors
from mechscope.dictionaries.errors import CheckpointError

STATE_FILE = "state.json"
WEIGHTS_FILE = "dictionary.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
REQUIRED_STATE_KEYS = ("step", "optimizer", "files", "dictionary_config", "trainer_config", "tokens_since_fired",
                       "generator_state", "world_size")


def generator_state_to_json(gen: torch.Generator) -> str:
    """A generator's state as base64 text (its bytes, unchanged).

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> text = generator_state_to_json(gen)
        >>> isinstance(text, str), torch.equal(generator_state_from_json(text), gen.get_state())
        (True, True)
    """
    return base64.b64encode(bytes(gen.get_state().tolist())).decode("ascii")


def generator_state_from_json(text: str) -> torch.Tensor:
    """Inverse of `generator_state_to_json`: the ByteTensor to pass to `Generator.set_state`.

    Example:
        >>> gen = torch.Generator().manual_seed(1)
        >>> saved = generator_state_to_json(gen)
        >>> first = torch.rand(2, generator=gen)
        >>> _ = gen.set_state(generator_state_from_json(saved))
        >>> torch.equal(torch.rand(2, generator=gen), first)       # the same draws again
        True
    """
    return torch.tensor(list(base64.b64decode(text)), dtype=torch.uint8)


def differences(saved: dict[str, Any], current: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """`'key old -> new'` for each key whose value differs between two settings dicts (sorted by key).

    Example:
        >>> differences({"k": 32, "lr": 1e-3, "seed": 0}, {"k": 64, "seed": 1}, ignore=["seed"])
        ['k 32 -> 64', 'lr 0.001 -> None']
    """
    skip = set(ignore)
    keys = sorted((set(saved) | set(current)) - skip)
    return [f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def save_checkpoint(
    root: str | Path, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
) -> Path:
    """Write the checkpoint of `step` under `root` and return its folder.

    `state` must hold the other keys `load_checkpoint` checks for (`REQUIRED_STATE_KEYS`).

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> sae = make_dictionary("relu", d_in=4, d_sae=8, seed=0)
        >>> opt = torch.optim.Adam(sae.parameters())
        >>> state = {k: None for k in REQUIRED_STATE_KEYS if k not in ("step", "optimizer", "files")}
        >>> save_checkpoint("ckpts", 10, sae, opt, state).name
        'step_00000010'
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(weights, str(tmp / WEIGHTS_FILE))
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    save_file(opt_tensors, str(tmp / OPTIMIZER_FILE))
    files = {name: sha256_file(tmp / name) for name in (WEIGHTS_FILE, OPTIMIZER_FILE)}
    atomic_write_json(tmp / STATE_FILE, {"step": step, "optimizer": opt_meta, "files": files, **state})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first.

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> sae = make_dictionary("relu", d_in=4, d_sae=8, seed=0)
        >>> state = {k: None for k in REQUIRED_STATE_KEYS if k not in ("step", "optimizer", "files")}
        >>> for step in (20, 5):
        ...     _ = save_checkpoint("runs", step, sae, torch.optim.Adam(sae.parameters()), state)
        >>> [p.name for p in list_checkpoints("runs")]
        ['step_00000005', 'step_00000020']
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file())


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, `root` itself if it is one, or None.

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> sae = make_dictionary("relu", d_in=4, d_sae=8, seed=0)
        >>> state = {k: None for k in REQUIRED_STATE_KEYS if k not in ("step", "optimizer", "files")}
        >>> for step in (1, 2):
        ...     _ = save_checkpoint("latest", step, sae, torch.optim.Adam(sae.parameters()), state)
        >>> latest_checkpoint("latest").name, latest_checkpoint("latest/step_00000001").name
        ('step_00000002', 'step_00000001')
    """
    root = Path(root)
    if (root / STATE_FILE).is_file():
        return root
    found = list_checkpoints(root)
    return found[-1] if found else None


def _read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is unreadable or truncated ({err}); resume from an earlier checkpoint") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint state (a JSON object is expected)")
    missing = [k for k in REQUIRED_STATE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {', '.join(missing)}; resume from an earlier checkpoint")
    return state


def _load_verified(folder: Path, name: str, expected: str) -> dict[str, torch.Tensor]:
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; resume from an earlier checkpoint")
    if sha256_file(path) != expected:
        raise CheckpointError(f"{path} is damaged: its sha256 differs from the one recorded in {STATE_FILE}")
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path} is unreadable: {err}") from err


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read `(module_state_dict, optimizer_state_dict, state)` from a checkpoint (or its parent folder), verified.

    Example:
        >>> from mechscope.dictionaries import make_dictionary
        >>> sae = make_dictionary("relu", d_in=4, d_sae=8, seed=0)
        >>> state = {k: 0 for k in REQUIRED_STATE_KEYS if k not in ("step", "optimizer", "files")}
        >>> _ = save_checkpoint("resume", 3, sae, torch.optim.Adam(sae.parameters()), state)
        >>> weights, opt_state, state = load_checkpoint("resume")
        >>> state["step"], torch.equal(weights["W_dec"], sae.W_dec), sorted(opt_state)
        (3, True, ['param_groups', 'state'])
        >>> load_checkpoint("nowhere")
        Traceback (most recent call last):
        ...
        mechscope.dictionaries.errors.CheckpointError: no checkpoint found at nowhere (expected step_*/state.json)
    """
    folder = latest_checkpoint(path)
    if folder is None:
        raise CheckpointError(f"no checkpoint found at {path} (expected step_*/{STATE_FILE})")
    state = _read_state(folder)
    files = state.pop("files")
    for name in (WEIGHTS_FILE, OPTIMIZER_FILE):
        if not isinstance(files, dict) or name not in files:
            raise CheckpointError(f"{folder / STATE_FILE} records no sha256 for {name}; resume from another checkpoint")
    weights = _load_verified(folder, WEIGHTS_FILE, files[WEIGHTS_FILE])
    opt_tensors = _load_verified(folder, OPTIMIZER_FILE, files[OPTIMIZER_FILE])
    return weights, optimizer_from_tensors(opt_tensors, state.pop("optimizer")), state
