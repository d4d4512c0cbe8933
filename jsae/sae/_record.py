"""What the rest of jsae knows about an architecture: one :class:`Architecture` record per file of
``jsae/sae``, collected by ``jsae.sae.registry``.

Nothing outside ``jsae/sae`` switches on an architecture's name: the CLI reads ``uses_k``,
``sparsity`` and ``hyperparams``; the trainer fills the per-SAE hyperparameters a run did not give
from ``hyperparams``; ``jsae.io._saelens`` writes with ``to_saelens`` and reads with ``from_saelens``,
dispatching on the SAELens architecture names the records declare in ``saelens_reads``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from jaxtyping import Array

from jsae.sae._base import SAE

Dim = str
"""A tensor dimension in ``saelens_reads``: ``"d_in"`` or ``"d_sae"``."""


class SAELensForm(NamedTuple):
    """One SAE in SAELens terms: its ``architecture`` name (cfg.json), its ``tensors`` by SAELens name
    (``W_enc [d_in, d_sae]``, ...) and the extra cfg.json keys it needs (``{"k": 8}`` for TopK)."""

    architecture: str
    tensors: dict[str, Array]
    cfg: dict[str, Any]


@dataclass(frozen=True)
class Architecture:
    """The record of one SAE architecture.

    Attributes:
      name: the registry and CLI name (``jsae train --arch <name>``).
      cls: the (final) module class; ``registry.of(sae)`` finds the record by ``type(sae)``.
      init: ``init(key, d_in, d_sae, *, data=None, ...) -> SAE``, the module's constructor.
      uses_k: ``init`` takes ``k`` (active latents per token) and the sparsity comes from it.
      hyperparams: the per-SAE loss hyperparameters ``loss`` reads, name -> default. The trainer fills
        a name the run leaves at None (``TrainConfig(aux_coef=None)``) with its default; a default of
        None means "no default": the run must give it.
      sparsity: what ``sparsity_coef`` (the CLI's ``--sparsity``) means here, e.g. "L1 coefficient";
        None when the architecture has no sparsity coefficient (then it is not in ``hyperparams``).
      saelens_reads: the SAELens architectures this record reads, SAELens name -> the tensors it needs,
        tensor name -> shape in ``"d_in"`` / ``"d_sae"``; the loader checks them before ``from_saelens``.
      to_saelens: ``to_saelens(sae) -> SAELensForm`` for one SAE (no stack axis); None: not saveable.
      from_saelens: ``from_saelens(architecture, tensors, cfg) -> SAE``: one SAE from the checked float32
        tensors of a SAELens architecture of ``saelens_reads`` and the cfg.json (``d_in``, ``d_sae``,
        ``apply_b_dec_to_input``, ...); a bad cfg value raises ValueError. None: reads nothing.
    """

    name: str
    cls: type[SAE]
    init: Callable[..., SAE]
    uses_k: bool
    hyperparams: Mapping[str, float | None]
    sparsity: str | None = None
    saelens_reads: Mapping[str, Mapping[str, tuple[Dim, ...]]] = field(default_factory=dict)
    to_saelens: Callable[[Any], SAELensForm] | None = None
    from_saelens: Callable[[str, dict[str, Array], dict[str, Any]], SAE] | None = None

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"architecture name {self.name!r} must be a Python identifier (it names a CLI choice)")
        if (self.sparsity is None) == ("sparsity_coef" in self.hyperparams):
            raise ValueError(
                f"architecture {self.name!r}: give `sparsity` (what sparsity_coef means) exactly when "
                f"'sparsity_coef' is one of its hyperparams (it has {sorted(self.hyperparams)})"
            )
        if bool(self.saelens_reads) != (self.from_saelens is not None):
            raise ValueError(f"architecture {self.name!r}: saelens_reads and from_saelens go together")
        for arch, tensors in self.saelens_reads.items():
            bad = {k: v for k, v in tensors.items() if not set(v) <= {"d_in", "d_sae"}}
            if bad:
                raise ValueError(
                    f"architecture {self.name!r}: SAELens {arch!r} tensor shapes {bad} use dims "
                    "other than 'd_in' and 'd_sae'"
                )


def base_tensors(sae: SAE) -> dict[str, Array]:
    """The four tensors every SAELens architecture shares under these names."""
    return {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}


BASE_TENSORS: dict[str, tuple[Dim, ...]] = {
    "W_enc": ("d_in", "d_sae"),
    "b_enc": ("d_sae",),
    "W_dec": ("d_sae", "d_in"),
    "b_dec": ("d_in",),
}
"""Shapes of :func:`base_tensors` for ``saelens_reads``."""


def saelens_b_dec_to_input(cfg: Mapping[str, Any]) -> bool:
    """cfg.json's ``apply_b_dec_to_input`` (SAELens' default: True)."""
    return bool(cfg.get("apply_b_dec_to_input", True))
