"""Activation store: activations of one hook site over a corpus, in sharded safetensors files.

A store is a folder::

    manifest.json                 # what was cached, and the completed shards
    shard_00000.safetensors       # "acts" [n, d] (float32/float16/bfloat16), "tokens" [n] int32
    shard_00001.safetensors
    ...

The model runs only as far as the site needs (`stop_at_layer = layer + 1`). Positions that
hold the BOS id or padding are left out by default, so each packed context of length `T`
gives `T - 1` activation rows. Shards hold whole contexts, so the number of contexts
consumed fixes where the corpus stream resumes.

Resumable and kill-safe: a shard is written under a temporary name and renamed into place
(`os.replace`, atomic on POSIX) before the manifest, itself written the same way, lists
it. A shard file the manifest does not list is never read and is deleted on resume, so a
killed run leaves nothing that reads as whole, and calling :func:`cache_activations`
again with the same arguments continues after the last listed shard.

Example:
    >>> store = cache_activations(model, "blocks.3.hook_resid_post", "acts/",   # doctest: +SKIP
    ...                           n_tokens=100_000)
    >>> reader = open_store("acts/")                                            # doctest: +SKIP
    >>> next(iter(reader.batches(4096, seed=0))).shape                          # doctest: +SKIP
    torch.Size([4096, 576])
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from mechscope.core import names as hook_names
from mechscope.core.corpus import Source, corpus_fingerprint, iter_token_contexts
from mechscope.core.files import sha256_file
from mechscope.core.provenance import weights_hash
from mechscope.dictionaries.errors import DictionaryFormatError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
STORE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16,
                                        "bfloat16": torch.bfloat16}
# Manifest keys that must match for a run to resume an existing store.
_IDENTITY_KEYS = ("model_name", "weights_sha256", "hook_name", "context_length", "dtype",
                  "corpus", "corpus_fingerprint", "keep_bos", "contexts_per_shard", "batch_size")


def stop_layer_for(model: Any, hook_name: str) -> int | None:
    """Blocks needed to compute `hook_name`: `layer + 1` for block sites, 0 for embeddings, None (all) otherwise.

    Example:
        >>> stop_layer_for(model, "blocks.15.hook_resid_post")   # doctest: +SKIP
        16
    """
    layer = hook_names.parse_layer(hook_name)
    if layer is not None:
        return None if layer + 1 >= model.cfg.n_layers else layer + 1
    if hook_name in (hook_names.EMBED, hook_names.POS_EMBED):
        return 0
    return None


def flatten_site(act: Tensor) -> Tensor:
    """`[batch, pos, ...]` -> `[batch, pos, d]` (per-head sites such as `hook_z` are concatenated over heads)."""
    return act if act.ndim == 3 else act.reshape(*act.shape[:2], -1)


def site_activations(model: Any, ids: Tensor, hook_name: str, attention_mask: Tensor | None = None) -> Tensor:
    """Activations `[batch, pos, d]` at `hook_name`, running the model only as far as needed.

    Example:
        >>> site_activations(model, ids, "blocks.2.hook_resid_post").shape   # doctest: +SKIP
        torch.Size([8, 128, 576])
    """
    _, cache = model.run_with_cache(ids, names=[hook_name], stop_at_layer=stop_layer_for(model, hook_name),
                                    attention_mask=attention_mask)
    act = cache[hook_name]
    if act.shape[0] != ids.shape[0]:  # a broadcast site such as hook_pos_embed
        act = act.expand(ids.shape[0], *act.shape[1:])
    return flatten_site(act)


def keep_mask(ids: Tensor, tokenizer: Any, attention_mask: Tensor | None = None, keep_bos: bool = False) -> Tensor:
    """Boolean `[batch, pos]`: positions to keep (not padding; not BOS unless `keep_bos`).

    A position is BOS when it is position 0 of a packed context holding the BOS id (or any
    position holding the BOS id when the tokenizer's BOS differs from its EOS separator).

    Example:
        >>> keep_mask(torch.tensor([[1, 5, 6]]), tok).tolist()   # doctest: +SKIP
        [[False, True, True]]
    """
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool().clone()
    if keep_bos or tokenizer is None:
        return mask
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    if bos is None:
        bos = eos
    if bos is None:
        return mask
    if bos != eos:
        mask &= ids != bos
    else:
        mask[:, 0] &= ids[:, 0] != bos
    return mask


def iter_site_batches(
    model: Any, hook_name: str, *, source: Source = "default", context_length: int = 128,
    batch_size: int = 4096, contexts_per_forward: int = 32, keep_bos: bool = False,
    shuffle_buffer: int = 0, seed: int = 0, max_tokens: int | None = None,
    dtype: torch.dtype = torch.float32, **document_kwargs: Any,
) -> Iterator[Tensor]:
    """Batches `[batch_size, d]` of activations straight from the model, with no store on disk.

    Rows come in corpus order unless `shuffle_buffer > 0` rows are mixed (seeded). Stops
    after `max_tokens` rows or at the end of the corpus (the last partial batch is dropped).

    Example:
        >>> batches = iter_site_batches(model, "blocks.3.hook_resid_post", batch_size=1024)  # doctest: +SKIP
        >>> Trainer(sae, TrainerConfig(total_steps=100)).fit(batches)                        # doctest: +SKIP
    """
    def rows() -> Iterator[Tensor]:
        seen = 0
        for ids in iter_token_contexts(model.tokenizer, source, context_length,
                                       batch_size=contexts_per_forward, **document_kwargs):
            with torch.no_grad():
                act = site_activations(model, ids, hook_name)
            keep = keep_mask(ids, model.tokenizer, keep_bos=keep_bos).to(act.device)
            chunk = act[keep].to("cpu", dtype)
            if max_tokens is not None:
                chunk = chunk[: max_tokens - seen]
            seen += chunk.shape[0]
            yield chunk
            if max_tokens is not None and seen >= max_tokens:
                return

    yield from _rebatch(rows(), batch_size, shuffle_buffer, torch.Generator().manual_seed(seed))


def _rebatch(chunks: Iterable[Tensor], batch_size: int, buffer_rows: int,
             gen: torch.Generator, drop_last: bool = True) -> Iterator[Tensor]:
    """Cut a stream of `[n_i, d]` chunks into `[batch_size, d]` batches, mixing rows in a buffer.

    With `buffer_rows > 0`, chunks are gathered until the buffer holds `buffer_rows` rows,
    the buffer is permuted, and batches are served from it until half remains; the rest
    is carried into the next fill, so rows mix across chunks (shards).
    """
    pending: list[Tensor] = []
    n_pending = 0
    fill = max(buffer_rows, batch_size)
    for chunk in chunks:
        pending.append(chunk)
        n_pending += chunk.shape[0]
        if n_pending < fill:
            continue
        buf = torch.cat(pending) if len(pending) > 1 else pending[0]
        if buffer_rows > 0:
            buf = buf[torch.randperm(buf.shape[0], generator=gen)]
        keep = (buf.shape[0] // 2) if buffer_rows > 0 else 0
        n_out = ((buf.shape[0] - keep) // batch_size) * batch_size
        for i in range(0, n_out, batch_size):
            yield buf[i: i + batch_size]
        rest = buf[n_out:]
        pending, n_pending = ([rest] if rest.shape[0] else []), rest.shape[0]
    if n_pending:
        buf = torch.cat(pending)
        if buffer_rows > 0:
            buf = buf[torch.randperm(buf.shape[0], generator=gen)]
        end = (buf.shape[0] // batch_size) * batch_size
        for i in range(0, end, batch_size):
            yield buf[i: i + batch_size]
        if not drop_last and end < buf.shape[0]:
            yield buf[end:]


# ----------------------------------------------------------------------------- writing


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)




def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a store folder (a clear error when missing or unreadable)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DictionaryFormatError(f"{path}: no activation-store manifest (run `mechscope sae cache` first)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DictionaryFormatError(f"{path}: not valid JSON ({exc.msg})") from exc
    if data.get("format") != "mechscope-activation-store":
        raise DictionaryFormatError(f"{path}: not a mechscope activation-store manifest")
    return data


def _corpus_label(source: Source) -> Any:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Sequence):
        return [str(s) for s in source]
    return type(source).__name__


def cache_activations(
    model: Any,
    hook_name: str,
    out_dir: str | os.PathLike[str],
    *,
    n_tokens: int,
    source: Source = "default",
    context_length: int = 128,
    dtype: str = "float32",
    batch_size: int = 32,
    shard_tokens: int = 65_536,
    keep_bos: bool = False,
    packages: Sequence[str] = (),
    split: str | None = "train",
    fail_after_shards: int | None = None,
    on_shard: Callable[[dict[str, Any]], None] | None = None,
    **document_kwargs: Any,
) -> Path:
    """Cache `n_tokens` activations of `hook_name` over a corpus into `out_dir`; returns the folder.

    Contexts of `context_length` tokens (BOS first) are packed by
    :func:`mechscope.core.corpus.iter_token_contexts` from `source` (+ `packages`, `split`)
    and run `batch_size` at a time. A shard holds `max(1, shard_tokens // rows_per_context)`
    contexts. If `out_dir` already holds a store made with the same model weights, site,
    corpus and settings, the run resumes after its last completed shard (a mismatch is an
    error naming the key). `fail_after_shards` raises `RuntimeError` after that many new
    shards (a simulated kill, for tests).

    Example:
        >>> cache_activations(model, "blocks.15.hook_resid_post", "out/acts", n_tokens=500_000)  # doctest: +SKIP
        PosixPath('out/acts')
    """
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(STORE_DTYPES)}, got {dtype!r}")
    if n_tokens <= 0 or batch_size <= 0 or shard_tokens <= 0:
        raise ValueError("n_tokens, batch_size and shard_tokens must be positive")
    model.check_name(hook_name)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    doc_kwargs = {"packages": tuple(packages), "split": split, **document_kwargs}
    rows_per_context = context_length if keep_bos else context_length - 1
    contexts_per_shard = max(1, shard_tokens // rows_per_context)
    identity = {
        "model_name": model.cfg.name, "weights_sha256": weights_hash(model), "hook_name": hook_name,
        "context_length": context_length, "dtype": dtype, "corpus": _corpus_label(source),
        "keep_bos": keep_bos, "contexts_per_shard": contexts_per_shard, "batch_size": batch_size,
    }
    manifest_path = folder / MANIFEST
    if manifest_path.exists():
        manifest = read_manifest(folder)
        identity["corpus_fingerprint"] = manifest.get("corpus_fingerprint")
        for key in _IDENTITY_KEYS:
            if key != "corpus_fingerprint" and manifest.get(key) != identity.get(key):
                raise DictionaryFormatError(
                    f"{manifest_path}: cannot resume, {key} is {manifest.get(key)!r} there and {identity.get(key)!r} now")
        if manifest.get("corpus_options") != _jsonable(doc_kwargs):
            raise DictionaryFormatError(f"{manifest_path}: cannot resume, corpus options differ "
                                        f"({manifest.get('corpus_options')} vs {_jsonable(doc_kwargs)})")
        logger.info("resuming %s after %d shards (%d tokens)", folder, len(manifest["shards"]), manifest["n_tokens"])
    else:
        fingerprint = corpus_fingerprint(source, **doc_kwargs)
        identity["corpus_fingerprint"] = fingerprint
        manifest = {"format": "mechscope-activation-store", "format_version": FORMAT_VERSION, **identity,
                    "corpus_options": _jsonable(doc_kwargs), "d": None, "n_tokens": 0, "n_contexts": 0,
                    "target_tokens": n_tokens, "complete": False, "shards": []}
    listed = {s["file"] for s in manifest["shards"]}
    for stray in folder.glob("shard_*"):  # half-written or never listed: not part of the store
        if stray.name not in listed:
            logger.info("removing incomplete shard %s", stray)
            stray.unlink()
    manifest["target_tokens"] = max(n_tokens, manifest["n_tokens"])
    if manifest["n_tokens"] >= n_tokens:
        manifest["complete"] = True
        _write_json_atomic(manifest_path, manifest)
        return folder

    contexts = iter_token_contexts(model.tokenizer, source, context_length, batch_size=batch_size, **doc_kwargs)
    skip = manifest["n_contexts"]
    new_shards = 0
    acts_parts: list[Tensor] = []
    token_parts: list[Tensor] = []
    shard_contexts = 0
    started = time.perf_counter()

    def flush(final: bool) -> None:
        nonlocal acts_parts, token_parts, shard_contexts, new_shards
        acts = torch.cat(acts_parts)
        toks = torch.cat(token_parts)
        room = n_tokens - manifest["n_tokens"]
        acts, toks = acts[:room], toks[:room]
        index = len(manifest["shards"])
        name = f"shard_{index:05d}.safetensors"
        tmp = folder / (name + ".tmp")
        save_file({"acts": acts.contiguous(), "tokens": toks.contiguous()}, str(tmp),
                  metadata={"mechscope": json.dumps({"hook_name": hook_name, "first_context": manifest["n_contexts"]})})
        os.replace(tmp, folder / name)
        entry = {"file": name, "n_tokens": int(acts.shape[0]), "n_contexts": shard_contexts,
                 "first_context": manifest["n_contexts"], "sha256": sha256_file(folder / name)}
        manifest["shards"].append(entry)
        manifest["d"] = int(acts.shape[1])
        manifest["n_tokens"] += entry["n_tokens"]
        manifest["n_contexts"] += shard_contexts
        manifest["complete"] = final or manifest["n_tokens"] >= n_tokens
        _write_json_atomic(manifest_path, manifest)
        rate = manifest["n_tokens"] / max(time.perf_counter() - started, 1e-9)
        logger.info("%s: %d/%d tokens (%.0f tokens/s this run)", name, manifest["n_tokens"], n_tokens, rate)
        if on_shard is not None:
            on_shard(entry)
        acts_parts, token_parts, shard_contexts = [], [], 0
        new_shards += 1
        if fail_after_shards is not None and new_shards >= fail_after_shards and not manifest["complete"]:
            raise RuntimeError(f"simulated failure after {new_shards} shards")

    consumed = 0
    for ids in contexts:
        if consumed + ids.shape[0] <= skip:
            consumed += ids.shape[0]
            continue
        if consumed < skip:
            ids = ids[skip - consumed:]
            consumed = skip
        while ids.shape[0]:
            take = min(ids.shape[0], contexts_per_shard - shard_contexts)
            part, ids = ids[:take], ids[take:]
            with torch.no_grad():
                act = site_activations(model, part, hook_name)
            keep = keep_mask(part, model.tokenizer, keep_bos=keep_bos).to(act.device)
            acts_parts.append(act[keep].to("cpu", STORE_DTYPES[dtype]))
            token_parts.append(part.to(keep.device)[keep].to("cpu", torch.int32))
            shard_contexts += take
            consumed += take
            pending = sum(a.shape[0] for a in acts_parts)
            if shard_contexts == contexts_per_shard or manifest["n_tokens"] + pending >= n_tokens:
                flush(final=False)
            if manifest["n_tokens"] >= n_tokens:
                return folder
    if acts_parts:
        flush(final=True)
    manifest["complete"] = True
    _write_json_atomic(manifest_path, manifest)
    if manifest["n_tokens"] < n_tokens:
        logger.warning("corpus ended after %d tokens (asked for %d)", manifest["n_tokens"], n_tokens)
    return folder


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
