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


def _packages() -> list[str]:
    """Every package under jsae/ (``jsae.models``, ``jsae.analysis.circuits``, ...)."""
    return sorted(".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jsae").rglob("__init__.py"))[1:]


def _submodules(pkg: types.ModuleType) -> set[str]:
    return {m.name for m in pkgutil.iter_modules(pkg.__path__)}


@pytest.mark.parametrize("name", _packages())
def test_namespace_exports_what_it_lists_and_hides_no_module(name):
    pkg = importlib.import_module(name)
    assert hasattr(pkg, "__all__"), f"{name}/__init__.py lists no API: give it an __all__"
    missing = [n for n in pkg.__all__ if not hasattr(pkg, n) and n not in _submodules(pkg)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"
    shadowed = [m for m in _submodules(pkg) if hasattr(pkg, m) and not isinstance(getattr(pkg, m), types.ModuleType)]
    assert not shadowed, f"{name} binds non-modules to the names of its modules {shadowed}"


@pytest.mark.parametrize("name", _packages())
def test_implementation_modules_are_private(name):
    """A public-named module is part of its package's API only when ``__all__`` lists it (the SAE
    architectures, ``jsae.sae.registry``, ``jsae.models.hooks``, the CLI's commands, the benchmark programs);
    every other module of a package is private (``_name.py``)."""
    pkg = importlib.import_module(name)
    public = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_") and not m.ispkg]
    unlisted = [m for m in public if m not in pkg.__all__]
    assert not unlisted, f"{name}: public-named modules its __all__ does not list (make them _private): {unlisted}"


def test_every_command_module_is_a_cli_command():
    import jsae.cli
    import jsae.commands

    assert jsae.cli.COMMANDS == tuple(jsae.commands.__all__)
    assert set(jsae.commands.__all__) <= _submodules(jsae.commands)
