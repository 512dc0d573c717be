"""Activation store: contents, BOS handling, kill-safe resume, shuffled reading, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.core.corpus import iter_token_contexts
from mechscope.core.errors import OutputExistsError
from mechscope.dictionaries.errors import DictionaryFormatError
from mechscope.dictionaries.store import cache_activations, read_manifest
from mechscope.dictionaries.store_reader import open_store
from mechscope.dictionaries.streaming import iter_site_batches, iter_sites_batches
from tiny_lm import tiny_lm, write_corpus

SITE = "blocks.1.hook_resid_post"
CTX = 16


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _cache(model, corpus, folder, **kw):
    args = dict(n_tokens=900, source=corpus, split=None, context_length=CTX, batch_size=4, shard_tokens=100)
    args.update(kw)
    return cache_activations(model, SITE, folder, **args)


def test_store_holds_site_activations_without_bos(model, corpus, tmp_path):
    reader = open_store(_cache(model, corpus, tmp_path / "s"))
    man = reader.manifest
    assert reader.n_tokens == 900 and man["complete"] and reader.d == 64
    assert man["hook_name"] == SITE and man["context_length"] == CTX and man["dtype"] == "float32"
    assert len(man["corpus_fingerprint"]) == 64 and len(man["weights_sha256"]) == 64
    assert sum(s["n_tokens"] for s in man["shards"]) == 900
    # Direct computation: the same packed contexts, BOS column dropped.
    ids = torch.cat(list(iter_token_contexts(model.tokenizer, corpus, CTX, batch_size=4, split=None)))
    _, cache = model.run_with_cache(ids, names=[SITE])
    expected = cache[SITE][:, 1:].reshape(-1, 64)[:900]
    torch.testing.assert_close(reader.all_activations(), expected, atol=1e-5, rtol=1e-5)
    tokens = torch.cat([reader.load_shard(i, "tokens") for i in range(len(man["shards"]))])
    assert tokens.shape == (900,) and not (tokens == model.tokenizer.bos_token_id).any()
    assert torch.equal(tokens.long(), ids[:, 1:].reshape(-1)[:900])


def test_keep_bos_keeps_every_position(model, corpus, tmp_path):
    reader = open_store(_cache(model, corpus, tmp_path / "s", n_tokens=160, keep_bos=True))
    tokens = reader.load_shard(0, "tokens")
    assert tokens[0] == model.tokenizer.bos_token_id and tokens[CTX] == model.tokenizer.bos_token_id


def test_killed_run_resumes_to_identical_store(model, corpus, tmp_path):
    whole = open_store(_cache(model, corpus, tmp_path / "whole"))
    folder = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="simulated failure"):
        _cache(model, corpus, folder, fail_after_shards=3)
    partial = read_manifest(folder)
    assert len(partial["shards"]) == 3 and not partial["complete"]
    # What a kill mid-write leaves: a temporary file, and a renamed shard the manifest never listed.
    (folder / "shard_00003.safetensors.tmp").write_bytes(b"half a shard")
    (folder / "shard_00004.safetensors").write_bytes((folder / "shard_00000.safetensors").read_bytes())
    assert open_store(folder).n_tokens == partial["n_tokens"]  # the reader sees only listed shards
    resumed = open_store(_cache(model, corpus, folder))
    assert resumed.manifest["shards"] == whole.manifest["shards"]
    assert torch.equal(resumed.all_activations(), whole.all_activations())
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (tmp_path / "whole").iterdir())
    resumed.verify()


def test_resume_with_other_settings_is_refused(model, corpus, tmp_path):
    _cache(model, corpus, tmp_path / "s", n_tokens=200)
    with pytest.raises(DictionaryFormatError, match="context_length"):
        _cache(model, corpus, tmp_path / "s", context_length=CTX * 2)
    # Asking for more tokens with the same settings extends the store.
    assert open_store(_cache(model, corpus, tmp_path / "s", n_tokens=400)).n_tokens == 400


def test_half_precision_store(model, corpus, tmp_path):
    full = open_store(_cache(model, corpus, tmp_path / "f32", n_tokens=300)).all_activations()
    for dtype in ("float16", "bfloat16"):
        reader = open_store(_cache(model, corpus, tmp_path / dtype, n_tokens=300, dtype=dtype))
        assert reader.load_shard(0).dtype == getattr(torch, dtype)
        torch.testing.assert_close(reader.all_activations(), full, atol=0.05, rtol=0.02)


def test_shuffled_batches_are_a_seeded_permutation_across_shards(model, corpus, tmp_path):
    reader = open_store(_cache(model, corpus, tmp_path / "s"))
    rows = reader.all_activations()
    batches = list(reader.batches(50, seed=3, buffer_tokens=300))
    assert len(batches) == 900 // 50 and all(b.shape == (50, 64) for b in batches)
    got = torch.cat(batches)
    key = lambda t: t[torch.argsort(t[:, 0])]  # noqa: E731
    torch.testing.assert_close(key(got), key(rows), atol=0, rtol=0)
    again = torch.cat(list(reader.batches(50, seed=3, buffer_tokens=300)))
    other = torch.cat(list(reader.batches(50, seed=4, buffer_tokens=300)))
    assert torch.equal(got, again) and not torch.equal(got, other)
    # The first batch draws rows from more than one shard.
    first_shard_of = {tuple(r[:4].tolist()): i for i in range(len(reader.manifest["shards"]))
                      for r in reader.load_shard(i)}
    assert len({first_shard_of[tuple(r[:4].tolist())] for r in batches[0]}) > 1
    ordered = torch.cat(list(reader.batches(50, shuffle=False)))
    assert torch.equal(ordered, rows)


def test_streaming_from_the_model_matches_the_store(model, corpus, tmp_path):
    rows = open_store(_cache(model, corpus, tmp_path / "s", n_tokens=400)).all_activations()
    streamed = list(iter_site_batches(model, SITE, source=corpus, split=None, context_length=CTX,
                                      batch_size=100, contexts_per_forward=4, max_tokens=400))
    assert len(streamed) == 4
    torch.testing.assert_close(torch.cat(streamed), rows, atol=1e-5, rtol=1e-5)


def test_per_head_site_is_flattened(model, corpus, tmp_path):
    reader = open_store(cache_activations(model, "blocks.0.attn.hook_z", tmp_path / "z", n_tokens=100,
                                          source=corpus, split=None, context_length=CTX, batch_size=4))
    assert reader.d == 4 * 16


def test_corrupt_or_missing_files_give_clear_errors(model, corpus, tmp_path):
    folder = _cache(model, corpus, tmp_path / "s", n_tokens=300)
    reader = open_store(folder)
    shard = folder / reader.manifest["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(DictionaryFormatError, match="shard_00001"):
        reader.load_shard(1)
    with pytest.raises(DictionaryFormatError, match="sha256"):
        reader.verify()
    (folder / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DictionaryFormatError, match="manifest"):
        open_store(folder)
    with pytest.raises(DictionaryFormatError, match="no activation-store manifest"):
        open_store(tmp_path / "nowhere")


@pytest.mark.slow
def test_real_model_store_stops_early_and_matches_a_full_run(default_model, tmp_path):
    site = "blocks.2.hook_resid_post"
    reader = open_store(cache_activations(default_model, site, tmp_path / "s", n_tokens=254, source="pydoc",
                                          split=None, context_length=128, batch_size=2))
    assert reader.d == 576 and reader.manifest["model_name"] == default_model.cfg.name
    ids = torch.cat(list(iter_token_contexts(default_model.tokenizer, "pydoc", 128, batch_size=2, max_contexts=2)))
    _, cache = default_model.run_with_cache(ids, names=[site])
    torch.testing.assert_close(reader.all_activations(), cache[site][:, 1:].reshape(-1, 576), atol=1e-4, rtol=1e-4)


PAIR = ["blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"]


def test_paired_sites_store_rows_aligned_with_one_forward(model, corpus, tmp_path):
    reader = open_store(cache_activations(model, PAIR, tmp_path / "p", n_tokens=300, source=corpus, split=None,
                                          context_length=CTX, batch_size=4, shard_tokens=100))
    assert reader.hook_names == PAIR and reader.hook_name == PAIR[0] and reader.ds == [64, 64]
    ids = torch.cat(list(iter_token_contexts(model.tokenizer, corpus, CTX, batch_size=4, split=None)))
    _, cache = model.run_with_cache(ids, names=PAIR)
    expected = [cache[n][:, 1:].reshape(-1, 64)[:300] for n in PAIR]
    ordered = [torch.cat(parts) for parts in zip(*reader.site_batches(50, shuffle=False), strict=True)]
    for got, want in zip(ordered, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Shuffled: the same permutation of rows for both sites, and the same rows as `batches` for site 0.
    x, t = (torch.cat(parts) for parts in zip(*reader.site_batches(50, seed=2, buffer_tokens=120), strict=True))
    key = lambda r: r[torch.argsort(r[:, 0])]  # noqa: E731 - rows in a canonical order
    torch.testing.assert_close(key(torch.cat([x, t], 1)), key(torch.cat(expected, 1)), atol=1e-5, rtol=1e-5)
    assert not torch.equal(x, ordered[0])
    assert torch.equal(x, torch.cat(list(reader.batches(50, seed=2, buffer_tokens=120))))
    (t_only,) = next(reader.site_batches(50, ["blocks.1.hook_mlp_out"], shuffle=False))
    assert torch.equal(t_only, ordered[1][:50])
    with pytest.raises(DictionaryFormatError, match="blocks.1.hook_mlp_out"):
        next(reader.site_batches(50, ["blocks.1.hook_mlp_ot"]))
    streamed = list(iter_sites_batches(model, PAIR, source=corpus, split=None, context_length=CTX, batch_size=100,
                                       contexts_per_forward=4, max_tokens=300))
    assert len(streamed) == 3 and all(len(b) == 2 for b in streamed)
    for i in range(2):
        torch.testing.assert_close(torch.cat([b[i] for b in streamed]), expected[i], atol=1e-5, rtol=1e-5)


def test_store_refuses_a_foreign_folder_and_keeps_unknown_files(model, corpus, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    with pytest.raises(OutputExistsError, match="--force"):
        _cache(model, corpus, folder, n_tokens=100)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    _cache(model, corpus, folder, n_tokens=100, force=True)
    (folder / "shard_old_copy.safetensors").write_text("kept")
    _cache(model, corpus, folder, n_tokens=200)  # resume: only unlisted shard_NNNNN files may go
    assert (folder / "notes.txt").read_text() == "my notes" and (folder / "shard_old_copy.safetensors").exists()
