"""Bad input gets one clear line naming the problem and the fix, never a traceback, and nothing on disk changes."""

from __future__ import annotations

import json

import pytest
import torch

import mechscope
from _saved_models import save_tiny_llama
from mechscope.apps.cli import main
from mechscope.core import loading
from mechscope.core.errors import HookShapeError, ModelLoadError, NonFiniteError, TokenizationError
from mechscope.methods.metrics import normalized_recovery
from tiny_models import VOCAB, tiny_model


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("mechscope ")]
    assert len(lines) == 1 and ": error: " in lines[0], err
    return lines[0]


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def short(tmp_path_factory) -> str:
    """A saved tiny Llama whose context is 16 tokens."""
    return save_tiny_llama(tmp_path_factory.mktemp("short"), n_ctx=16)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> str:
    """A saved tiny Llama with a NaN weight in layer 0's MLP: every activation after it is NaN."""
    return save_tiny_llama(tmp_path_factory.mktemp("nan"), poison=True)


def test_input_longer_than_context() -> None:
    model = tiny_model("gpt2")  # learned positions: 128 of them
    with pytest.raises(TokenizationError, match="The input is 129 tokens long; this model's context is 128 tokens. "
                                                "Shorten the prompt"):
        model(torch.ones(1, 129, dtype=torch.long))
    assert model(torch.ones(1, 128, dtype=torch.long)).shape == (1, 128, VOCAB)


def test_prompt_longer_than_context_cli(short, tmp_path, capsys) -> None:
    before = _snapshot(tmp_path)
    assert main(["run", " ".join(["t1"] * 20), "--model", short, "--json", str(tmp_path / "r.json")]) == 2
    assert "this model's context is 16 tokens" in _error_line(capsys)
    assert _snapshot(tmp_path) == before


def test_heads_builds_inputs_that_fit_or_says_which_flag(short, tmp_path, capsys) -> None:
    assert main(["heads", "--model", short, "--json", str(tmp_path / "h.json")]) == 2  # default --seq-len 50
    line = _error_line(capsys)
    assert "seq_len 50 makes sequences of 101 tokens; this model's context is 16 tokens: use seq_len (--seq-len) 7" \
        in line
    assert not (tmp_path / "h.json").exists()
    assert main(["heads", "--model", short, "--seq-len", "7", "--json", str(tmp_path / "h.json")]) == 0
    assert json.loads((tmp_path / "h.json").read_text())["seq_len"] == 7


@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 1000, -1])
def test_token_ids_outside_vocabulary(bad) -> None:
    model = tiny_model("llama")
    ids = torch.tensor([[1, 2, bad, 3]])
    message = f"Token id {bad} (row 0, position 2) is outside this model's vocabulary of {VOCAB} ids"
    with pytest.raises(TokenizationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model(ids)
    with pytest.raises(TokenizationError, match="use ids the tokenizer produces"):
        model.run_with_cache(ids)
    with pytest.raises(TokenizationError, match="must be integers"):
        model(ids.float())


def test_misspelled_shipped_model_suggests_and_never_reaches_the_hub(monkeypatch, capsys) -> None:
    def no_hub(*args, **kwargs):
        raise AssertionError("a misspelled shipped name must not reach the hub")

    monkeypatch.setattr(loading, "_load_hub", no_hub)
    with pytest.raises(ModelLoadError, match=r"Unknown model 'smolm2-135m'. Did you mean: 'smollm2-135m'\?"):
        mechscope.load_model("smolm2-135m")
    assert main(["info", "--model", "gemma3-270"]) == 2
    assert "Did you mean: 'gemma3-270m'?" in _error_line(capsys)


def test_corrupt_gguf_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    before = _snapshot(tmp_path)
    with pytest.raises(ModelLoadError, match="model.gguf as a GGUF model .*; the file is corrupt, truncated"):
        mechscope.load_model(gguf)
    assert _snapshot(tmp_path) == before  # no half-written cache folder left behind


def test_corrupt_saved_model_folder(tmp_path) -> None:
    folder = tmp_path / "saved"
    save_tiny_llama(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    before = _snapshot(tmp_path)
    with pytest.raises(ModelLoadError, match="Could not load the model saved in .*; a file there is corrupt or "
                                             "incomplete: save the model there again"):
        mechscope.load_model(folder)
    assert _snapshot(tmp_path) == before


def test_damaged_cache_of_a_gguf_model(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    cached = loading.cache_dir() / "models" / f"m-{loading._file_key(gguf)}"
    save_tiny_llama(cached)
    (cached / "mechscope.json").write_text("{}")
    (cached / "model.safetensors").write_bytes(b"\x00" * 16)
    before = _snapshot(tmp_path)
    with pytest.raises(ModelLoadError, match="cached copy of m.gguf in .* is damaged .*delete that folder and load "
                                             "again to rebuild it"):
        mechscope.load_model(gguf)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["run", "lens", "patch", "heads", "probe", "lens train"])
def test_nan_activations_are_one_line_errors(command, poisoned, tmp_path, capsys) -> None:
    data = tmp_path / "probe.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{1 + i % 9} t{2 + i % 5}", "label": i % 2}) + "\n"
                            for i in range(12)))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for doc in range(20):
        (corpus / f"{doc}.txt").write_text(" ".join(f"t{1 + (i * doc) % 16}" for i in range(30)))
    argv = {
        "run": ["run", "t1 t2 t3"],
        "lens": ["lens", "t1 t2 t3"],
        "patch": ["patch", "--clean", "t1 t2 t3", "--corrupt", "t1 t2 t5", "--answer", "t4", "--wrong", "t6"],
        "heads": ["heads", "--seq-len", "5"],
        "probe": ["probe", str(data)],
        "lens train": ["lens", "train", "--out", str(tmp_path / "lens"), "--corpus", str(corpus), "--steps", "2",
                       "--context-length", "8", "--no-progress"],
    }[command]
    before = _snapshot(tmp_path)
    out = ["--json", str(tmp_path / "r.json")] if command != "lens train" else []
    assert main([*argv, "--model", poisoned, *out]) == 2
    line = _error_line(capsys)
    assert "is NaN or Inf" in line and ("--dtype float32" in line or "lower --lr" in line)
    after = _snapshot(tmp_path)
    after.pop("lens/.mechscope", None)  # lens train claims its (new) folder before it starts
    assert after == before


def test_normalized_recovery_never_returns_nan() -> None:
    assert normalized_recovery(torch.tensor([2.0, 4.0]), clean=4.0, corrupt=0.0).tolist() == [0.5, 1.0]
    with pytest.raises(NonFiniteError, match="The metric of a patched run is NaN or Inf \\(1 of 2 values\\)"):
        normalized_recovery(torch.tensor([2.0, float("nan")]), clean=4.0, corrupt=0.0)
    with pytest.raises(NonFiniteError, match="The metric on the clean prompt is NaN or Inf"):
        normalized_recovery(torch.tensor([2.0]), clean=float("inf"), corrupt=0.0)
    with pytest.raises(mechscope.MechscopeError, match="The metric is the same on both prompts"):
        normalized_recovery(torch.tensor([2.0]), clean=1.0, corrupt=1.0)


@pytest.mark.parametrize("wrong", ["shape", "dtype", "device"])
def test_hook_returning_the_wrong_tensor(wrong) -> None:
    model = tiny_model("llama")
    edit = {"shape": lambda act: act[:, :-1], "dtype": lambda act: act.double(),
            "device": lambda act: act.to("meta")}[wrong]
    with pytest.raises(HookShapeError, match="Hook on 'blocks.1.hook_resid_pre' returned a .*; return one like "
                                             r"the activation: \(1, 4, 64\) torch.float32 on cpu"):
        model.run_with_hooks(torch.tensor([[1, 2, 3, 4]]), fwd_hooks=[("blocks.1.hook_resid_pre",
                                                                       lambda act, hook: edit(act))])


@pytest.mark.parametrize("line, message", [
    ('{"text": "t1 t2", "label": 0}\n{"text": "t3 t4", "label": 1\n', "probe.jsonl:2: not valid JSON"),
    ('{"text": "t1 t2", "label": 0}\n{"text": "t3 t4"}\n', "probe.jsonl:2: missing field(s) ['label']"),
    ('{"text": "t1 t2", "label": 0, "token": "t9"}\n', "probe.jsonl:1: token 't9' does not occur in the text"),
])
def test_bad_probe_data_is_one_line(line, message, short, tmp_path, capsys) -> None:
    data = tmp_path / "probe.jsonl"
    data.write_text(line)
    before = _snapshot(tmp_path)
    assert main(["probe", str(data), "--model", short, "--json", str(tmp_path / "p.json")]) == 2
    assert message in _error_line(capsys)
    assert _snapshot(tmp_path) == before
