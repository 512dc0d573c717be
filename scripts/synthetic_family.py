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
import datetime
import json
import platform
import subprocess
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


def grid(data: dict) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """(members, architectures, result by (member, architecture)) of a family run, in run order."""
    rows = data["results"]
    members = list(dict.fromkeys(r["member"] for r in rows))
    archs = [a for a in ARCHS if any(r["architecture"] == a for r in rows)]
    return members, archs, {(r["member"], r["architecture"]): r for r in rows}


def table(data: dict) -> str:
    """Markdown table: one row per member, `recovered / MMCS / L0` per architecture."""
    rows = data["results"]
    members, archs, by = grid(data)
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


def readme_table(data: dict) -> dict:
    """The table and goals in the layout `scripts/readme_tables.py` renders into the README.

    Goal per architecture: >= 0.9 recovered with the defaults on the builtin member and at least
    three others; the value is the number of members at >= 0.9 (0 when builtin is not one).
    """
    rows = data["results"]
    members, archs, by = grid(data)
    body = []
    for m in members:
        true_l0 = next(r["true_l0"] for r in rows if r["member"] == m)
        cells = [f"{by[m, a]['fraction_recovered']:.2f}" + ("" if by[m, a]["fraction_recovered"] >= 0.9 else " (below)")
                 if (m, a) in by else "-" for a in archs]
        body.append([m, f"{true_l0:.1f}", *cells])
    goals = []
    for a in archs:
        passed = [m for m in members if (m, a) in by and by[m, a]["fraction_recovered"] >= 0.9]
        count = len(passed) if "builtin" in passed else 0
        goals.append({"name": f"{a}: members recovered >= 0.9 (0 unless builtin is one)", "value": count,
                      "target": 4, "op": ">=", "unit": "members", "met": count >= 4})
    caption = (f"Fraction of true features recovered above cosine 0.9, defaults with only `k` / target L0 given; "
               f"{data['steps']} steps of {data['batch_size']} tokens, seed {data['seed']}, "
               f"`d_sae = 2 * n_features` (MMCS and L0 per cell in docs/dictionaries.md).")
    return {"table": {"columns": ["member", "true L0", *archs], "rows": body, "caption": caption}, "goals": goals}


def with_readme_table(data: dict) -> dict:
    """`data` with its README table, goals, benchmark name and measurement time filled in."""
    stamp = data.get("measured_at") or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    provenance = dict(data.get("provenance") or {})
    if "machine" not in provenance:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        provenance["machine"] = {"processor": platform.machine(), "torch_threads": torch.get_num_threads(),
                                 "git_commit": commit.stdout.strip() or "?"}
    return {**data, "provenance": provenance, "benchmark": "synthetic_family", "quick": data["steps"] < 1500,
            "measured_at": stamp, **readme_table(data)}


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
        data = with_readme_table(json.loads(out.read_text()))
        atomic_write_json(out, data)
        write_table(data)
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
            data = with_readme_table({
                "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
                "results": list(results.values()),
                "provenance": {"model": None, "mechscope_version": mechscope.__version__,
                               "torch_version": torch.__version__, "python": platform.python_version(),
                               "seed": args.seed}})
            atomic_write_json(out, data)
    write_table(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
