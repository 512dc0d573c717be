"""`collect_features`: one pass over a corpus fills a dictionary's feature database.

The model runs only up to the dictionary's input site (`stop_at_layer`), contexts are encoded
in batches, and an `Accumulator` keeps every statistic exactly (see `features/accumulate.py`).
After every `checkpoint_contexts` contexts the state is committed into the database's
`collect_state` table in one SQLite transaction, so a killed run resumes from the last
checkpoint when called again with the same arguments (any batch size); the result equals
an uninterrupted run. BOS positions (and padding) are no tokens: never examples, not counted.

Example:
    >>> from mechscope.dictionaries import load_dictionary
    >>> sae = load_dictionary("out/sae-smollm2-l15")                          # doctest: +SKIP
    >>> collect_features(model, sae, "out/features.db", n_tokens=100_000)     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

import mechscope
from mechscope.core.corpus import Source, corpus_fingerprint, iter_token_contexts
from mechscope.core.errors import MechscopeError
from mechscope.core.provenance import provenance, weights_hash
from mechscope.dictionaries import Dictionary, SparseCodes
from mechscope.dictionaries.store import MANIFEST, site_key
from mechscope.dictionaries.store_reader import open_store
from mechscope.dictionaries.streaming import keep_mask, site_activations
from mechscope.features.accumulate import Accumulator, CollectConfig
from mechscope.features.database import FeatureDatabase, is_feature_database
from mechscope.features.write import write_results

logger = logging.getLogger(__name__)


def collect_features(
    model: Any, dictionary: Dictionary, db_path: str | Path, *, source: Source = "default",
    n_tokens: int | None = None, context_length: int = 128, batch_size: int = 16,
    checkpoint_contexts: int | None = None, checkpoint_seconds: float = 300.0,
    config: CollectConfig | None = None, progress: bool | None = None,
    dictionary_path: str | Path | None = None, force: bool = False,
    on_checkpoint: Callable[[int], None] | None = None, **document_kwargs: Any,
) -> Path:
    """Collect examples and statistics of every latent of `dictionary` into the SQLite file `db_path`.

    `n_tokens` caps the corpus (rounded up to whole contexts; None: the whole source). `source`
    may also be an activation store of the dictionary's site (written without BOS rows): its
    contexts are rebuilt from the stored tokens and encoded without running the model.
    `document_kwargs` go to `iter_documents` (`packages`, `split`, `text_field`). A finished
    database is refused unless `force`; an unfinished one with the same identity resumes.
    The resume state is committed every `checkpoint_contexts` contexts when given, else every
    `checkpoint_seconds` (the state of a 9k-latent dictionary is about 180 MB), and at the end of
    the pass; `on_checkpoint(contexts_done)` runs after each.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> _ = open("corpus.txt", "w").write("the cat sat on a mat\\n\\nthe dog ran on a mat\\n")
        >>> path = collect_features(model, sae, "features.db", source="corpus.txt", context_length=4,
        ...                         config=CollectConfig(top_k=5, random_pool=8))
        >>> db = FeatureDatabase.open(path)
        >>> db.meta()["n_tokens"], db.d_sae, len(db.examples(db.live_latents()[0], "top")) <= 5
        (11, 32, True)
    """
    cfg = config or CollectConfig()
    hook = dictionary.cfg.hook_name
    if not hook:
        raise MechscopeError("the dictionary names no hook site (cfg.hook_name); it cannot be run on a model")
    model.check_name(hook)
    d_sae = dictionary.cfg.d_sae
    store = _open_store(source, hook, model)
    if store is not None:
        context_length = int(store.manifest["context_length"])
    max_contexts = None if n_tokens is None else -(-n_tokens // (context_length - 1))
    identity = {
        "dictionary_sha256": weights_hash(dictionary), "model_weights_sha256": weights_hash(model),
        "model": model.cfg.name, "hook_name": hook, "d_sae": d_sae, "context_length": context_length,
        "max_contexts": max_contexts, "corpus": str(source),
        "corpus_fingerprint": (store.manifest["corpus_fingerprint"] if store is not None
                               else corpus_fingerprint(source, **document_kwargs)),
        "document_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in document_kwargs.items()},
        "config": cfg.to_dict(),
    }
    db, acc = _open_or_resume(Path(db_path), identity, cfg, force)
    if dictionary_path is not None:
        db.set_meta({"dictionary_path": str(Path(dictionary_path).resolve())})
    bar = tqdm(total=None if max_contexts is None else max_contexts * (context_length - 1), initial=acc.tokens,
               unit="tok", desc="collect", disable=not (progress if progress is not None else sys.stderr.isatty()))
    since, last = 0, time.monotonic()
    dictionary.eval()
    try:
        stream = (_store_batches(store, dictionary, model.tokenizer, batch_size, max_contexts, acc.contexts)
                  if store is not None else
                  ((first, ids, *encode_contexts_sparse(model, dictionary, ids)) for first, ids in
                   _batches(model.tokenizer, source, context_length, batch_size, max_contexts, acc.contexts,
                            document_kwargs)))
        for first, ids, acts, keep in stream:
            before = acc.tokens
            acc.update(ids, acts, first_context=first, keep=keep)
            bar.update(acc.tokens - before)
            since += ids.shape[0]
            due = (since >= checkpoint_contexts if checkpoint_contexts is not None
                   else time.monotonic() - last >= checkpoint_seconds)
            if due:
                _checkpoint(db, acc, on_checkpoint)
                since, last = 0, time.monotonic()
        if acc.tokens == 0:
            raise MechscopeError(f"the corpus {source!r} gave no tokens to collect over")
        if since:  # a kill during the final write resumes straight to it
            _checkpoint(db, acc, on_checkpoint)
        meta = {**identity, "schema_created": time.time(), "mechscope_version": mechscope.__version__,
                "provenance": provenance(model, seed=cfg.seed, dictionary_sha256=identity["dictionary_sha256"])}
        write_results(db, acc, dictionary, model, meta)
    finally:
        bar.close()
        db.close()
    return Path(db_path)


@torch.no_grad()
def encode_contexts(model: Any, dictionary: Dictionary, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Latent activations `[batch, pos, d_sae]` (float32, CPU) of contexts `ids`, and the keep mask (no BOS).

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries.relu import ReluSAE, ReluSAEConfig
        >>> model = tiny_model()       # 2-layer random Llama, width 16, word-level tokenizer
        >>> sae = ReluSAE(ReluSAEConfig(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_post"), seed=0)
        >>> acts, keep = encode_contexts(model, sae, torch.tensor([[0, 1, 2, 3]]))    # <s> the cat sat
        >>> acts.shape, keep.tolist(), bool((acts >= 0).all())
        (torch.Size([1, 4, 32]), [[False, True, True, True]], True)
    """
    acts = dictionary.encode(_site_input(model, dictionary, ids)).float().cpu()
    # A NaN or Inf makes the sum non-finite; only then (or on a float32 overflow of the sum) does
    # the element-wise check run, so the common case costs one reduction.
    if not torch.isfinite(acts.sum()) and not torch.isfinite(acts).all():
        raise MechscopeError(NON_FINITE)
    return acts.view(*ids.shape, -1), keep_mask(ids, model.tokenizer)


@torch.no_grad()
def encode_contexts_sparse(model: Any, dictionary: Dictionary, ids: Tensor) -> tuple[SparseCodes, Tensor]:
    """`encode_contexts` as `SparseCodes` of the `batch * pos` tokens (row `b * pos + p`), and the keep mask.

    A TopK dictionary never builds the dense `[tokens, d_sae]` matrix here.

    Example:
        >>> import torch
        >>> from mechscope.core.examples import tiny_model
        >>> from mechscope.dictionaries import make_dictionary
        >>> model = tiny_model()
        >>> sae = make_dictionary("topk", d_in=16, d_sae=32, k=3, seed=0, hook_name="blocks.0.hook_resid_post")
        >>> ids = torch.tensor([[0, 1, 2, 3]])
        >>> codes, keep = encode_contexts_sparse(model, sae, ids)
        >>> torch.equal(codes.to_dense().view(1, 4, 32), encode_contexts(model, sae, ids)[0]), len(codes.vals) <= 12
        (True, True)
    """
    codes = dictionary.encode_sparse(_site_input(model, dictionary, ids))
    codes = SparseCodes(codes.rows.cpu(), codes.cols.cpu(), codes.vals.float().cpu(), codes.batch, codes.d_sae)
    if not torch.isfinite(codes.vals).all():
        raise MechscopeError(NON_FINITE)
    return codes, keep_mask(ids, model.tokenizer)


NON_FINITE = "the dictionary produced NaN or Inf activations on this batch of contexts"


def _site_input(model: Any, dictionary: Dictionary, ids: Tensor) -> Tensor:
    """The dictionary's input `[batch * pos, d_in]` on its device: the model run up to its site."""
    x = site_activations(model, ids, dictionary.cfg.hook_name)  # type: ignore[arg-type]
    if x.shape[-1] != dictionary.cfg.d_in:
        raise MechscopeError(f"the dictionary reads width {dictionary.cfg.d_in} but {dictionary.cfg.hook_name} "
                             f"has width {x.shape[-1]} on {model.cfg.name}")
    return x.reshape(-1, x.shape[-1]).to(next(dictionary.parameters()).device)


def _batches(tokenizer: Any, source: Source, context_length: int, batch_size: int, max_contexts: int | None,
             skip: int, document_kwargs: dict[str, Any]) -> Iterator[tuple[int, Tensor]]:
    """(index of the first context, ids `[batch, T]`) after skipping `skip` contexts already done."""
    stream = iter_token_contexts(tokenizer, source, context_length, batch_size=max(batch_size, 64),
                                 max_contexts=max_contexts, **document_kwargs)
    index, rows = 0, []
    for block in stream:
        for row in block:
            if index >= skip:
                rows.append(row)
            index += 1
            if len(rows) == batch_size:
                yield index - len(rows), torch.stack(rows)
                rows = []
    if rows:
        yield index - len(rows), torch.stack(rows)


def _open_store(source: Source, hook: str, model: Any) -> Any:
    """The activation store at `source` (a folder with a store manifest), checked against the model; else None."""
    if not isinstance(source, (str, Path)) or not (Path(source) / MANIFEST).is_file():
        return None
    reader = open_store(source)
    if reader.manifest.get("keep_bos"):
        raise MechscopeError(f"{source} keeps BOS rows; collect from a store written without --keep-bos")
    if hook not in reader.hook_names:
        raise MechscopeError(f"{source} holds {reader.hook_names}, not the dictionary's site {hook}")
    if reader.manifest.get("weights_sha256") not in (None, weights_hash(model)):
        raise MechscopeError(f"{source} was cached from other model weights than {model.cfg.name}'s")
    return reader


@torch.no_grad()
def _store_batches(reader: Any, dictionary: Dictionary, tokenizer: Any, batch_size: int, max_contexts: int | None,
                   skip: int) -> Iterator[tuple[int, Tensor, SparseCodes, Tensor]]:
    """Contexts rebuilt from a store (each context's `T - 1` rows after its BOS), encoded without the model."""
    T = int(reader.manifest["context_length"])
    key = site_key(reader.site_index(dictionary.cfg.hook_name))  # type: ignore[arg-type]
    bos = getattr(tokenizer, "bos_token_id", None)
    bos = int(bos if bos is not None else tokenizer.eos_token_id)
    for index, entry in enumerate(reader.manifest["shards"]):
        first, n_ctx = int(entry["first_context"]), int(entry["n_tokens"]) // (T - 1)
        if entry["n_tokens"] > int(entry["n_contexts"]) * (T - 1):
            raise MechscopeError(f"{reader.folder}: shard {entry['file']} is not whole contexts of {T - 1} rows")
        if first + n_ctx <= skip:
            continue
        rows = n_ctx * (T - 1)  # a store cut at its token target ends in a partial context: left out
        x = reader.load_shard(index, key)[:rows].float().view(n_ctx, T - 1, -1)
        tok = reader.load_shard(index, "tokens")[:rows].long().view(n_ctx, T - 1)
        for start in range(max(0, skip - first), n_ctx, batch_size):
            stop = min(start + batch_size, n_ctx)
            if max_contexts is not None:
                stop = min(stop, max_contexts - first)
            if stop <= start:
                return
            ids = torch.cat([torch.full((stop - start, 1), bos), tok[start:stop]], dim=1)
            codes = dictionary.encode_sparse(x[start:stop].reshape(-1, x.shape[-1]))
            if not torch.isfinite(codes.vals).all():
                raise MechscopeError(NON_FINITE)
            rows = codes.rows // (T - 1) * T + codes.rows % (T - 1) + 1  # row of the same token after its BOS
            keep = torch.ones_like(ids, dtype=torch.bool)
            keep[:, 0] = False
            yield first + start, ids, SparseCodes(rows, codes.cols, codes.vals.float(), ids.numel(), codes.d_sae), keep


def _checkpoint(db: FeatureDatabase, acc: Accumulator, on_checkpoint: Callable[[int], None] | None) -> None:
    with db.con:
        db.con.execute("INSERT OR REPLACE INTO collect_state (id, contexts_done, tokens_done, state) "
                       "VALUES (1, ?, ?, ?)", (acc.contexts, acc.tokens, acc.to_bytes()))
    if on_checkpoint is not None:
        on_checkpoint(acc.contexts)


def _open_or_resume(path: Path, identity: dict[str, Any], cfg: CollectConfig,
                    force: bool) -> tuple[FeatureDatabase, Accumulator]:
    fresh = Accumulator(identity["d_sae"], cfg, identity["context_length"])
    if path.exists() and is_feature_database(path) and not force:
        db = FeatureDatabase.open(path, require_complete=False)
        meta = db.meta()
        if meta.get("complete"):
            db.close()
            raise MechscopeError(f"{path} already holds a finished collection; pass --force to collect again")
        if meta.get("identity") != identity:
            db.close()
            raise MechscopeError(f"{path} holds an unfinished collection with other settings (model, dictionary, "
                                 "corpus or config differ); use another path or pass --force to start over")
        row = db.con.execute("SELECT state FROM collect_state WHERE id = 1").fetchone()
        if row is None:
            return db, fresh
        acc = Accumulator.from_bytes(row[0], identity["d_sae"], cfg, identity["context_length"])
        logger.info("resuming %s after %d contexts (%d tokens)", path, acc.contexts, acc.tokens)
        return db, acc
    db = FeatureDatabase.create(path, force=force)
    db.set_meta({"identity": identity, "d_sae": identity["d_sae"]})
    return db, fresh

