"""Every docstring example in mechscope runs as a doctest (examples that need a real model say `+SKIP`).

Each module runs in an empty temporary folder, so an example that writes a file writes it there.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import mechscope

MODULES = sorted(info.name for info in pkgutil.walk_packages(mechscope.__path__, "mechscope."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
