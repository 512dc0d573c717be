"""Train every architecture on every member of the synthetic family with the defaults; write JSON and the docs table.

Only the sparsity is given (TopK/BatchTopK `k`, penalty architectures `target_l0`, both the
member's true L0). Results go to `benchmarks/results/synthetic_family.json` (with provenance);
the table between the markers in `docs/dictionaries.md` is regenerated from that file.

Usage:
    python scripts/synthetic_family.py [--members builtin,wide-l2] [--archs topk,relu] [--steps 1500]
    python scripts/synthetic_family.py --table-only     # rewrite the docs table from the JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import mechscope
from mechscope.core.files import atomic_write_json
from mechscope.dictionaries.synthetic import FAMILY, family_member, run_synthetic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "synthetic_family.json"
DOC = ROOT / "docs" / "dictionaries.md"
BEGIN, END = "<!-- synthetic-family table: begin -->", "<!-- synthetic-family table: end -->"
ARCHS = ["relu", "topk", "batchtopk", "jumprelu", "gated"]


def table(data: dict) -> str:
    """Markdown table: one row per member, `recovered / MMCS / L0` per architecture."""
    rows = data["results"]
    members = list(dict.fromkeys(r["member"] for r in rows))
    archs = [a for a in ARCHS if any(r["architecture"] == a for r in rows)]
    by = {(r["member"], r["architecture"]): r for r in rows}
    head = "| member | true L0 | " + " | ".join(archs) + " |\n|---|---|" + "---|" * len(archs) + "\n"
    lines = []
    for m in members:
        cells = []
        for a in archs:
            r = by.get((m, a))
            if r is None:
                cells.append("-")
                continue
            mark = "" if r["fraction_recovered"] >= 0.9 else " (below 0.9)"
            cells.append(f"{r['fraction_recovered']:.2f} / {r['mmcs']:.3f} / {r['l0']:.1f}{mark}")
        true_l0 = next(r["true_l0"] for r in rows if r["member"] == m)
        lines.append(f"| {m} | {true_l0:.1f} | " + " | ".join(cells) + " |")
    note = (f"\nCells: fraction of true features recovered above cosine 0.9 / MMCS / L0 at evaluation. "
            f"{data['steps']} steps of {data['batch_size']} tokens, seed {data['seed']}, "
            f"`d_sae = 2 * n_features`; made by `python scripts/synthetic_family.py`.\n")
    return head + "\n".join(lines) + "\n" + note


def write_table(data: dict) -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} lacks the table markers {BEGIN} ... {END}")
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    DOC.write_text(before + BEGIN + "\n" + table(data) + END + after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default=",".join(FAMILY))
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.table_only:
        write_table(json.loads(out.read_text()))
        return 0
    old = json.loads(out.read_text()) if out.exists() else {"results": []}
    same = old.get("steps") == args.steps and old.get("batch_size") == args.batch_size and old.get("seed") == args.seed
    results = {(r["member"], r["architecture"]): r for r in old["results"] if r["member"] in FAMILY} if same else {}
    for member in args.members.split(","):
        for arch in args.archs.split(","):
            start = time.perf_counter()
            r = run_synthetic(arch, seed=args.seed, steps=args.steps, batch_size=args.batch_size,
                              data=family_member(member, args.seed))
            r["member"] = member
            results[(member, arch)] = r
            print(f"{member:>16} {arch:>9}: recovered {r['fraction_recovered']:.3f} mmcs {r['mmcs']:.3f} "
                  f"l0 {r['l0']:.2f} (true {r['true_l0']:.1f}) ev {r['explained_variance']:.3f} "
                  f"[{time.perf_counter() - start:.0f}s]", flush=True)
            data = {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
                    "results": list(results.values()),
                    "provenance": {"model": None, "mechscope_version": mechscope.__version__,
                                   "torch_version": torch.__version__, "python": platform.python_version(),
                                   "seed": args.seed}}
            atomic_write_json(out, data)
    write_table(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
