"""Activation store: activations of one or more hook sites over a corpus, in sharded safetensors files.

A store is a folder::

    manifest.json                 # what was cached, and the completed shards
    shard_00000.safetensors       # "acts" [n, d] (float32/float16/bfloat16), "tokens" [n] int32
    shard_00001.safetensors
    ...

Several sites (a transcoder's input and output, or every layer's pair for a cross-layer
transcoder) go into one store whose rows are aligned token by token: site `i` of
`manifest["hook_names"]` is the tensor `site_key(i)` (`"acts"`, `"acts.1"`, `"acts.2"`, ...)
of every shard, of width `manifest["ds"][i]`. Read them with `StoreReader.site_batches`.

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
    >>> pair = cache_activations(model, ["blocks.3.ln2.hook_out", "blocks.3.hook_mlp_out"],  # doctest: +SKIP
    ...                          "mlp3/", n_tokens=100_000)
    >>> x, t = next(open_store("mlp3/").site_batches(4096))                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from mechscope.core.corpus import Source, corpus_fingerprint, iter_token_contexts
from mechscope.core.files import atomic_write_json, claim_output_dir, sha256_file
from mechscope.core.provenance import weights_hash
from mechscope.dictionaries.errors import DictionaryFormatError
from mechscope.dictionaries.streaming import as_hook_list, keep_mask, sites_activations

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_SHARD_NAME = re.compile(r"shard_\d{5}\.safetensors(\.tmp)?")
FORMAT_VERSION = 1
STORE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16,
                                        "bfloat16": torch.bfloat16}
# Manifest keys that must match for a run to resume an existing store.
_IDENTITY_KEYS = ("model_name", "weights_sha256", "hook_names", "context_length", "dtype",
                  "corpus", "corpus_fingerprint", "keep_bos", "contexts_per_shard", "batch_size")


def site_key(index: int) -> str:
    """Shard tensor name of the store's site `index`: `"acts"` for the first, `"acts.{index}"` after it.

    Example:
        >>> [site_key(i) for i in range(3)]
        ['acts', 'acts.1', 'acts.2']
    """
    return "acts" if index == 0 else f"acts.{index}"


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a store folder (a clear error when missing or unreadable).

    Example:
        >>> read_manifest("out/acts")["hook_names"]           # doctest: +SKIP
        ['blocks.15.hook_resid_post']
        >>> read_manifest("empty")
        Traceback (most recent call last):
        ...
        mechscope.dictionaries.errors.DictionaryFormatError: empty/manifest.json: no activation-store manifest (run `mechscope sae cache` first)
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DictionaryFormatError(f"{path}: no activation-store manifest (run `mechscope sae cache` first)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DictionaryFormatError(f"{path}: not valid JSON ({exc.msg})") from exc
    if data.get("format") != "mechscope-activation-store":
        raise DictionaryFormatError(f"{path}: not a mechscope activation-store manifest")
    data.setdefault("hook_names", [data.get("hook_name")])  # stores written before multi-site support
    data.setdefault("ds", [data.get("d")])
    return data


def _corpus_label(source: Source) -> Any:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Sequence):
        return [str(s) for s in source]
    return type(source).__name__


def cache_activations(
    model: Any,
    hook_name: str | Sequence[str],
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
    force: bool = False,
    **document_kwargs: Any,
) -> Path:
    """Cache `n_tokens` activations of `hook_name` (one name, or a list of sites stored row-aligned) into `out_dir`.

    Contexts of `context_length` tokens (BOS first) are packed by
    :func:`mechscope.core.corpus.iter_token_contexts` from `source` (+ `packages`, `split`)
    and run `batch_size` at a time. A shard holds `max(1, shard_tokens // rows_per_context)`
    contexts. If `out_dir` already holds a store made with the same model weights, site,
    corpus and settings, the run resumes after its last completed shard (a mismatch is an
    error naming the key). `out_dir` must be new, empty or mechscope's (`force=True` takes any
    folder); only shard files the manifest does not list are deleted. `fail_after_shards` raises
    `RuntimeError` after that many new shards (a simulated kill, for tests). Returns the folder.

    Example:
        >>> cache_activations(model, "blocks.15.hook_resid_post", "out/acts", n_tokens=500_000)  # doctest: +SKIP
        PosixPath('out/acts')
    """
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(STORE_DTYPES)}, got {dtype!r}")
    if n_tokens <= 0 or batch_size <= 0 or shard_tokens <= 0:
        raise ValueError("n_tokens, batch_size and shard_tokens must be positive")
    sites = as_hook_list(hook_name)
    for name in sites:
        model.check_name(name)
    folder = Path(out_dir)
    if (folder / MANIFEST).is_file() and not force:
        read_manifest(folder)  # a store of ours (written before folders were marked) may be resumed
        force = True
    claim_output_dir(folder, force=force)
    doc_kwargs = {"packages": tuple(packages), "split": split, **document_kwargs}
    rows_per_context = context_length if keep_bos else context_length - 1
    contexts_per_shard = max(1, shard_tokens // rows_per_context)
    identity = {
        "model_name": model.cfg.name, "weights_sha256": weights_hash(model), "hook_name": sites[0], "hook_names": sites,
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
                    "corpus_options": _jsonable(doc_kwargs), "d": None, "ds": None, "n_tokens": 0, "n_contexts": 0,
                    "target_tokens": n_tokens, "complete": False, "shards": []}
    listed = {s["file"] for s in manifest["shards"]}
    for stray in folder.glob("shard_*"):  # half-written or never listed: not part of the store
        if stray.name not in listed and _SHARD_NAME.fullmatch(stray.name):
            logger.info("removing incomplete shard %s", stray)
            stray.unlink()
    manifest["target_tokens"] = max(n_tokens, manifest["n_tokens"])
    if manifest["n_tokens"] >= n_tokens:
        manifest["complete"] = True
        atomic_write_json(manifest_path, manifest)
        return folder

    contexts = iter_token_contexts(model.tokenizer, source, context_length, batch_size=batch_size, **doc_kwargs)
    skip = manifest["n_contexts"]
    new_shards = 0
    acts_parts: list[list[Tensor]] = []
    token_parts: list[Tensor] = []
    shard_contexts = 0
    started = time.perf_counter()

    def flush(final: bool) -> None:
        nonlocal acts_parts, token_parts, shard_contexts, new_shards
        room = n_tokens - manifest["n_tokens"]
        per_site = [torch.cat([part[i] for part in acts_parts])[:room] for i in range(len(sites))]
        toks = torch.cat(token_parts)[:room]
        acts = per_site[0]
        index = len(manifest["shards"])
        name = f"shard_{index:05d}.safetensors"
        tmp = folder / (name + ".tmp")
        tensors = {site_key(i): a.contiguous() for i, a in enumerate(per_site)}
        save_file({**tensors, "tokens": toks.contiguous()}, str(tmp),
                  metadata={"mechscope": json.dumps({"hook_names": sites, "first_context": manifest["n_contexts"]})})
        os.replace(tmp, folder / name)
        entry = {"file": name, "n_tokens": int(acts.shape[0]), "n_contexts": shard_contexts,
                 "first_context": manifest["n_contexts"], "sha256": sha256_file(folder / name)}
        manifest["shards"].append(entry)
        manifest["d"] = int(acts.shape[1])
        manifest["ds"] = [int(a.shape[1]) for a in per_site]
        manifest["n_tokens"] += entry["n_tokens"]
        manifest["n_contexts"] += shard_contexts
        manifest["complete"] = final or manifest["n_tokens"] >= n_tokens
        atomic_write_json(manifest_path, manifest)
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
                acts = sites_activations(model, part, sites)
            keep = keep_mask(part, model.tokenizer, keep_bos=keep_bos).to(acts[0].device)
            acts_parts.append([a[keep].to("cpu", STORE_DTYPES[dtype]) for a in acts])
            token_parts.append(part.to(keep.device)[keep].to("cpu", torch.int32))
            shard_contexts += take
            consumed += take
            pending = sum(a[0].shape[0] for a in acts_parts)
            if shard_contexts == contexts_per_shard or manifest["n_tokens"] + pending >= n_tokens:
                flush(final=False)
            if manifest["n_tokens"] >= n_tokens:
                return folder
    if acts_parts:
        flush(final=True)
    manifest["complete"] = True
    atomic_write_json(manifest_path, manifest)
    if manifest["n_tokens"] < n_tokens:
        logger.warning("corpus ended after %d tokens (asked for %d)", manifest["n_tokens"], n_tokens)
    return folder


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
