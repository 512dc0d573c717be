"""List mechscope's public functions and classes whose docstring is missing or has no example.

Public: defined in the module (not imported), name without a leading underscore, at module
level (methods are left out). "Example" means an `Example:`/`Examples:` section or a `>>>` line,
in the object's docstring or, for a class, in its `__init__`'s.

Example:
    >>> rows = audit(["mechscope.core.names"])
    >>> all(r.kind in ("function", "class") for r in rows)
    True

Run `python docs/site_tools/docstring_audit.py [PACKAGE_PREFIX ...]` for a table and the counts.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from typing import NamedTuple

import mechscope


class Missing(NamedTuple):
    """One public object lacking a docstring (`no docstring`) or an example in it (`no example`)."""

    module: str
    name: str
    kind: str
    problem: str


def _has_example(doc: str) -> bool:
    return ">>>" in doc or "Example:" in doc or "Examples:" in doc


def audit(modules: list[str] | None = None) -> list[Missing]:
    """Every public module-level function and class of `modules` (default: all of mechscope) lacking one."""
    names = modules or sorted(i.name for i in pkgutil.walk_packages(mechscope.__path__, "mechscope."))
    out = []
    for module_name in names:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj) if inspect.isfunction(obj) else (obj.__dict__.get("__doc__") or "")
            kind = "class" if inspect.isclass(obj) else "function"
            if not doc:
                out.append(Missing(module_name, name, kind, "no docstring"))
            elif not _has_example(doc):
                out.append(Missing(module_name, name, kind, "no example"))
    return out


if __name__ == "__main__":
    prefixes = sys.argv[1:] or ["mechscope."]
    rows = [r for r in audit() if any(r.module.startswith(p) for p in prefixes)]
    for r in rows:
        print(f"{r.module}.{r.name}\t{r.kind}\t{r.problem}")
    by_problem: dict[str, int] = {}
    for r in rows:
        by_problem[r.problem] = by_problem.get(r.problem, 0) + 1
    print(f"# {len(rows)} public objects: {by_problem}", file=sys.stderr)
