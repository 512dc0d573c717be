"""The write guard (`mechscope.core.files`): what counts as ours, what is refused, what --force allows."""

from __future__ import annotations

import json

import pytest
from matplotlib.figure import Figure

from mechscope.core.errors import OutputExistsError
from mechscope.core.files import (
    MARKER,
    OWNER_FILE,
    atomic_write_json,
    check_writable,
    claim_output_dir,
    figure_png,
    figure_svg,
    save_figure,
    write_bytes,
    write_json,
    write_text,
    written_by_mechscope,
)

PROV = {"provenance": {"mechscope": "test"}}


def _figure() -> Figure:
    fig = Figure(figsize=(2, 2))
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    return fig


def test_ownership_rules(tmp_path) -> None:
    cases = {
        "ours.json": json.dumps(PROV), "theirs.json": '{"a": 1}', "list.json": "[1, 2]", "broken.json": "{",
        "ours.html": f"<!doctype html>\n{MARKER}\n<p>x</p>", "theirs.html": "<p>x</p>", "notes.txt": "hello",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "ours.png").write_bytes(figure_png(_figure()))
    (tmp_path / "ours.svg").write_bytes(figure_svg(_figure()))
    buffer = tmp_path / "theirs.png"
    _figure().savefig(buffer, format="png")  # matplotlib's own tag, not ours
    owned = {p.name for p in tmp_path.iterdir() if written_by_mechscope(p)}
    assert owned == {"ours.json", "ours.html", "ours.png", "ours.svg"}
    assert not written_by_mechscope(tmp_path / "missing.json")


def test_refuses_foreign_file_and_keeps_its_bytes(tmp_path) -> None:
    for writer, name in [(lambda p, f: write_json(p, PROV, force=f), "a.json"),
                         (lambda p, f: write_text(p, "new", force=f), "a.txt"),
                         (lambda p, f: write_bytes(p, b"new", force=f), "a.bin"),
                         (lambda p, f: save_figure(p, _figure(), force=f), "a.png"),
                         (lambda p, f: save_figure(p, _figure(), force=f), "a.svg")]:
        target = tmp_path / name
        target.write_bytes(b"user data \x00\x01")
        with pytest.raises(OutputExistsError, match="not written by mechscope; choose another path or pass --force"):
            writer(target, False)
        assert target.read_bytes() == b"user data \x00\x01"
        writer(target, True)
        assert target.read_bytes() != b"user data \x00\x01"


def test_replaces_its_own_files_and_writes_new_ones(tmp_path) -> None:
    target = tmp_path / "sub" / "r.json"
    write_json(target, {"x": 1, **PROV})
    write_json(target, {"x": 2, **PROV})  # ours: replaced without --force
    assert json.loads(target.read_text())["x"] == 2
    for name in ("p.png", "p.svg"):
        save_figure(tmp_path / name, _figure())
        save_figure(tmp_path / name, _figure())
    assert (tmp_path / "p.svg").read_text().splitlines()[1] == MARKER
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary files left behind


def test_json_needs_provenance_and_paths_must_be_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="provenance"):
        write_json(tmp_path / "r.json", {"x": 1})
    with pytest.raises(OutputExistsError, match="is a folder; give a file path"):
        check_writable(tmp_path)
    assert not (tmp_path / "r.json").exists()


def test_claim_output_dir(tmp_path) -> None:
    fresh = claim_output_dir(tmp_path / "new" / "deep")
    assert (fresh / OWNER_FILE).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_output_dir(empty)
    assert (empty / OWNER_FILE).is_file()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputExistsError, match="already holds files that mechscope did not write"):
        claim_output_dir(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
    claim_output_dir(foreign, force=True)
    assert (foreign / OWNER_FILE).is_file() and (foreign / "thesis.tex").read_text() == "years of work"

    claim_output_dir(fresh)  # ours: accepted again, and every file inside counts as ours
    (fresh / "weights.bin").write_bytes(b"old")
    write_bytes(fresh / "weights.bin", b"new")
    assert (fresh / "weights.bin").read_bytes() == b"new"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputExistsError, match="is a file; give a folder path"):
        claim_output_dir(a_file, force=True)


def test_atomic_write_leaves_old_file_on_failure(tmp_path) -> None:
    target = tmp_path / "state.json"
    atomic_write_json(target, {"step": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"step": object()})
    assert json.loads(target.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_written_files_get_the_mode_open_would_give(tmp_path):
    import os

    from mechscope.core.files import write_text

    mask = os.umask(0o022)
    try:
        path = write_text(tmp_path / "a.html", "<!-- written by mechscope -->")
    finally:
        os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o644
