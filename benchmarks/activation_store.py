"""Activation-store reading rate vs the rate at which the trainer consumes tokens.

Reads shuffled batches from a store (`--acts`, e.g. one written by `mechscope sae cache`) and
times TopK training steps (`d_in` of the store, `expansion`, `k`) on batches from it, so the
two rates can be compared: training never waits on the store when `reader / trainer >> 1`.

Usage:
    python benchmarks/activation_store.py --acts out/acts-smollm2-l15 [--batch 4096]
                                          [--expansion 16] [--k 32] [--steps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mechscope.dictionaries import make_dictionary
from mechscope.dictionaries.store_reader import open_store
from mechscope.dictionaries.trainer import Trainer, TrainerConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", required=True)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--reader-tokens", type=int, default=None, help="rows to read (default 2 passes)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    reader = open_store(args.acts)
    read_rate = reader.throughput(args.batch, min_tokens=args.reader_tokens, seed=0)

    sae = make_dictionary("topk", d_in=reader.d, d_sae=args.expansion * reader.d, k=args.k, seed=0)
    trainer = Trainer(sae, TrainerConfig(total_steps=args.steps + 1, progress=False, log_every=10**9))
    batches = reader.batches(args.batch, seed=1, epochs=None)
    trainer._initialise([(next(batches), None)])
    trainer.train_step(next(batches))  # warm-up
    times = []
    for _ in range(args.steps):
        x = next(batches)
        t0 = time.perf_counter()
        trainer.train_step(x)
        times.append(time.perf_counter() - t0)
    train_rate = args.batch / statistics.median(times)
    result = {"store": str(args.acts), "store_dtype": reader.manifest["dtype"], "d": reader.d,
              "batch": args.batch, "threads": torch.get_num_threads(),
              "reader_tokens_per_s": read_rate, "trainer_tokens_per_s": train_rate,
              "reader_over_trainer": read_rate / train_rate}
    print(f"reader  {read_rate:12,.0f} tokens/s  (shuffled, buffer across shards)")
    print(f"trainer {train_rate:12,.0f} tokens/s  (TopK k={args.k}, d_sae={args.expansion * reader.d})")
    print(f"ratio   {read_rate / train_rate:12,.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
