"""DistributedDataParallel: two torchrun processes (gloo, CPU) reach the weights of one process.

Same global batches and seeds; each rank trains on its half of every batch. Tolerance: atol 1e-5
(the two runs differ only in float summation order of the gradient average).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("ddp_train.py")


def _run(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.distributed
def test_two_processes_match_one(tmp_path):
    archs = ["relu", "topk", "batchtopk"]
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    _run([sys.executable, str(SCRIPT), str(tmp_path / "one"), *archs], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          str(SCRIPT), str(tmp_path / "two"), *archs], tmp_path)
    for arch in archs:
        one_path, two_path = str(tmp_path / "one" / f"{arch}.safetensors"), str(tmp_path / "two" / f"{arch}.safetensors")
        with safe_open(one_path, "pt") as f1, safe_open(two_path, "pt") as f2:
            assert (f1.metadata()["world_size"], f2.metadata()["world_size"]) == ("1", "2")
            # each rank trained on its half of the 20 global batches of 128 tokens
            assert (f1.metadata()["local_tokens"], f2.metadata()["local_tokens"]) == (str(20 * 128), str(20 * 64))
        one, two = load_file(one_path), load_file(two_path)
        assert one.keys() == two.keys()
        for name in one:
            torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=0, msg=lambda m, n=name, a=arch: f"{a} {n}: {m}")
