"""The offline default corpus: text that ships with every CPython install, read without importing it.

Three parts, in this order (each in sorted order, so the corpus is the same on every run):

- ``"topics"``: the reference-manual topics that ``help()`` shows (``pydoc_data.topics``), one
  document per topic;
- ``"docstrings"``: for each standard-library module, its docstrings (module, classes, functions, in
  source order, read with :mod:`ast`) joined by blank lines, one document per module;
- ``"source"``: each standard-library module's source code, one document per module (leaving out the
  ``encodings`` tables and ``pydoc_data``, which are data).

Test packages, ``site-packages`` and caches are left out. The corpus belongs to the running Python
version: another version has other text, and its fingerprint says so.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
import threading
import tokenize
import warnings
from pathlib import Path

from ._errors import DataError
from ._source import Record, TextSource

PARTS = ("topics", "docstrings", "source")
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
_NOT_SOURCE = {"encodings", "pydoc_data"}
_AST_LOCK = threading.Lock()  # CPython 3.11/3.12's ast.parse is not thread-safe (recursion-depth SystemError)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[Path]:
    """The standard library's ``.py`` files, sorted by path relative to ``root``."""
    files = []
    for p in root.rglob("*.py"):
        dirs = p.relative_to(root).parts[:-1]
        if not any(d in _SKIP_DIRS or d.startswith(".") for d in dirs):
            files.append(p)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _decode(data: bytes) -> str | None:
    """Source text as Python reads it (PEP 263 coding cookie); None if it does not decode."""
    try:
        encoding, _ = tokenize.detect_encoding(iter(data.splitlines(keepends=True)).__next__)
        return data.decode(encoding)
    except (SyntaxError, UnicodeDecodeError, LookupError):
        return None


def docstrings(source: str) -> list[str]:
    """The docstrings of a module, its classes and functions, in source order (cleaned by ``inspect``'s rules)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning for old escape sequences
        try:
            with _AST_LOCK:
                tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return []
    out: list[str] = []

    def visit(node):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                out.append(doc)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics  # a data module: a dict of strings
    except ImportError:  # some distributions ship Python without it
        return {}
    return dict(topics)


class PythonCorpus(TextSource):
    """Python's own documentation and standard library as text (see the module docstring)."""

    def __init__(self, parts: tuple[str, ...] = PARTS):
        parts = tuple(parts)
        unknown = [p for p in parts if p not in PARTS]
        if unknown or not parts:
            raise DataError(f"unknown Python corpus parts {unknown or parts!r}; choose from {PARTS}")
        self.parts, self.root = parts, stdlib_root()
        topics = _topics() if "topics" in parts else {}
        files = stdlib_files(self.root) if {"docstrings", "source"} & set(parts) else []
        self._topics = topics
        self._records: list[tuple[str, str]] = []
        for part in parts:
            if part == "topics":
                self._records += [("topics", k) for k in sorted(topics)]
            elif part == "docstrings":
                self._records += [("docstrings", str(p)) for p in files]
            else:
                self._records += [
                    ("source", str(p)) for p in files if p.relative_to(self.root).parts[0] not in _NOT_SOURCE
                ]
        if not self._records:
            raise DataError(
                f"found no Python documentation or standard library under {self.root}; "
                "pass a text file or folder instead"
            )
        h = hashlib.sha256(f"{sys.implementation.name} {sys.version}\0{parts}".encode())
        for k in sorted(topics):
            h.update(k.encode() + b"\0" + topics[k].encode())
        for p in files:
            h.update(p.relative_to(self.root).as_posix().encode() + b"\0" + p.read_bytes())
        self._fp = h.hexdigest()[:32]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> Record:
        part, key = self._records[i]
        if part == "topics":
            return Record(self._topics[key], True)
        text = _decode(Path(key).read_bytes()) or ""
        if part == "docstrings":
            text = "\n\n".join(docstrings(text))
        return Record(text, True)

    def name_of(self, i: int) -> str:
        """``part:topic`` or ``part:module/path.py`` of record ``i``."""
        part, key = self._records[i]
        return f"{part}:{key if part == 'topics' else Path(key).relative_to(self.root).as_posix()}"

    def describe(self) -> dict:
        return {
            "kind": "python",
            "parts": list(self.parts),
            "python": sys.version.split()[0],
            "path": str(self.root),
            "records": len(self),
            "documents": len(self),
            "fingerprint": self._fp,
        }
