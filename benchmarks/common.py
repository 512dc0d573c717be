"""Timing helpers shared by the benchmark scripts: interleaved repeats, median seconds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_interleaved(candidates: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each candidate, running them in turn so drift hits all alike."""
    with torch.inference_mode():
        for fn in candidates.values():
            for _ in range(warmup):
                fn()
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(repeats):
            for name, fn in candidates.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def print_table(title: str, times: dict[str, float], baseline: str) -> None:
    print(f"\n{title}")
    print(f"{'what':<58} {'median s':>9} {'x ' + baseline:>14}")
    for name, seconds in times.items():
        print(f"{name:<58} {seconds:>9.4f} {seconds / times[baseline]:>14.3f}")
