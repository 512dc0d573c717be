"""Shared fixtures of the dictionaries tests. Small sizes, one thread: the suite runs on shared CPUs."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Small tensors run fastest (and deterministically) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0, what: str = "") -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


@pytest.fixture
def assert_close():
    """`torch.testing.assert_close(actual, expected, atol, rtol)` with a message naming what was compared."""
    return _assert_close
