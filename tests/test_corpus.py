"""Tests of mechscope.core.corpus: sources, order, split, fingerprint and token packing."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from _tokenizers import WhitespaceTokenizer, real_tokenizer
from mechscope.core import corpus


def test_pydoc_topics_sorted_and_complete() -> None:
    from pydoc_data.topics import topics

    docs = list(corpus.iter_pydoc_topics())
    expected = [topics[k].strip() for k in sorted(topics) if topics[k].strip()]
    assert docs == expected


def test_stdlib_module_names_sorted_and_safe() -> None:
    names = corpus.stdlib_module_names()
    assert names == sorted(names)
    assert {"json", "json.decoder", "collections", "email.mime.text"} <= set(names)
    for bad in ("tkinter", "turtle", "idlelib", "antigravity", "this", "test", "unittest.__main__"):
        assert not any(n == bad or n.startswith(bad + ".") for n in names), bad
    assert not any(n.endswith(".tests") or n.endswith(".test") for n in names)
    assert not any(part.startswith("_") for n in names for part in n.split("."))


def test_default_corpus_is_deterministic_and_sized() -> None:
    first = list(corpus.iter_documents("default"))
    second = list(corpus.iter_documents("default"))
    assert first == second
    n_pydoc = len(list(corpus.iter_pydoc_topics()))
    assert first[:n_pydoc] == list(corpus.iter_pydoc_topics())
    json_doc = next(d for d in first if d.startswith("json\n"))
    assert "JSON (JavaScript Object Notation)" in json_doc
    assert "json.dumps\n" in json_doc
    # the module docstring states about 1.4 M characters on CPython 3.11; any CPython >= 3.10 holds > 1 M
    assert len(first) > 400
    assert sum(map(len, first)) > 1_000_000
    assert all(d.strip() for d in first)


def test_split_partitions_documents() -> None:
    docs = list(corpus.iter_documents("pydoc"))
    train = list(corpus.iter_documents("pydoc", split="train", held_out_fraction=0.25))
    held = list(corpus.iter_documents("pydoc", split="held_out", held_out_fraction=0.25))
    assert sorted(train + held) == sorted(docs)
    assert not set(train) & set(held)
    assert 0.05 < len(held) / len(docs) < 0.5
    other_seed = list(corpus.iter_documents("pydoc", split="held_out", held_out_fraction=0.25, split_seed=1))
    assert other_seed != held
    assert list(corpus.iter_documents("pydoc", split="held_out", held_out_fraction=0.0)) == []
    with pytest.raises(ValueError, match="split"):
        list(corpus.iter_documents("pydoc", split="test"))  # type: ignore[arg-type]


def test_held_out_score_formula() -> None:
    import hashlib

    digest = hashlib.sha256(b"3:abc").hexdigest()
    assert corpus.held_out_score("abc", seed=3) == int(digest[:16], 16) / 16**16


def test_fingerprint(tmp_path) -> None:
    a = tmp_path / "a.txt"
    a.write_text("one document")
    fp = corpus.corpus_fingerprint(a)
    assert fp == corpus.corpus_fingerprint(a)
    assert len(fp) == 64
    a.write_text("one documenT")
    assert corpus.corpus_fingerprint(a) != fp
    # document boundaries count: ["ab", "c"] differs from ["a", "bc"]
    (tmp_path / "x.jsonl").write_text('{"text": "ab"}\n{"text": "c"}\n')
    (tmp_path / "y.jsonl").write_text('{"text": "a"}\n{"text": "bc"}\n')
    assert corpus.corpus_fingerprint(tmp_path / "x.jsonl") != corpus.corpus_fingerprint(tmp_path / "y.jsonl")
    assert corpus.corpus_fingerprint("pydoc", split="train") != corpus.corpus_fingerprint("pydoc")


def test_local_files(tmp_path) -> None:
    (tmp_path / "b.txt").write_text("text file")
    (tmp_path / "sub").mkdir()
    rows = [{"body": "first row", "id": 1}, {"body": "second row", "id": 2}]
    (tmp_path / "sub" / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "ignored.csv").write_text("not read")
    docs = list(corpus.iter_documents(tmp_path / "sub" / "a.jsonl", text_field="body"))
    assert docs == ["first row", "second row"]
    # folder: files in sorted path order (b.txt before sub/a.jsonl)
    (tmp_path / "sub" / "a.jsonl").write_text("\n".join(json.dumps({"text": r["body"]}) for r in rows))
    assert list(corpus.iter_documents(tmp_path)) == ["text file", "first row", "second row"]
    listed = [tmp_path / "sub" / "a.jsonl", str(tmp_path / "b.txt")]
    assert list(corpus.iter_documents(listed)) == ["first row", "second row", "text file"]


def test_parquet(tmp_path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p0", "p1", None, "p3"], "n": [0, 1, 2, 3]}), tmp_path / "d.parquet")
    assert list(corpus.iter_documents(tmp_path / "d.parquet")) == ["p0", "p1", "p3"]
    with pytest.raises(ValueError, match="no column 'body'"):
        list(corpus.iter_documents(tmp_path / "d.parquet", text_field="body"))


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        list(corpus.iter_documents(tmp_path / "missing.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        list(corpus.iter_documents(tmp_path / "bad.jsonl"))
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="no 'text' field"):
        list(corpus.iter_documents(tmp_path / "nofield.jsonl"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported"):
        list(corpus.iter_documents(tmp_path / "x.csv"))
    with pytest.raises(TypeError):
        list(corpus.iter_documents(42))


def test_hf_datasets(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["d0", "d1"], "label": [0, 1]})
    assert list(corpus.iter_documents(ds)) == ["d0", "d1"]
    ds.save_to_disk(str(tmp_path / "saved"))
    assert list(corpus.iter_documents(tmp_path / "saved")) == ["d0", "d1"]


def test_package_docstrings_read_without_import(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "fakepkg"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Package doc."""\n')
    (pkg / "tests" / "__init__.py").write_text('"""Test doc, skipped."""\n')
    (pkg / "boom.py").write_text(
        textwrap.dedent(
            '''
            """Boom module."""
            raise RuntimeError("importing this module is a side effect")

            def public():
                """Public function."""

            def _private():
                """Private, skipped."""

            class Thing:
                """A thing."""

                def method(self):
                    """A method."""
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    docs = list(corpus.iter_documents([], packages=["fakepkg"]))
    assert docs == [
        "fakepkg\n\nPackage doc.",
        "fakepkg.boom\n\nBoom module.\n\nfakepkg.boom.public\nPublic function.\n\n"
        "fakepkg.boom.Thing\nA thing.\n\nfakepkg.boom.Thing.method\nA method.",
    ]
    assert "fakepkg.boom" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        list(corpus.iter_package_docstrings("no_such_package_xyz"))


def _stub_stream(tok: WhitespaceTokenizer, docs: list[str]) -> list[int]:
    stream: list[int] = []
    for d in docs:
        stream += [tok.eos_token_id, *tok(d, add_special_tokens=False)["input_ids"]]
    return stream


def test_token_contexts_packing_layout(tmp_path) -> None:
    docs = ["a b c d e", "f g", "h i j k l m n o p"]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    tok = WhitespaceTokenizer()
    stream = _stub_stream(WhitespaceTokenizer(), docs)  # same ids: first-appearance order
    assert len(stream) == 19

    batches = list(corpus.iter_token_contexts(tok, path, 5, batch_size=2, tokenize_batch=2))
    assert [tuple(b.shape) for b in batches] == [(2, 5), (2, 5)]
    ids = torch.cat(batches)
    assert ids.dtype == torch.long
    expected = [[0, *stream[i * 4 : i * 4 + 4]] for i in range(4)]  # BOS + 4 stream tokens, 3 left over
    assert ids.tolist() == expected

    no_bos = corpus.token_contexts(WhitespaceTokenizer(), path, 6, prepend_bos=False)
    assert no_bos.tolist() == [stream[0:6], stream[6:12], stream[12:18]]

    capped = corpus.token_contexts(WhitespaceTokenizer(), path, 5, batch_size=2, max_contexts=3)
    assert capped.tolist() == expected[:3]
    empty = corpus.token_contexts(WhitespaceTokenizer(), path, 50)
    assert empty.shape == (0, 50)
    with pytest.raises(ValueError, match="context_length"):
        corpus.token_contexts(tok, path, 1)


def test_token_contexts_real_tokenizer() -> None:
    tok = real_tokenizer()
    ids = corpus.token_contexts(tok, "pydoc", 64, batch_size=8, max_contexts=20)
    assert ids.shape == (20, 64)
    assert (ids[:, 0] == tok.bos_token_id).all()
    first_topic = next(corpus.iter_pydoc_topics())
    expected = tok(first_topic, add_special_tokens=False)["input_ids"][:62]
    assert ids[0, 1:].tolist() == [tok.eos_token_id, *expected]
    text = tok.decode(ids[0, 2:])
    assert text and first_topic.startswith(text[:20])
