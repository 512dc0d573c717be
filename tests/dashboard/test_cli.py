"""`mechscope dashboard --export-html`: one self-contained file, never over a file mechscope did not write."""

from __future__ import annotations

import json
import re

from mechscope.apps.cli import main
from mechscope.apps.dashboard.standalone import export_data


def test_export_html_embeds_the_api_answers(dash_dir, sources, tmp_path, capsys) -> None:
    out = tmp_path / "dash.html"
    assert main(["dashboard", str(dash_dir), "--export-html", str(out)]) == 0
    text = out.read_text()
    assert "<script src" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    data = json.loads(re.search(r'id="mechscope-data">(.*?)</script>', text, re.S).group(1))
    assert data == json.loads(json.dumps(export_data(sources)))
    assert data["/api/patch/patch"]["scores"] == json.loads((dash_dir / "patch.json").read_text())["scores"]
    assert main(["dashboard", str(dash_dir), "--export-html", str(out)]) == 0  # ours: replaced


def test_refuses_a_foreign_file_and_a_missing_path(dash_dir, tmp_path, capsys) -> None:
    foreign = tmp_path / "mine.html"
    foreign.write_text("my notes")
    assert main(["dashboard", str(dash_dir), "--export-html", str(foreign)]) == 2
    assert foreign.read_text() == "my notes"
    assert main(["dashboard", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
