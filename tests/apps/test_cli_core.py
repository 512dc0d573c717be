"""The core CLI commands on the real default model, through `mechscope.apps.cli.main`."""

from __future__ import annotations

import json

import pytest

from mechscope.apps.cli import main


@pytest.mark.slow
def test_report_writes_html_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["report", "The Eiffel Tower is in the city of", "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["sections"]["predictions"]["top"][0]["token"] == " Paris"
    assert len(data["sections"]["resid_norms"]["mean_norm"]) == 30
    assert data["provenance"]["model"] == "smollm2-135m" and len(data["provenance"]["weights_sha256"]) == 64
    page = (out / "report.html").read_text()
    assert "<img" in page and "Paris" in page and "http://" not in page and "https://" not in page
    # A second run may replace its own files ...
    assert main(["report", "The Eiffel Tower is in the city of", "--out", str(out)]) == 0


@pytest.mark.slow
def test_outputs_never_replace_a_users_file(tmp_path, capsys) -> None:
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    assert main(["run", "Hello", "--json", str(mine)]) == 2
    assert "not written by mechscope" in capsys.readouterr().err
    assert json.loads(mine.read_text()) == {"my": "notes"}


@pytest.mark.slow
def test_run_and_verify_and_info(tmp_path, capsys) -> None:
    assert main(["run", "The Eiffel Tower is in the city of", "--top-k", "3", "--json", str(tmp_path / "r.json")]) == 0
    assert "' Paris'" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["top"][0]["token"] == " Paris"
    assert main(["verify", "--json", str(tmp_path / "v.json")]) == 0
    checks = json.loads((tmp_path / "v.json").read_text())["checks"]
    assert checks and all(c["passed"] for c in checks)
    assert main(["info"]) == 0
    assert "blocks.0.attn.hook_pattern" in capsys.readouterr().out


def test_missing_model_is_one_clear_line(tmp_path, capsys) -> None:
    assert main(["info", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
