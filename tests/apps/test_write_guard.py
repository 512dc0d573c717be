"""Every writer refuses to replace a file (or fill a folder) that mechscope did not write, unless --force.

Each case writes a foreign file, runs the writer without --force (refused, one clear line, the
file byte-identical), then with --force (accepted).
"""

from __future__ import annotations

import json

import pytest
import torch

from _saved_models import save_tiny_llama
from mechscope.apps.cli import main
from mechscope.core.errors import OutputExistsError

FOREIGN = b"my own notes\n"


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("toy"))


def _probe_data(tmp_path) -> str:
    path = tmp_path / "probe.jsonl"
    rows = [{"text": f"t{1 + i % 7} t{1 + (3 * i) % 11} t{2 + i % 5}", "label": i % 2} for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _corpus(tmp_path) -> str:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for doc in range(40):
        (corpus / f"{doc:02d}.txt").write_text(" ".join(f"t{1 + (i * doc + 3) % 16}" for i in range(40)))
    return str(corpus)


def _error_line(capsys) -> str:
    """The CLI's one error line (stderr may also hold transformers' loading bar); no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("mechscope ")]
    assert len(lines) == 1 and ": error: " in lines[0], err
    return lines[0]


# command (without output options), then the output flag it writes
CLI_FILE_WRITERS = {
    "run --json": (lambda m, t: ["run", "t1 t2 t3", "--model", m], "--json", ".json"),
    "verify --json": (lambda m, t: ["verify", "--model", m], "--json", ".json"),
    "lens --json": (lambda m, t: ["lens", "t1 t2 t3", "--model", m], "--json", ".json"),
    "lens --png": (lambda m, t: ["lens", "t1 t2 t3", "--model", m], "--png", ".png"),
    "heads --json": (lambda m, t: ["heads", "--model", m, "--seq-len", "5", "--batch", "2"], "--json", ".json"),
    "heads --png": (lambda m, t: ["heads", "--model", m, "--seq-len", "5", "--batch", "2"], "--png", ".png"),
    "patch --json": (lambda m, t: ["patch", "--model", m, "--clean", "t1 t2 t3", "--corrupt", "t1 t2 t5",
                                   "--answer", "t4", "--wrong", "t6"], "--json", ".json"),
    "patch --png": (lambda m, t: ["patch", "--model", m, "--clean", "t1 t2 t3", "--corrupt", "t1 t2 t5",
                                  "--answer", "t4", "--wrong", "t6"], "--png", ".png"),
    "patch --html": (lambda m, t: ["patch", "--model", m, "--clean", "t1 t2 t3", "--corrupt", "t1 t2 t5",
                                   "--answer", "t4", "--wrong", "t6"], "--html", ".html"),
    "probe --json": (lambda m, t: ["probe", _probe_data(t), "--model", m, "--held-out", "0.5"], "--json", ".json"),
    "probe --png": (lambda m, t: ["probe", _probe_data(t), "--model", m, "--held-out", "0.5"], "--png", ".png"),
    "toy superposition --json": (lambda m, t: ["toy", "superposition", "--n-features", "5", "--steps", "5",
                                               "--sparsities", "0.5"], "--json", ".json"),
    "toy superposition --png": (lambda m, t: ["toy", "superposition", "--n-features", "5", "--steps", "5",
                                              "--sparsities", "0.5"], "--png", ".png"),
    "toy induction --json": (lambda m, t: ["toy", "induction", "--out", str(t / "ind"), "--steps", "2",
                                           "--no-progress"], "--json", ".json"),
}


@pytest.mark.parametrize("writer", sorted(CLI_FILE_WRITERS))
def test_cli_file_writer_refuses_foreign_file(writer, toy, tmp_path, capsys) -> None:
    build, flag, suffix = CLI_FILE_WRITERS[writer]
    target = tmp_path / f"result{suffix}"
    target.write_bytes(FOREIGN)
    argv = [*build(toy, tmp_path), flag, str(target)]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = _error_line(capsys)
    assert "not written by mechscope; choose another path or pass --force" in err
    assert target.read_bytes() == FOREIGN
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # refused before any work: nothing else written
    assert main([*argv, "--force"]) == 0
    assert target.read_bytes() != FOREIGN
    assert main(argv) == 0  # now it is ours: a rerun may replace it


CLI_FOLDER_WRITERS = {
    "report --out": lambda m, t, out: ["report", "t1 t2 t3", "--model", m, "--out", out],
    "toy induction --out": lambda m, t, out: ["toy", "induction", "--out", out, "--steps", "2", "--no-progress"],
    "lens train --out": lambda m, t, out: ["lens", "train", "--model", m, "--out", out, "--corpus", _corpus(t),
                                           "--steps", "2", "--batch-size", "2", "--context-length", "8",
                                           "--eval-contexts", "2", "--no-progress"],
}


@pytest.mark.parametrize("writer", sorted(CLI_FOLDER_WRITERS))
def test_cli_folder_writer_refuses_foreign_folder(writer, toy, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_bytes(FOREIGN)  # a name the writers would use
    argv = CLI_FOLDER_WRITERS[writer](toy, tmp_path, str(out))
    assert main(argv) == 2
    err = _error_line(capsys)
    assert "already holds files that mechscope did not write" in err
    assert [p.name for p in out.iterdir()] == ["config.json"] and (out / "config.json").read_bytes() == FOREIGN
    assert main([*argv, "--force"]) == 0
    assert len(list(out.iterdir())) > 2
    assert main(argv) == 0  # the folder is ours now: a rerun (or a resume) needs no --force


def test_library_writers_refuse_foreign_files(tmp_path) -> None:
    from mechscope.methods.patching.result import PatchResult
    from mechscope.methods.probe_plots import plot_probe_report
    from mechscope.methods.probes import fit_probes_by_layer
    from mechscope.toys.superposition import SuperpositionConfig, train_superposition
    from mechscope.toys.superposition_plots import plot_feature_directions, plot_norms_and_superposition

    result = PatchResult(torch.tensor([[0.1, 0.9], [0.0, 1.0]]), by=("layer", "pos"), labels=[[0, 1], ["A", "B"]],
                         site="resid_pre", method="activation", mode="denoise", clean=2.0, corrupt=-1.0)
    torch.manual_seed(0)
    acts = {0: torch.randn(20, 4)}
    report = fit_probes_by_layer(acts, [i % 2 for i in range(20)], [f"w{i}" for i in range(20)], held_out_fraction=0.5)
    sweep = train_superposition(SuperpositionConfig(n_features=3, d_hidden=2, steps=3, sparsities=(0.5,)))
    writers = {
        "PatchResult.to_json": (lambda p, f: result.to_json(p, force=f), ".json"),
        "PatchResult.plot png": (lambda p, f: result.plot(p, force=f), ".png"),
        "PatchResult.plot svg": (lambda p, f: result.plot(p, force=f), ".svg"),
        "PatchResult.plot html": (lambda p, f: result.plot(p, force=f), ".html"),
        "plot_probe_report": (lambda p, f: plot_probe_report(report, p, force=f), ".png"),
        "plot_feature_directions": (lambda p, f: plot_feature_directions(sweep, p, force=f), ".png"),
        "plot_norms_and_superposition": (lambda p, f: plot_norms_and_superposition(sweep, p, force=f), ".svg"),
    }
    for name, (write, suffix) in writers.items():
        target = tmp_path / f"{name.replace(' ', '_')}{suffix}"
        target.write_bytes(FOREIGN)
        with pytest.raises(OutputExistsError, match="not written by mechscope"):
            write(target, False)
        assert target.read_bytes() == FOREIGN, name
        write(target, True)
        assert target.read_bytes() != FOREIGN, name
        write(target, False)  # ours now


def test_tuned_lens_save_and_training_refuse_foreign_folder(toy, tmp_path) -> None:
    import mechscope
    from mechscope.methods.tuned_lens import TunedLens
    from mechscope.methods.tuned_lens_train import TrainSettings, train_tuned_lens

    model = mechscope.load_model(toy)
    lens = TunedLens.for_model(model)
    for call in (lambda folder, f: lens.save(folder, force=f),
                 lambda folder, f: train_tuned_lens(model, TrainSettings(steps=1, batch_size=2, context_length=4),
                                                    ids=torch.randint(1, 17, (2, 4)), checkpoint_dir=folder, force=f)):
        folder = tmp_path / f"lens{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "config.json").write_bytes(FOREIGN)
        with pytest.raises(OutputExistsError, match="did not write"):
            call(folder, False)
        assert [p.name for p in folder.iterdir()] == ["config.json"]
        call(folder, True)
        assert (folder / "config.json").read_bytes() != FOREIGN
