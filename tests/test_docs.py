"""The documentation site: the CLI reference matches the live `--help`, and the site builds offline with --strict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "site_tools"))

import cli_pages  # noqa: E402


def test_cli_reference_is_current() -> None:
    page = (ROOT / "docs" / "cli.md").read_text()
    assert page == cli_pages.render(), "docs/cli.md is out of date: run `python docs/site_tools/cli_pages.py`"


def test_cli_reference_covers_every_command() -> None:
    commands = sorted(p.stem for p in (ROOT / "src/mechscope/apps/commands").glob("*.py")
                      if p.stem not in ("__init__", "common"))
    page = (ROOT / "docs" / "cli.md").read_text()
    missing = [c for c in commands if f"## mechscope {c}\n" not in page]
    assert not missing, f"commands without a section in docs/cli.md: {missing}"


def test_howto_names_only_real_commands() -> None:
    """Every `mechscope X` line of the how-to page names a command the CLI has."""
    commands = {p.stem for p in (ROOT / "src/mechscope/apps/commands").glob("*.py")}
    for line in (ROOT / "docs" / "howto.md").read_text().splitlines():
        if line.startswith("mechscope "):
            assert line.split()[1] in commands, f"unknown command in docs/howto.md: {line}"


@pytest.mark.slow
def test_site_builds_strict_offline(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, nav entry or API reference fails the build.

    Offline by construction: the theme's web fonts are off (`theme.font: false`) and notebooks
    are rendered from their stored outputs, so the build fetches nothing.
    """
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "api" / "core" / "index.html").exists()
    html = (tmp_path / "site" / "index.html").read_text()
    assert "fonts.googleapis.com" not in html, "the built site would fetch fonts from outside"
