"""Shared fixtures: tiny random models of every family, and the real default model (session-scoped)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import CONFIGS, tiny_model  # noqa: E402


@pytest.fixture(params=sorted(CONFIGS))
def tiny(request: pytest.FixtureRequest):
    """A tiny random HookedModel, once per family."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct), loaded once per session."""
    import mechscope

    return mechscope.load_model()
