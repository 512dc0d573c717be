"""What every benchmark script shares: interleaved timings, peak memory, goals and the JSON result file.

Timings are interleaved: within each repeat every candidate runs once, in turn, so a noisy
machine slows all of them alike; each candidate's median and spread over the repeats are
reported. Results go to `benchmarks/results/<name>.json` (with `--quick`, to
`benchmarks/results/quick/`, which the README tables ignore), written through
`mechscope.core.files.write_json` with a provenance block. `scripts/readme_tables.py`
turns each file's `table` and `goals` into the README's tables.

Example:
    >>> t = time_interleaved({"sleep": lambda: None}, repeats=3, warmup=0)
    >>> sorted(t["sleep"])
    ['max_s', 'median_s', 'min_s', 'samples_s', 'spread']
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"
Timing = dict[str, Any]


def time_interleaved(candidates: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                     warm: Collection[str] = ()) -> dict[str, Timing]:
    """Seconds per call of each candidate: median, min, max, spread ((max - min) / median) and the samples.

    Candidates run in turn within each repeat (after `warmup` untimed rounds, which skip the
    candidates named in `warm`: those the caller has already run once, e.g. for their results);
    each decides itself whether it needs autograd.
    """
    for _ in range(warmup):
        for name, fn in candidates.items():
            if name not in warm:
                fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: summarize(times) for name, times in samples.items()}


def summarize(times: list[float]) -> Timing:
    median = statistics.median(times)
    return {"median_s": median, "min_s": min(times), "max_s": max(times),
            "spread": (max(times) - min(times)) / median if median > 0 else 0.0, "samples_s": times}


def peak_memory_mb(fn: Callable[[], object], device: str = "cpu", interval_s: float = 0.002) -> float:
    """Extra memory `fn()` needs at its peak, in MiB.

    CUDA: `torch.cuda.max_memory_allocated` above what was allocated before. CPU on Linux: the
    process's peak resident set (`VmHWM`, reset through `/proc/self/clear_refs`) above its size
    before the call, after the heap's free pages are handed back (`malloc_trim`), so memory
    that earlier calls freed counts when this call reuses it; elsewhere the resident set
    sampled every `interval_s` by a thread.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    import gc

    gc.collect()
    _release_free_heap()
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    except OSError:
        return _sampled_peak_mb(fn, interval_s)
    before = _status_kb(status, "VmRSS")
    fn()
    return (_status_kb(status, "VmHWM") - before) / 1024


def _release_free_heap() -> None:
    """Give the heap's free pages back to the OS (glibc `malloc_trim`), so reusing them shows in the resident set."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _status_kb(status: Path, field: str) -> int:
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _sampled_peak_mb(fn: Callable[[], object], interval_s: float) -> float:
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    return (peak[0] - before) / 2**20


def goal(name: str, value: float | None, target: float, op: str = "<=", unit: str = "x") -> dict[str, Any]:
    """One goal of a benchmark: `value op target`, recorded as met or missed (None value: not measured)."""
    checks = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}
    met = None if value is None else bool(checks[op](value, target))
    return {"name": name, "value": value, "target": target, "op": op, "unit": unit, "met": met}


def add_arguments(parser: argparse.ArgumentParser, repeats: int = 5) -> None:
    """The options every benchmark takes: --quick, --repeats, --threads, --out."""
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings, one repeat: proves the script runs; writes to results/quick/")
    parser.add_argument("--repeats", type=int, default=None, help=f"interleaved repeats (default {repeats}; quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/<name>.json)")
    parser.set_defaults(default_repeats=repeats)


def setup(args: argparse.Namespace) -> int:
    """Apply --threads and return the number of repeats."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return setup_repeats(args)


def load(name: str | None = None, quick: bool = False, n_layers: int = 2, dtype: torch.dtype = torch.float32) -> Any:
    """A real model (the default one when `name` is None); with `quick`, cut to its first `n_layers` layers."""
    import mechscope

    model = mechscope.load_model(name, dtype=dtype) if name else mechscope.load_model(dtype=dtype)
    if not quick:
        return model
    hf = model.hf_model
    layers = model.layers
    while len(layers) > n_layers:
        del layers[len(layers) - 1]
    text = hf.config.get_text_config(decoder=True)
    text.num_hidden_layers = n_layers
    for key in ("layer_types",):
        if getattr(text, key, None):
            setattr(text, key, list(getattr(text, key))[:n_layers])
    return mechscope.HookedModel(hf, model.tokenizer, name=f"{model.cfg.name} (first {n_layers} layers)")


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "git_commit": _git_commit()}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_result(name: str, args: argparse.Namespace, model: Any, result: dict[str, Any]) -> Path:
    """Write `benchmarks/results/<name>.json` (or quick/, or --out) with provenance; returns the path.

    `result` holds `settings`, `timings`, `goals`, a `table` (`columns`, `rows`, optional
    `caption`) for the README, and anything else the script measured.
    """
    from mechscope.core.files import write_json
    from mechscope.core.provenance import provenance

    path = Path(args.out) if args.out else (RESULTS / "quick" if args.quick else RESULTS) / f"{name}.json"
    block = provenance(model, seed=0, machine=machine()) if model is not None else {"machine": machine()}
    body = {"benchmark": name, "quick": bool(args.quick), "repeats": setup_repeats(args),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result, "provenance": block}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, body, force=False)
    print(f"wrote {path}")
    for g in result.get("goals", []):
        state = "not measured" if g["met"] is None else ("met" if g["met"] else "MISSED")
        value = "-" if g["value"] is None else f"{g['value']:.3g}"
        print(f"goal {g['name']}: {value} {g['op']} {g['target']} {g['unit']}: {state}")
    return path


def setup_repeats(args: argparse.Namespace) -> int:
    return args.repeats or (1 if args.quick else args.default_repeats)


def cell(value: float | None, digits: int = 2, suffix: str = "") -> str:
    """A table cell: a rounded number, or a dash."""
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def print_table(title: str, times: dict[str, Timing], baseline: str) -> None:
    print(f"\n{title}")
    print(f"{'what':<58} {'median s':>9} {'spread':>7} {'x ' + baseline:>14}")
    for name, t in times.items():
        print(f"{name:<58} {t['median_s']:>9.4f} {t['spread']:>7.2f} {t['median_s'] / times[baseline]['median_s']:>14.3f}")
