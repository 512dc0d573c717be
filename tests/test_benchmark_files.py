"""Benchmark result files and the README tables generated from them.

Every `benchmarks/results/<name>.json` must carry provenance, timings with a median and a
spread, and goals whose met/missed flag agrees with their numbers; README blocks between
`<!-- bench:<name> -->` markers must equal what `scripts/readme_tables.py` renders.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import goal, summarize  # noqa: E402


def _tables():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _tables()
RESULT_FILES = sorted((ROOT / "benchmarks" / "results").glob("*.json"))


def _check_result(data: dict, name: str) -> None:
    assert data["benchmark"] == name and data["quick"] is False
    assert "weights_sha256" in data["provenance"] or "machine" in data["provenance"]
    assert data["provenance"]["machine"]["torch_threads"] >= 1
    for candidate, t in data.get("timings", {}).items():
        assert t["min_s"] <= t["median_s"] <= t["max_s"], candidate
        assert len(t["samples_s"]) == data["repeats"], candidate
    for g in data.get("goals", []):
        assert g["met"] == goal(g["name"], g["value"], g["target"], g["op"])["met"], g


def test_committed_result_files_are_complete_and_consistent():
    for path in RESULT_FILES:
        data = json.loads(path.read_text())
        assert "provenance" in data, f"{path.name} has no provenance block"
        if "benchmark" in data:  # written by benchmarks/common.py (other result files: provenance only)
            _check_result(data, path.stem)


def test_readme_tables_are_not_stale():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    results = {k: v for k, v in tables.load_results().items() if "table" in v}
    assert tables.stale(readme, results) == [], "run: python scripts/readme_tables.py --write"


def _fake_result(value: float) -> dict:
    return {"benchmark": "demo", "quick": False, "repeats": 3, "measured_at": "2026-01-01T00:00:00Z",
            "timings": {"a": summarize([1.0, 2.0, 4.0])},
            "goals": [goal("a / b", value, 1.5, "<=")],
            "table": {"columns": ["what", "s"], "rows": [["a", f"{value:.2f}"]], "caption": "demo run"},
            "provenance": {"machine": {"processor": "x86_64", "torch_threads": 2, "git_commit": "abc123"}}}


def test_generator_fills_markers_and_detects_stale_tables():
    readme = "intro\n<!-- bench:demo -->\nold numbers\n<!-- /bench:demo -->\noutro\n"
    results = {"demo": _fake_result(1.2)}
    assert tables.stale(readme, results) == ["demo"]
    fresh = tables.update(readme, results)
    assert fresh.startswith("intro\n<!-- bench:demo -->\ndemo run\n") and fresh.endswith("<!-- /bench:demo -->\noutro\n")
    assert "| a | 1.20 |" in fresh and "a / b: 1.2 (goal <= 1.5 x): met" in fresh
    assert tables.stale(fresh, results) == []
    assert tables.update(fresh, results) == fresh  # idempotent
    missed = {"demo": _fake_result(2.0)}
    assert tables.stale(fresh, missed) == ["demo"]
    assert "**MISSED**" in tables.update(fresh, missed)
    with pytest.raises(KeyError, match="bench:other"):
        tables.update(readme.replace("demo", "other"), results)
    _check_result(_fake_result(1.2), "demo")


def test_summary_and_goals():
    t = summarize([3.0, 1.0, 2.0])
    assert (t["median_s"], t["min_s"], t["max_s"], t["spread"]) == (2.0, 1.0, 3.0, 1.0)
    assert goal("g", 31.0, 30, ">=")["met"] is True and goal("g", 29.0, 30, ">=")["met"] is False
    assert goal("g", None, 30, ">=")["met"] is None


@pytest.mark.slow
def test_patching_benchmark_writes_a_valid_result(tmp_path):
    out = tmp_path / "patching.json"
    subprocess.run([sys.executable, "patching.py", "--quick", "--skip-anchors", "--out", str(out)],
                   cwd=ROOT / "benchmarks", check=True, capture_output=True, timeout=600)
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["repeats"] == 1
    names = {g["name"] for g in data["goals"]}
    assert "resid_pre: mechscope / floor" in names and "attribution every site / (forward + backward)" in names
    assert all(g["met"] in (True, False) for g in data["goals"] if "naive" in g["name"] or "floor" in g["name"])
    assert tables.render(data).count("\n|") >= 4
