"""Import rules of the source tree: no module imports another module's private names, and imports run
downward through DESIGN.md's layers (core, methods and toys never import the package root)."""

from __future__ import annotations

import ast
from pathlib import Path

import mechscope

SRC = Path(mechscope.__file__).parent


def _imported_names(tree: ast.AST) -> list[tuple[str, str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mechscope"):
            out += [(node.module, alias.name, node.lineno) for alias in node.names]
    return out


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for module, name, line in _imported_names(ast.parse(path.read_text(encoding="utf-8"))):
            if name.startswith("_") and not name.startswith("__"):
                offenders.append(f"{path.relative_to(SRC)}:{line} imports {name} from {module}")
    assert not offenders, "\n".join(offenders)


# DESIGN.md's layers, lowest first; a module imports only from its own layer or below (toys sit on core).
LAYERS = {"core": 0, "toys": 1, "methods": 1, "dictionaries": 2, "features": 3, "circuits": 4, "apps": 5}


def test_imports_run_downward_through_the_layers() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).parts
        if len(parts) < 2 or parts[0] not in LAYERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                       [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for module in modules:
                target = module.split(".")
                if target[0] != "mechscope":
                    continue
                if len(target) == 1 or target[1] not in LAYERS:
                    if LAYERS[parts[0]] <= 1:  # the root package imports every layer: not from core, methods, toys
                        offenders.append(f"{'/'.join(parts)}:{node.lineno} imports the package root ({module})")
                elif LAYERS[target[1]] > LAYERS[parts[0]]:
                    offenders.append(f"{'/'.join(parts)}:{node.lineno} imports {module} from a higher layer")
    assert not offenders, "\n".join(offenders)
