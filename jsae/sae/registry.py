"""Architectures by name: the records (``jsae.sae.Architecture``) of jsae's architectures and of
any registered with :func:`register`.

jsae's own are found, not listed: every module of ``jsae/sae`` that exports ``ARCHITECTURE`` is one, so
adding an architecture to jsae is adding its file. ``ARCHITECTURES`` and ``USES_K`` name jsae's own
(derived from their records); the functions below also see registered ones (a record of your own, in
your code: ``register(record)``).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

import jax
from jaxtyping import Array, Float, PRNGKeyArray

from jsae.sae._base import SAE
from jsae.sae._record import Architecture
from jsae.sae._stack import stack

_FIRST = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")  # the CLI's order; others after


def _builtin() -> tuple[Architecture, ...]:
    """The records of the modules of ``jsae/sae`` that export ``ARCHITECTURE`` (``_FIRST`` first)."""
    names = sorted((m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])), key=_order)
    modules = [importlib.import_module(f"jsae.sae.{name}") for name in names]
    return tuple(m.ARCHITECTURE for m in modules if isinstance(getattr(m, "ARCHITECTURE", None), Architecture))


def _order(name: str) -> tuple[int, str]:
    return (_FIRST.index(name) if name in _FIRST else len(_FIRST), name)


BUILTIN: tuple[Architecture, ...] = _builtin()
ARCHITECTURES: tuple[str, ...] = tuple(a.name for a in BUILTIN)
USES_K: tuple[str, ...] = tuple(a.name for a in BUILTIN if a.uses_k)

_RECORDS: dict[str, Architecture] = {}


def register(record: Architecture) -> Architecture:
    """Add an architecture: afterwards the CLI helpers, the trainer's hyperparameter defaults and
    ``jsae.io._saelens`` know it. Registering the same record again is a no-op; another record under a
    taken name, class or SAELens architecture name raises a ValueError. Returns the record."""
    if not isinstance(record, Architecture):
        raise TypeError(f"register takes a jsae.sae.Architecture, got {type(record).__name__}")
    if _RECORDS.get(record.name) is record:
        return record
    for other in _RECORDS.values():
        clash = (
            f"name {record.name!r}"
            if other.name == record.name
            else f"class {record.cls.__name__}"
            if other.cls is record.cls
            else next((f"SAELens architecture {s!r}" for s in record.saelens_reads if s in other.saelens_reads), None)
        )
        if clash:
            raise ValueError(f"cannot register {record.name!r}: its {clash} is already {other.name!r}'s")
    _RECORDS[record.name] = record
    return record


for _record in BUILTIN:
    register(_record)


def names() -> tuple[str, ...]:
    """Every registered architecture's name (jsae's first, then registered ones in order)."""
    return tuple(_RECORDS)


def get(arch: str) -> Architecture:
    """The record of the named architecture; an unknown name raises a ValueError listing the known ones."""
    if arch not in _RECORDS:
        raise ValueError(f"unknown SAE architecture {arch!r}; choose one of {', '.join(_RECORDS)}")
    return _RECORDS[arch]


def of(sae: SAE | type) -> Architecture:
    """The record of an SAE (or stack) by its class; an unregistered class raises a TypeError."""
    cls = sae if isinstance(sae, type) else type(sae)
    for record in _RECORDS.values():
        if record.cls is cls:
            return record
    raise TypeError(
        f"{cls.__module__}.{cls.__name__} is not a registered SAE architecture: give its module a record "
        "(jsae.sae.Architecture) and pass it to jsae.sae.registry.register"
    )


def reading_saelens(saelens_arch: str) -> Architecture | None:
    """The record that reads the named SAELens architecture ("standard", "topk", ...), or None."""
    return next((r for r in _RECORDS.values() if saelens_arch in r.saelens_reads), None)


def saelens_names() -> tuple[str, ...]:
    """Every SAELens architecture name some registered record reads."""
    return tuple(s for r in _RECORDS.values() for s in r.saelens_reads)


def module(arch: str) -> ModuleType:
    """The module that defines an architecture (``jsae.sae.<arch>`` for jsae's), with its ``init``."""
    return importlib.import_module(get(arch).init.__module__)


def init_stack(
    arch: str,
    key: PRNGKeyArray,
    n: int,
    d_in: int,
    d_sae: int,
    *,
    k: int | None = None,
    data: Float[Array, "N n d_in"] | Float[Array, "n d_in"] | None = None,
    **cfg,
) -> SAE:
    """N SAEs of the named architecture (``k`` is passed only to architectures that take it)."""
    record = get(arch)
    if record.uses_k:
        if k is None:
            raise ValueError(f"architecture {arch!r} needs k (active latents per token)")
        cfg["k"] = k
    return stack(record.init, jax.random.split(key, n), d_in, d_sae, data=data, **cfg)
