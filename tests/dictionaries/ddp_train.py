"""Helper for test_distributed.py: train a small dictionary, alone or under torchrun, and save its weights.

Usage: `python ddp_train.py OUT_DIR ARCH...` or `torchrun --nproc_per_node 2 ddp_train.py OUT_DIR ARCH...`;
writes `OUT_DIR/ARCH.safetensors` (metadata: world size and tokens per rank).
Every rank reads the same global batches; the trainer gives each rank its own contiguous slice.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.trainer import Trainer, TrainerConfig


def global_batches(n: int, batch: int = 128, d: int = 16):
    gen = torch.Generator().manual_seed(11)
    basis = torch.randn(48, d, generator=gen)
    for _ in range(n):
        codes = torch.rand(batch, 48, generator=gen) * (torch.rand(batch, 48, generator=gen) < 0.1)
        yield codes @ basis + 0.5


def train(arch: str, out: str) -> None:
    extra = {"k": 4} if "topk" in arch else {}
    sae = make_dictionary(arch, d_in=16, d_sae=64, seed=3, **extra)
    cfg = TrainerConfig(total_steps=20, lr=2e-3, lr_warmup_steps=2, sparsity_warmup_steps=5, progress=False,
                        dead_window_tokens=10**9, seed=5)
    trainer = Trainer(sae, cfg)
    trainer.fit(global_batches(20))
    if not dist.is_initialized() or dist.get_rank() == 0:
        meta = {"world_size": str(trainer.world), "local_tokens": str(trainer.local_tokens)}
        save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, out, metadata=meta)


def main(out_dir: str, archs: list[str]) -> None:
    torch.set_num_threads(1)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    for arch in archs:
        train(arch, os.path.join(out_dir, f"{arch}.safetensors"))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
