"""The public/private split: no module imports another package's private names, the curated namespaces
export what they list, and no package ``__init__`` hides one of its modules behind a function of the same
name (oracle: the source files themselves, read with ``ast``/``pkgutil``)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _package(module: str) -> str:
    """``jsae.<package>`` of a dotted module name (``jsae.analysis.circuits._codes`` -> ``jsae.analysis``)."""
    return ".".join(module.split(".")[:2])


def test_no_module_imports_another_packages_private_names():
    offenders = []
    for path in [*(ROOT / "jsae").rglob("*.py"), *(ROOT / "experiments").rglob("*.py")]:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jsae")):
                continue
            if _package(node.module) == _package(module):
                continue
            private_module = any(part.startswith("_") for part in node.module.split(".")[2:])
            for alias in node.names:
                if private_module or alias.name.startswith("_"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {alias.name}")
    assert not offenders, "private names imported across packages:\n" + "\n".join(offenders)


@pytest.mark.parametrize("name", ["jsae.analysis", "jsae.analysis.circuits", "jsae.tasks", "jsae.io"])
def test_namespace_exports_what_it_lists_and_hides_no_module(name):
    pkg = importlib.import_module(name)
    missing = [n for n in pkg.__all__ if not hasattr(pkg, n)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"
    shadowed = [
        m.name
        for m in pkgutil.iter_modules(pkg.__path__)
        if hasattr(pkg, m.name) and not isinstance(getattr(pkg, m.name), types.ModuleType)
    ]
    assert not shadowed, f"{name} binds non-modules to the names of its modules {shadowed}"
