"""Discrete SAE codes (O'Neill & Bui 2024): the SAEs that make them (shared, per head, ensemble) and the head
scores built from them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float, Int

from jsae.analysis import _codes as codes_mod
from jsae.analysis.circuits._scores import HeadScores
from jsae.sae import SAE
from jsae.sae.registry import init_stack
from jsae.train import TrainConfig, fit, group_size, train

# ---------------------------------------------------------------------------------------------------
# Discrete SAE codes


@dataclass(frozen=True)
class SAECodeConfig:
    """SAE settings for discovery (defaults: O'Neill & Bui's, except the per-head SAEs, a jsae addition).

    d_sae: latents (200). l1: the paper's L1 coefficient lambda (0.02; 0.05 for docstring), whose loss
      is ``mean_{b,i} (x - x_hat)^2 + lambda * mean_b sum_j |f_j|``. jsae's ReLU loss is
      ``mean_b sum_i (x - x_hat)^2 + c * mean_b sum_j f_j ||W_dec_j||``, i.e. ``d_in`` times theirs
      when ``c = lambda * d_in`` and decoder rows have unit norm (``unit_norm_decoder=True`` here), so
      ``sparsity_coef = l1 * d_in``.
    epochs: full-batch Adam steps (500); lr (1e-3). n_train: training prompts, half positive and half
      negative (10). ensemble_l1 / ensemble_seeds: the ensemble's grid (member 0 is the paper's SAE).
    node_score: "raw", "softmax" or "normalised" (see :func:`jsae.analysis.node_scores`).
    per_head_d_sae: latents of each per-head SAE (10 training rows per head do not need 200 latents,
      and ``H x d x 200`` parameters make Adam memory-bound).
    per_head_l1: lambda of the per-head SAEs. Each head's activations are first standardised
      (:func:`standardise_heads`: minus the mean of its training rows, scaled to mean norm sqrt(d)), so
      one lambda suits heads whose output norms differ by orders of magnitude and the SAE spends its
      latents on how prompts differ, not on the head's constant offset (without centring, a
      position-averaged head output is mostly that offset, which a zero-initialised ``b_dec`` does not
      reach in a few hundred Adam steps, so every latent dies).
    per_head_epochs / per_head_lr: the per-head SAEs' full-batch Adam steps and rate (chosen on SmolLM2
      IOI activations; docs/BENCHMARKS.md has the comparison with the paper's 500 at 1e-3).
    per_head_basis: train the per-head SAEs in each head's row coordinates (:func:`row_basis`) when the
      rows (clean and corrupted prompts) number at most half the head's width (jsae addition: 20 rows
      of a 576-wide head make the SAEs 29x narrower with the same geometry of the rows; off, or more
      rows: train at full width).
    normalise_heads: scale each head's activations to unit mean norm before the shared SAE (jsae
      addition; off = the paper).
    per_head_seeds / per_head_code / per_head_top_k / per_head_weight: the code of ``sae_stack_paired``
      (jsae addition, the default method): ``per_head_seeds`` per-head SAEs per head from independent
      initialisations, trained as one stack, their scores averaged; each row's code is its ``"argmax"``
      latent, its ``"topk"`` (``per_head_top_k``) latents or its ``"active"`` ones; a code change counts
      ``"none"`` (Jaccard distance of the two latent sets) or ``"decoder"`` (their decoder rows' norm in
      the residual stream). :class:`~jsae.analysis.circuits.CodeVariant` has the details; the defaults
      are the variant with the best mean AUC over IOI, greater-than and docstring at 10 prompts
      (experiments/circuits_variants.py, docs/BENCHMARKS.md).
    """

    d_sae: int = 200
    per_head_d_sae: int = 16
    per_head_l1: float = 0.01
    per_head_epochs: int = 100
    per_head_lr: float = 5e-3
    per_head_basis: bool = True
    per_head_seeds: int = 5
    per_head_code: str = "topk"
    per_head_top_k: int = 2
    per_head_weight: str = "none"
    normalise_heads: bool = False
    l1: float = 0.02
    epochs: int = 500
    lr: float = 1e-3
    n_train: int = 10
    ensemble_l1: tuple[float, ...] = (0.02, 0.05)
    ensemble_seeds: int = 2
    node_score: str = "softmax"


def _training_rows(key, positive: np.ndarray, n_train: int) -> tuple[np.ndarray, jax.Array]:
    """Indices of ``n_train`` prompts (half positives, half negatives, shuffled) and the key the SAEs
    train with: ``key`` split in two, the first half drawing the rows."""
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    n_pos = min(len(pos), n_train // 2)
    n_neg = min(len(neg), n_train - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"need positive and negative prompts to train on; got {len(pos)} positives "
            f"(the model is right on none of the clean prompts?) and {len(neg)} negatives"
        )
    rows, k_sae = _draw_rows(key, pos.astype(np.int32), neg.astype(np.int32), n_pos, n_neg)
    return np.asarray(rows), k_sae


@functools.partial(jax.jit, static_argnums=(3, 4))
def _draw_rows(key, pos: Int[Array, " P"], neg: Int[Array, " Q"], n_pos: int, n_neg: int):
    """``(rows, k_sae)``: ``key`` split into ``(k_rows, k_sae)``, then ``n_pos`` of ``pos`` and ``n_neg`` of
    ``neg`` drawn without replacement from ``k_rows`` and shuffled. One program: eagerly, the splits,
    draws and shuffle would be a program each, each traced, compiled and loaded on a process's first
    call."""
    k_rows, k_sae = jax.random.split(key)
    k1, k2, k3 = jax.random.split(k_rows, 3)
    rows = jnp.concatenate(
        [jax.random.choice(k1, pos, (n_pos,), replace=False), jax.random.choice(k2, neg, (n_neg,), replace=False)]
    )
    return rows[jax.random.permutation(k3, n_pos + n_neg)], k_sae


def standardise_heads(acts: Float[np.ndarray, "H n d"], rows: np.ndarray) -> Float[np.ndarray, "H n d"]:
    """Per head ``h``: ``(acts[h] - mu_h) * s_h`` with ``mu_h`` the mean of ``acts[h, rows]`` and ``s_h``
    such that the centred training rows have mean norm ``sqrt(d)`` (a head that never varies stays 0)."""
    return standardise_with_scale(acts, rows)[0]


def standardise_with_scale(
    acts: Float[np.ndarray, "H n d"], rows: np.ndarray
) -> tuple[Float[np.ndarray, "H n d"], Float[np.ndarray, " H"]]:
    """:func:`standardise_heads` and the scale ``s_h`` of each head (0 for a head that never varies): a
    direction ``v`` of the standardised space is ``v / s_h`` in the head's own."""
    acts = np.asarray(acts, np.float32)
    mu = acts[:, rows].mean(axis=1, keepdims=True)
    centred = acts - mu
    spread = np.linalg.norm(centred[:, rows], axis=-1).mean(axis=1)
    scale = np.where(spread > 0, np.sqrt(acts.shape[-1]) / np.maximum(spread, 1e-30), 0.0)
    return (centred * scale[:, None, None]).astype(np.float32), scale.astype(np.float32)


def _code_config(rows: int, sparsity, epochs: int, lr: float) -> TrainConfig:
    """The full-batch run every code SAE trains with: ``epochs`` Adam steps on ``rows`` rows, no dead
    latents."""
    return TrainConfig(
        steps=epochs,
        batch_size=rows,
        lr=lr,
        sparsity_coef=sparsity,
        grad_clip=None,
        chunk_steps=epochs,
        dead_after_tokens=rows * epochs + 1,
    )


def _code_saes(key, n_saes: int, d_in: int, d_sae: int, rows: int, sparsity, epochs: int, lr: float):
    """The untrained stack of ``n_saes`` unit-norm ReLU SAEs and their run (:func:`_code_config`)."""
    sae = init_stack("relu", key, n_saes, d_in, d_sae, unit_norm_decoder=True)
    return sae, _code_config(rows, sparsity, epochs, lr)


def _train_saes(key, data, n_saes: int, sparsity, d_sae: int, epochs: int, lr: float):
    """``n_saes`` unit-norm ReLU SAEs trained full-batch on ``data`` (``[n, d]`` shared or ``[N, n, d]``)."""
    sae, tc = _code_saes(key, n_saes, data.shape[-1], d_sae, data.shape[-2], sparsity, epochs, lr)
    return train(sae, data, tc, progress=False)


@dataclass(frozen=True)
class Codes:
    """Discrete codes of every (prompt, head): ``codes [M, n, H]`` from ``M`` SAEs (M = 1 except for the
    ensemble) with ``n_codes`` latents each, and the SAEs' training metrics (``info``)."""

    codes: jax.Array | np.ndarray
    n_codes: int
    info: dict[str, Any]


def _train_info(metrics: Mapping[str, Any], rows) -> dict[str, Any]:
    """The SAEs' mean ``l0``, ``explained_variance`` and ``dead_fraction`` (from per-SAE ``metrics``)."""
    keep = ("l0", "explained_variance", "dead_fraction")
    return {"n_train": len(rows), **{k: float(np.mean(v)) for k, v in metrics.items() if k in keep}}


def row_basis(x: Float[Array, "H n d"]) -> Float[Array, "H d n"]:
    """Per head, a basis (columns) of a space holding all ``n <= d`` of its rows: ``x[h] @ Q[h]`` are the
    rows' coordinates, with every distance, norm and inner product of the rows unchanged, and
    ``x[h] @ Q[h] @ Q[h].T == x[h]``.

    Gram-Schmidt on the rows, each orthogonalised twice against the columns so far (orthonormal to
    rounding). A row already in the span of the ones before it gets a zero column, so the nonzero
    columns are orthonormal and the zero ones add nothing. Matmuls only: no LAPACK call to load.
    """
    a = jnp.swapaxes(x, 1, 2).astype(jnp.float32)  # [H, d, n]

    def add_row(j, q):
        row = jax.lax.dynamic_index_in_dim(a, j, axis=2, keepdims=False)  # [H, d]
        v = row
        for _ in range(2):
            v = v - jnp.einsum("hdk,hk->hd", q, jnp.einsum("hdk,hd->hk", q, v))
        norm = jnp.linalg.norm(v, axis=-1, keepdims=True)
        new = norm > 1e-5 * jnp.linalg.norm(row, axis=-1, keepdims=True)
        column = jnp.where(new, v / jnp.where(new, norm, 1.0), 0.0)
        return jax.lax.dynamic_update_index_in_dim(q, column, j, axis=2)

    return jax.lax.fori_loop(0, a.shape[2], add_row, jnp.zeros_like(a))


def fit_per_head(
    key,
    standard: Float[ArrayLike, "H n d"],
    rows: Int[ArrayLike, " m"],
    sparsity: float,
    lr: float,
    *,
    d_sae,
    epochs,
    basis,
) -> tuple[SAE, Float[Array, "H n r"], Int[Array, "n H"], dict[str, Float[Array, " H"]]]:
    """One program: a unit-norm ReLU SAE per head trained full-batch on its ``rows`` (``epochs`` Adam
    steps of the trainer's own step, :func:`jsae.train.fit`), and every row's code (argmax
    latent). Returns the stack of ``H`` SAEs, the inputs they read (``[H, n, r]``), the codes ``[n, H]``
    and per-SAE metrics (means over the steps, as ``train`` reports a one-chunk run).

    ``basis``: the SAEs read the rows' coordinates in :func:`row_basis` (``r = n``) instead of the rows
    (``r = d``). Every distance, norm and inner product of the rows is the same there, so the
    reconstruction errors, sparsity and codes are those of an SAE on the rows themselves whose
    directions lie in the rows' span, at ``d / n`` times less width.

    On a CPU the program compiles at XLA's backend optimisation level 1 (of 3): about half the compile
    time of level 3 for this small training loop, and no slower to run (figures in docs/BENCHMARKS.md).
    """
    program = _program(_fit_per_head, ("sparsity", "lr", "d_sae", "epochs", "basis"))
    return program(key, standard, rows, sparsity, lr, d_sae=d_sae, epochs=epochs, basis=basis)


def _program(fn: Callable, static: tuple[str, ...]) -> Callable:
    """``fn`` jitted with the ``static`` arguments, on a CPU at XLA's backend optimisation level 1 (see
    :func:`fit_per_head`); one per function and backend, kept for the process."""
    return _jitted(fn, static, jax.default_backend())


@functools.cache
def _jitted(fn: Callable, static: tuple[str, ...], backend: str) -> Callable:
    options = {"xla_backend_optimization_level": 1} if backend == "cpu" else None
    return jax.jit(fn, static_argnames=static, compiler_options=options)


def _fit_per_head(key, standard, rows, sparsity: float, lr: float, *, d_sae: int, epochs: int, basis: bool):
    sae, x, _, metrics = _fit_stack(key[None], standard, rows, (sparsity,), lr, d_sae=d_sae, epochs=epochs, basis=basis)
    return sae, x, _argmax_codes(sae, x), metrics


def _argmax_codes(sae: SAE, x: Float[Array, "H n r"]) -> Int[Array, "n H"]:
    """Codes ``[n, H]``: head ``h``'s rows encoded by SAE ``h`` of the stack, the argmax latent of each."""
    return jax.vmap(lambda s, v: jnp.argmax(s.encode(v), axis=-1))(sae, x).T.astype(jnp.int32)


def fit_stack(
    keys, standard: Float[Array, "H n d"], rows: Int[Array, " m"], sparsities: tuple[float, ...], lr: float, **kw
) -> tuple[SAE, Float[Array, "H n r"], Float[Array, "H d r"] | None, dict[str, Float[Array, " N"]]]:
    """:func:`fit_per_head` for a family: ``S = len(keys)`` seeds x ``P = len(sparsities)`` sparsity
    coefficients x ``H`` heads, ``N = S * P * H`` SAEs trained in one program (keyword arguments
    ``d_sae``, ``epochs``, ``basis`` as there). SAE ``(s * P + p) * H + h`` reads head ``h`` at
    ``sparsities[p]``, initialised as :func:`fit_per_head` with ``keys[s]`` initialises head ``h``, so each
    (seed, sparsity) slice is that single run. Returns the stack, the inputs ``[H, n, r]`` (the same for
    every member), the row bases ``[H, d, r]`` (None without ``basis``) and per-SAE metrics ``[N]``."""
    program = _program(_fit_stack, ("sparsities", "lr", "d_sae", "epochs", "basis"))
    return program(keys, standard, rows, tuple(float(s) for s in sparsities), lr, **kw)


def _fit_stack(keys, standard, rows, sparsities, lr: float, *, d_sae: int, epochs: int, basis: bool):
    q = row_basis(standard) if basis else None
    x = standard if q is None else jnp.einsum("hnd,hdr->hnr", standard, q)
    H, _, d_in = x.shape
    S, P = keys.shape[0], len(sparsities)
    N = S * P * H
    tc = _code_config(rows.shape[0], [c for _ in range(S) for c in sparsities for _ in range(H)], epochs, lr)
    # every seed's H SAEs in one batched draw: the values of one init_stack per key, one program part
    seeds = eqx.filter_vmap(lambda k: init_stack("relu", k, H, d_in, d_sae, unit_norm_decoder=True))(keys)
    sae = jax.tree.map(lambda a: jnp.broadcast_to(a[:, None], (S, P, *a.shape[1:])).reshape(N, *a.shape[2:]), seeds)
    group = group_size(jax.default_backend(), N, rows.shape[0], d_in, d_sae)
    data = jnp.tile(x[:, rows], (S * P, 1, 1))
    state, metrics = fit(sae, data, tc, group=group)  # the trainer's steps, in its order of the rows
    return state.sae, x, q, {k: v.mean(axis=0) for k, v in metrics.items()}


def _in_basis(shape: tuple[int, ...], cfg: SAECodeConfig) -> bool:
    """Whether per-head SAEs on ``[H, n, d]`` rows train in the rows' basis: ``cfg.per_head_basis`` and
    ``n <= d / 2``."""
    _, n, d = shape
    return cfg.per_head_basis and 2 * n <= d


def per_head_codes(key, acts: Float[np.ndarray, "H n d"], rows: np.ndarray, cfg: SAECodeConfig) -> Codes:
    """One SAE per head (all trained at once) on the standardised training ``rows``; codes ``[1, n, H]``.

    With ``cfg.per_head_basis`` and ``n <= d / 2`` rows the SAEs train in the rows' own coordinates
    (:func:`row_basis`, ``d / n`` times narrower) in one program (:func:`fit_per_head`); otherwise at
    full width by ``train`` (its stack split over the devices)."""
    d = acts.shape[2]
    standard = standardise_heads(acts, rows)
    sparsity, d_sae, epochs, lr = cfg.per_head_l1 * d, cfg.per_head_d_sae, cfg.per_head_epochs, cfg.per_head_lr
    if _in_basis(acts.shape, cfg):
        _, _, codes, metrics = fit_per_head(key, standard, rows, sparsity, lr, d_sae=d_sae, epochs=epochs, basis=True)
        return Codes(np.asarray(codes)[None], d_sae, _train_info(metrics, rows))  # on the host: no program to index
    result = _train_saes(key, standard[:, rows], acts.shape[0], sparsity, d_sae, epochs, lr)
    codes = codes_mod.discretise(result.sae, standard, per_head=True)
    return Codes(codes[None], d_sae, _train_info(result.metrics, rows))


def shared_codes(
    key, acts: Float[np.ndarray, "H n d"], rows: np.ndarray, cfg: SAECodeConfig, l1s: tuple[float, ...]
) -> Codes:
    """One SAE per entry of ``l1s``, each shared by every head and trained on all heads' training ``rows``
    (all trained at once); codes ``[len(l1s), n, H]``."""
    H, _, d = acts.shape
    shared = acts[:, rows].reshape(H * len(rows), d)
    result = _train_saes(key, shared, len(l1s), [lam * d for lam in l1s], cfg.d_sae, cfg.epochs, cfg.lr)
    codes = codes_mod.discretise_stack(result.sae, acts)
    return Codes(codes, cfg.d_sae, {**_train_info(result.metrics, rows), "l1": list(l1s)})


# How a method scores heads from its codes: (codes [M, n, H], positive [n], pair [n_pos] | None, cfg) -> [H]
CodeScore = Callable[[Codes, np.ndarray, "np.ndarray | None", SAECodeConfig], jax.Array]


def _node(c: Codes, positive, pair, cfg: SAECodeConfig) -> jax.Array:
    return codes_mod.node_scores(c.codes[0], positive, c.n_codes, cfg.node_score)  # pyright: ignore[reportArgumentType]  # node_score is checked there


def _paired(c: Codes, positive, pair, cfg: SAECodeConfig) -> jax.Array:
    return codes_mod.paired_code_changes(c.codes[0], np.flatnonzero(positive), pair)


def _edges(c: Codes, positive, pair, cfg: SAECodeConfig) -> jax.Array:
    return codes_mod.heads_from_edges(codes_mod.edge_scores(c.codes[0], jnp.asarray(positive), normalised=True))


def _ensemble(c: Codes, positive, pair, cfg: SAECodeConfig) -> jax.Array:
    raw = jax.vmap(lambda k: codes_mod.node_scores(k, positive, c.n_codes, "raw"))(c.codes)  # [M, H]
    return jnp.mean(raw / jnp.maximum(raw.max(axis=1, keepdims=True), 1.0), axis=0)


@dataclass(frozen=True)
class SAEMethod:
    """An SAE-code method: which SAEs make the codes (``"per_head"``, ``"shared"`` or ``"ensemble"``), how
    heads are scored from them, and whether it needs the clean/corrupted ``pair`` of each positive."""

    saes: str
    score: CodeScore
    paired: bool = False


SAE_METHODS: dict[str, SAEMethod] = {
    "sae_shared": SAEMethod("shared", _node),  # one SAE for every head (the paper)
    "sae_per_head": SAEMethod("per_head", _node),  # one SAE per head, all trained at once
    "sae_ensemble": SAEMethod("ensemble", _ensemble),  # shared SAEs over seeds x L1 values, mean of max-1 scores
    "sae_edges": SAEMethod("shared", _edges),  # mean normalised edge score over all partners
    "sae_shared_paired": SAEMethod("shared", _paired, paired=True),  # fraction of pairs whose code changes
    "sae_per_head_paired": SAEMethod("per_head", _paired, paired=True),
}
PAIRED_METHODS = tuple(m for m, s in SAE_METHODS.items() if s.paired)


def sae_code_scores(
    key,
    acts: np.ndarray,
    positive: np.ndarray,
    method: str,
    cfg: SAECodeConfig = SAECodeConfig(),
    pair: np.ndarray | None = None,
) -> HeadScores:
    """Head scores from discrete SAE codes.

    acts: ``[H, n, d]`` per-head activations of all prompts; positive: ``[n]`` bool.
    method: a key of :data:`SAE_METHODS`: ``"sae_shared"`` (one SAE for every head, the paper),
      ``"sae_per_head"`` (one SAE per head, all trained at once), ``"sae_ensemble"`` (shared SAEs over
      seeds x L1 values, mean of each member's scores normalised to max 1), ``"sae_edges"`` (shared SAE,
      heads ranked by their mean normalised edge score over all partners, see
      :func:`jsae.analysis._codes.heads_from_edges`); ``"sae_shared_paired"`` / ``"sae_per_head_paired"``
      (jsae additions: the same SAEs, heads scored by the fraction of clean/corrupted prompt pairs whose
      code changes, :func:`jsae.analysis._codes.paired_code_changes`; need ``pair``).
    pair: ``[n_pos]`` the corrupted row of each positive row (:attr:`TaskActivations.pair`).
    """
    if method not in SAE_METHODS:
        raise ValueError(f"unknown SAE method {method!r}; choose one of {', '.join(SAE_METHODS)}")
    spec = SAE_METHODS[method]
    if spec.paired and (pair is None or len(pair) != int(np.sum(positive))):
        raise ValueError(
            f"method {method!r} needs pair: the corrupted row of each of the {int(np.sum(positive))} "
            "positive rows (TaskActivations.pair from harvest_task)"
        )
    acts = np.asarray(acts)
    if cfg.normalise_heads:
        acts = acts / np.maximum(np.linalg.norm(acts, axis=-1).mean(axis=1), 1e-12)[:, None, None]
    rows, k_sae = _training_rows(key, positive, cfg.n_train)
    if spec.saes == "per_head":
        codes = per_head_codes(k_sae, acts, rows, cfg)
    elif spec.saes == "ensemble":
        codes = shared_codes(k_sae, acts, rows, cfg, tuple(cfg.ensemble_l1) * cfg.ensemble_seeds)
    else:
        codes = shared_codes(k_sae, acts, rows, cfg, (cfg.l1,))
    scores = spec.score(codes, positive, pair, cfg)
    return HeadScores(method, np.asarray(scores, np.float64), codes.info)
