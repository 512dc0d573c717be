"""The text every Python install carries: pydoc topics, stdlib docstrings, package docstrings.

These are the built-in sources of the default corpus (see :mod:`mechscope.core.corpus`
for their measured sizes and how they are combined, split and tokenized).

Example:
    >>> topics = list(iter_pydoc_topics())      # doctest: +SKIP
    >>> len(topics)                             # doctest: +SKIP
    79
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import io
import logging
import os
import pkgutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Modules never imported while collecting standard-library docstrings: GUIs, modules that
# print or open a browser on import, test suites, entry points, and private modules.
STDLIB_SKIP_PREFIXES = (
    "tkinter",
    "turtle",
    "turtledemo",
    "idlelib",
    "antigravity",
    "this",
    "test",
    "pydoc_data",
    "lib2to3.tests",
    "ctypes.test",
    "distutils.tests",
    "unittest.test",
    "sqlite3.test",
    "tkinter.test",
)


# ----------------------------------------------------------------------------- pydoc


def iter_pydoc_topics() -> Iterator[str]:
    """Yield the interpreter's documentation topics, sorted by topic name.

    Example:
        >>> next(iter_pydoc_topics()).splitlines()[0]
        'The "assert" statement'
    """
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield text


# ----------------------------------------------------------------------------- stdlib


def _skipped(name: str) -> bool:
    parts = name.split(".")
    if any(p.startswith("_") for p in parts):
        return True
    if parts[-1] in ("tests", "test"):
        return True
    return any(name == p or name.startswith(p + ".") for p in STDLIB_SKIP_PREFIXES)


def _quiet_import(name: str) -> Any | None:
    """Import a module with its warnings and output silenced; None when it fails."""
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException as exc:  # platform-specific modules raise anything on import
        if isinstance(exc, KeyboardInterrupt):
            raise
        logger.debug("skipping %s: %s: %s", name, type(exc).__name__, exc)
        return None


def stdlib_module_names() -> list[str]:
    """Sorted dotted names of the standard-library modules the default corpus reads.

    Top-level names come from ``sys.stdlib_module_names``; submodules of packages are
    found with :func:`pkgutil.iter_modules` (which does not import them).

    Example:
        >>> "json.decoder" in stdlib_module_names()
        True
    """
    names: set[str] = set()
    for top in sorted(sys.stdlib_module_names):
        if _skipped(top):
            continue
        names.add(top)
        spec = importlib.util.find_spec(top) if top not in sys.modules else sys.modules[top].__spec__
        if spec is None or not spec.submodule_search_locations:
            continue
        stack = [(top, list(spec.submodule_search_locations))]
        while stack:
            pkg, paths = stack.pop()
            for info in pkgutil.iter_modules(paths):
                full = f"{pkg}.{info.name}"
                if _skipped(full):
                    continue
                names.add(full)
                if info.ispkg:
                    sub = os.path.join(info.module_finder.path, info.name)  # type: ignore[union-attr]
                    stack.append((full, [sub]))
    return sorted(names)


def _clean(doc: object) -> str:
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _module_document(module: Any) -> str:
    """Module docstring followed by the docstrings of what the module itself defines."""
    name = module.__name__
    parts = []
    head = _clean(module.__doc__)
    if head:
        parts.append(f"{name}\n\n{head}")
    for attr in sorted(vars(module)):
        if attr.startswith("_"):
            continue
        obj = vars(module)[attr]
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) != name:
            continue
        doc = _clean(getattr(obj, "__doc__", None))
        if doc:
            parts.append(f"{name}.{attr}\n{doc}")
    return "\n\n".join(parts)


def iter_stdlib_docstrings() -> Iterator[str]:
    """Yield one document of docstrings per standard-library module, sorted by name.

    Example:
        >>> any(d.startswith("json\\n") for d in iter_stdlib_docstrings())   # doctest: +SKIP
        True
    """
    for name in stdlib_module_names():
        module = _quiet_import(name)
        if module is None:
            continue
        text = _module_document(module).strip()
        if text:
            yield text


# ----------------------------------------------------------------------------- packages


def _source_docstrings(tree: ast.Module, prefix: str) -> list[str]:
    parts = []
    head = ast.get_docstring(tree)
    if head:
        parts.append(f"{prefix}\n\n{head}")

    def visit(node: ast.AST, qual: str) -> None:
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if child.name.startswith("_"):
                    continue
                doc = ast.get_docstring(child)
                name = f"{qual}.{child.name}"
                if doc:
                    parts.append(f"{name}\n{doc}")
                if isinstance(child, ast.ClassDef):
                    visit(child, name)

    visit(tree, prefix)
    return parts


def iter_package_docstrings(package: str) -> Iterator[str]:
    """Yield one document of docstrings per source file of an installed package.

    Files are parsed with :mod:`ast` (nothing is imported) and visited in sorted path
    order. Raises ``ModuleNotFoundError`` when the package is not installed.

    Example:
        >>> docs = iter_package_docstrings("numpy")   # doctest: +SKIP
    """
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ModuleNotFoundError(f"package {package!r} is not installed")
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        files = [Path(spec.origin)]
        base = Path(spec.origin).parent
    else:
        base = Path(roots[0]).parent
        files = sorted(p for r in roots for p in Path(r).rglob("*.py"))
    for path in files:
        rel = path.relative_to(base).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if any(p in ("tests", "test", "testing") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
            logger.debug("skipping %s: %s", path, exc)
            continue
        text = "\n\n".join(_source_docstrings(tree, ".".join(parts))).strip()
        if text:
            yield text
