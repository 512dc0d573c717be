"""README benchmark tables, generated from the benchmark result files (`benchmarks/results/<name>.json`).

Each result file with a `table` becomes a markdown table (its caption, the table, then each
goal as met or MISSED) placed in the README between the markers

    <!-- bench:<name> -->
    ...generated...
    <!-- /bench:<name> -->

Usage:
    python scripts/readme_tables.py             # print every table
    python scripts/readme_tables.py patching    # print one
    python scripts/readme_tables.py --write     # rewrite README.md between its markers
    python scripts/readme_tables.py --check     # exit 1 when README.md is stale (what the test runs)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- bench:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


def load_results(folder: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every result file in `folder` (not its subfolders), by benchmark name."""
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))}


def _goal_line(g: dict[str, Any]) -> str:
    state = "not measured" if g["met"] is None else ("met" if g["met"] else "**MISSED**")
    value = "-" if g["value"] is None else f"{g['value']:.3g}"
    return f"- {g['name']}: {value} (goal {g['op']} {g['target']:g} {g['unit']}): {state}"


def render(result: dict[str, Any]) -> str:
    """The markdown for one result: caption, table, goals, and where it came from."""
    table = result["table"]
    lines = []
    if table.get("caption"):
        lines += [table["caption"], ""]
    lines.append("| " + " | ".join(table["columns"]) + " |")
    lines.append("| " + " | ".join("---" for _ in table["columns"]) + " |")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table["rows"]]
    goals = result.get("goals") or []
    if goals:
        lines += ["", *(_goal_line(g) for g in goals)]
    machine = result.get("provenance", {}).get("machine", {})
    lines += ["", f"<sub>benchmarks/results/{result['benchmark']}.json, measured {result.get('measured_at', '?')}"
                  f" on {machine.get('processor', '?')} ({machine.get('torch_threads', '?')} threads), "
                  f"commit {machine.get('git_commit', '?')}.</sub>"]
    return "\n".join(lines) + "\n"


def update(text: str, results: dict[str, dict[str, Any]]) -> str:
    """`text` with every `bench:<name>` block replaced by the rendering of `results[name]`.

    A marker naming no result file is an error, so a typo cannot leave a table unchecked.
    """
    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in results:
            raise KeyError(f"README marker bench:{name} has no benchmarks/results/{name}.json")
        return match.group(1) + render(results[name]) + match.group(4)

    return BLOCK.sub(replace, text)


def stale(text: str, results: dict[str, dict[str, Any]]) -> list[str]:
    """Names of the README blocks whose content differs from what the result files give."""
    return [m["name"] for m in BLOCK.finditer(text)
            if m["name"] not in results or m["body"] != render(results[m["name"]])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to print (default: all with a table)")
    parser.add_argument("--write", action="store_true", help="rewrite README.md between its markers")
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md's tables are stale")
    parser.add_argument("--readme", default=str(README))
    parser.add_argument("--results", default=str(RESULTS), help="folder of result files (e.g. benchmarks/results/quick)")
    args = parser.parse_args()
    results = {k: v for k, v in load_results(Path(args.results)).items() if "table" in v}
    readme = Path(args.readme)
    if args.check:
        names = stale(readme.read_text(encoding="utf-8"), results)
        for name in names:
            print(f"{readme}: bench:{name} is stale; run python scripts/readme_tables.py --write", file=sys.stderr)
        return 1 if names else 0
    if args.write:
        readme.write_text(update(readme.read_text(encoding="utf-8"), results), encoding="utf-8")
        return 0
    for name in args.names or list(results):
        print(f"<!-- bench:{name} -->\n{render(results[name])}<!-- /bench:{name} -->\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
