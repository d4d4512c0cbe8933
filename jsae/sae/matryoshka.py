"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): nested dictionaries.

Latents come from BatchTopK (jsae.sae.batchtopk). For each width m in the static, increasing tuple
``prefixes`` (ending at d_sae), the first m latents alone must reconstruct x:

    x_hat_m = f[:, :m] W_dec[:m] + b_dec
    recon   = mean over m in prefixes of  mean_b ||x - x_hat_m||^2
    loss    = recon + aux_coef * AuxK(residual of the full reconstruction)

The prefix losses are averaged, not summed: with a single prefix (d_sae,) this is exactly BatchTopK,
and the loss keeps the scale of one reconstruction error whatever the number of prefixes, so
``aux_coef`` and learning rates carry over (a sum differs only by the factor len(prefixes)).

Inference, the threshold buffer and the JumpReLU export are BatchTopK's, shared through the functions
of ``jsae.sae.batchtopk`` (``threshold_activation``, ``batch_activation``, ``updated_threshold``,
``to_jumprelu``); the class does not subclass ``BatchTopKSAE``. Hyperparameters (``hp``): ``aux_coef``
(default 1/32, as in Bussmann et al.'s code). SAELens: saved as "jumprelu", as BatchTopK.
"""

from __future__ import annotations

import numbers
from typing import ClassVar, final

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from jsae.sae import _sparse as sp
from jsae.sae._auxk import active_latents, auxk_loss, sparse_auxk, use_sparse
from jsae.sae._base import SAE, BDecInit, Hyper, matmul, reconstruction_metrics, squared_error, unit_rows_if
from jsae.sae._record import Architecture
from jsae.sae.batchtopk import (
    batch_activation,
    batch_entries,
    init_fields,
    threshold_activation,
    to_jumprelu,
    to_saelens,
    updated_threshold,
)

__all__ = ["ARCHITECTURE", "MatryoshkaSAE", "init", "to_jumprelu"]


@final
class MatryoshkaSAE(SAE):
    W_enc: Float[Array, "d_in d_sae"]
    b_enc: Float[Array, " d_sae"]
    W_dec: Float[Array, "d_sae d_in"]
    b_dec: Float[Array, " d_in"]
    apply_b_dec_to_input: bool = eqx.field(static=True)
    threshold: Float[Array, ""]
    k: int = eqx.field(static=True)
    k_aux: int = eqx.field(static=True)
    threshold_decay: float = eqx.field(static=True)
    sparse: bool | None = eqx.field(static=True, default=None)  # training path: None = by size (use_sparse)
    # () means (d_sae,): plain BatchTopK (a default only because ``sparse`` has one)
    prefixes: tuple[int, ...] = eqx.field(static=True, default=())
    uses_dead_latents: ClassVar[bool] = True  # AuxK
    buffers: ClassVar[tuple[str, ...]] = ("threshold",)  # set by update_buffers, never by the optimizer

    def encode(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        return threshold_activation(self.pre_acts(x), self.threshold)

    def loss(self, x: Float[Array, "B d_in"], hp: Hyper, dead: Bool[Array, " d_sae"] | None):
        prefixes = self.prefixes or (self.d_sae,)
        metrics = {}
        x_hat, start = self.b_dec, 0
        if use_sparse(self.sparse, self.d_sae, self.k, self.d_in):  # the active entries only (jsae.sae._sparse)
            a = active_latents(self, x, dead, lambda pre: batch_entries(pre, self.k), self.k_aux)
            for m in prefixes:
                part = jnp.where((a.cols >= start) & (a.cols < m), a.f_vals, 0.0)
                x_hat = x_hat + sp.decode_entries(part, a.rows, a.cols, self.W_dec, a.shape[0])
                metrics[f"recon_{m}"] = squared_error(x, x_hat)
                start = m
            aux = sparse_auxk(self, a, x - x_hat, dead)
            f = sp.dense_from_entries(a.f_vals, a.rows, a.cols, a.shape)
        else:
            pre = self.pre_acts(x)
            f = batch_activation(pre, self.k)
            for m in prefixes:
                x_hat = x_hat + matmul(f[:, start:m], self.W_dec[start:m])
                metrics[f"recon_{m}"] = squared_error(x, x_hat)
                start = m
            aux = auxk_loss(pre, dead, self.W_dec, x - x_hat, self.k_aux)
        recon = sum(metrics.values()) / len(prefixes)
        total = recon + hp["aux_coef"] * aux
        metrics = {"loss": total, "recon": recon, "aux": aux, **metrics, **reconstruction_metrics(x, x_hat, f)}
        return total, (metrics, f)

    def update_buffers(self, f: Float[Array, "B d_sae"]) -> MatryoshkaSAE:
        return eqx.tree_at(lambda s: s.threshold, self, updated_threshold(self.threshold, f, self.threshold_decay))

    def constrain(self) -> MatryoshkaSAE:
        return unit_rows_if(self, True)


def check_prefixes(prefixes, d_sae: int) -> tuple[int, ...]:
    prefixes = tuple(prefixes)
    ok = (
        len(prefixes) > 0
        and all(isinstance(m, numbers.Integral) and not isinstance(m, bool) for m in prefixes)
        and all(a < b for a, b in zip((0,) + prefixes, prefixes))
        and prefixes[-1] == d_sae
    )
    if not ok:
        raise ValueError(
            f"prefixes={prefixes!r} must be strictly increasing positive ints ending at d_sae={d_sae}, "
            f"e.g. (d_sae // 8, d_sae // 2, d_sae)"
        )
    return tuple(int(m) for m in prefixes)


def init(
    key: PRNGKeyArray,
    d_in: int,
    d_sae: int,
    *,
    k: int,
    prefixes: tuple[int, ...],
    k_aux: int | None = None,
    threshold_decay: float = 0.99,
    data: Float[Array, "n d_in"] | None = None,
    b_dec_init: BDecInit | None = None,
    apply_b_dec_to_input: bool = True,
    sparse: bool | None = None,
) -> MatryoshkaSAE:
    """A Matryoshka BatchTopK SAE; arguments as ``batchtopk.init`` plus the nested widths ``prefixes``."""
    prefixes = check_prefixes(prefixes, d_sae)
    fields = init_fields(key, d_in, d_sae, k, k_aux, threshold_decay, data, b_dec_init, apply_b_dec_to_input, sparse)
    return MatryoshkaSAE(**fields, prefixes=prefixes)


ARCHITECTURE = Architecture(
    name="matryoshka",
    cls=MatryoshkaSAE,
    init=init,
    uses_k=True,
    hyperparams={"aux_coef": 1.0 / 32},
    to_saelens=to_saelens,
)
