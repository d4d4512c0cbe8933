"""Variants of the per-head SAE-code method, a whole family trained as one stack.

A :class:`CodeVariant` names one choice of every lever: the hook point (``z`` or ``result``), the
positions encoded (the per-prompt ``mean``, the ``final`` one, the task's ``key`` positions or ``all``),
the dictionary (``d_sae``) and its sparsity (``l1``), the number of seeds and how their scores combine
(``mean`` or ``vote``), the code read from each row's latents (``argmax``, ``topk`` or the ``active``
pattern above a threshold) and how a code change counts (``none``: the Jaccard distance of the two
latent sets, which for argmax codes is "did the code change"; ``decoder``: the summed norm, in the
residual stream, of the decoder rows of the latents that changed).

Variants that share the stack fields (:meth:`CodeVariant.stack_key`: point, positions, ``d_sae``,
epochs, lr) share one stack: :func:`family_scores` trains ``S`` seeds x ``P`` sparsities x ``H`` heads
(:func:`~jsae.analysis.circuits.fit_stack`) once and reads every variant's scores from it.

Rows: :class:`PairedRows` holds, per head, the rows to encode and which rows pair a clean prompt (at a
position) with its corruption (at the same position); :func:`paired_rows` builds them from per-position
activations and :func:`key_positions` says which positions are a task's key ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from jsae.analysis.circuits._codes import _fit_stack, _program, standardise_with_scale

POINTS = ("result", "z")
POSITIONS = ("mean", "final", "key", "all")
CODES = ("argmax", "topk", "active")
WEIGHTS = ("none", "decoder")
COMBINE = ("mean", "vote")


@dataclass(frozen=True)
class CodeVariant:
    """One per-head SAE-code method (defaults: ``sae_per_head_paired``'s SAEs, scored on every pair).

    point: ``"result"`` or ``"z"``; positions: ``"mean"``, ``"final"``, ``"key"`` or ``"all"``.
    d_sae, l1, epochs, lr: each head's SAE (``l1`` as :attr:`SAECodeConfig.per_head_l1`).
    seeds: SAEs per head from independent initialisations; combine: ``"mean"`` of their scores or
      ``"vote"`` (the fraction of seeds that put the head in their top ``vote_fraction`` of heads).
    code: ``"argmax"`` (the paper's), ``"topk"`` (the ``top_k`` largest latents) or ``"active"`` (the
      latents above ``threshold``); weight: ``"none"`` or ``"decoder"`` (module docstring).
    """

    point: str = "result"
    positions: str = "mean"
    d_sae: int = 16
    l1: float = 0.01
    epochs: int = 100
    lr: float = 5e-3
    seeds: int = 1
    combine: str = "mean"
    vote_fraction: float = 0.1
    code: str = "argmax"
    top_k: int = 2
    threshold: float = 0.0
    weight: str = "none"

    def __post_init__(self):
        for name, value, allowed in (
            ("point", self.point, POINTS),
            ("positions", self.positions, POSITIONS),
            ("code", self.code, CODES),
            ("weight", self.weight, WEIGHTS),
            ("combine", self.combine, COMBINE),
        ):
            if value not in allowed:
                raise ValueError(f"CodeVariant.{name} must be one of {allowed}, got {value!r}")
        if self.seeds < 1 or self.d_sae < 1 or self.epochs < 1:
            raise ValueError(f"seeds, d_sae and epochs must be >= 1, got {self.seeds}, {self.d_sae}, {self.epochs}")
        if not 1 <= self.top_k <= self.d_sae:
            raise ValueError(f"top_k must be in 1..d_sae ({self.d_sae}), got {self.top_k}")
        if self.l1 < 0 or not 0 < self.vote_fraction <= 1:
            raise ValueError(f"need l1 >= 0 and 0 < vote_fraction <= 1, got {self.l1} and {self.vote_fraction}")

    def stack_key(self) -> tuple:
        """The fields that decide the stack: variants equal here train as one (:func:`family_scores`)."""
        return (self.point, self.positions, self.d_sae, self.epochs, self.lr)

    @property
    def name(self) -> str:
        """Every field that differs from the default, ``field=value`` joined by commas (``"default"``)."""
        base = CodeVariant()
        diff = [f"{k}={getattr(self, k)}" for k in self.__dataclass_fields__ if getattr(self, k) != getattr(base, k)]
        return ",".join(diff) or "default"


@dataclass(frozen=True)
class PairedRows:
    """Rows of every head to encode and how they pair.

    acts: ``[H, m, d]``; clean / corrupted: ``[p]`` row indices, ``(clean[i], corrupted[i])`` one prompt
    and its corruption at one position. w_o: ``[H, d, D]`` each head's output matrix for ``z`` rows (the
    residual-stream image of a direction), None for ``result`` rows (already in the residual stream).
    """

    acts: np.ndarray
    clean: np.ndarray
    corrupted: np.ndarray
    w_o: np.ndarray | None = None


def key_positions(clean: Sequence[int], corrupted: Sequence[int]) -> np.ndarray:
    """A prompt's key positions from its tokens and its corruption's (same length): every position where
    the two differ, every later position whose clean token also stands at a differing position (the
    repeated subject S2 in IOI: the differing positions are IO and S1), and the final position."""
    a, b = np.asarray(clean), np.asarray(corrupted)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"clean {a.shape} and corrupted {b.shape} must be token lists of one nonzero length")
    diff = np.flatnonzero(a != b)
    first = diff[0] if diff.size else a.size
    repeat = [t for t in range(first + 1, a.size) if a[t] != b[t] or np.isin(a[t], a[diff])]
    return np.unique(np.concatenate([diff, repeat, [a.size - 1]])).astype(int)


def paired_rows(
    acts: Float[np.ndarray, "H N d"],
    lengths: Sequence[int],
    n_pairs: int,
    positions: str,
    tokens: Sequence[Sequence[int]] | None = None,
    w_o: np.ndarray | None = None,
) -> PairedRows:
    """Rows for ``positions`` from per-position activations ``[H, N, d]`` (sequence-major, ``lengths[j]``
    real tokens for sequence ``j``; sequences ``0..n_pairs-1`` are the clean prompts and ``n_pairs + i``
    the corruption of ``i``, of the same length). ``tokens`` (the sequences' ids) is needed for
    ``"key"`` (:func:`key_positions`)."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    n_tok = np.asarray(lengths, int)
    if n_tok.size != 2 * n_pairs or int(n_tok.sum()) != acts.shape[1]:
        raise ValueError(
            f"{n_tok.size} lengths summing to {int(n_tok.sum())} do not describe {2 * n_pairs} sequences "
            f"(clean then corrupted) of activations with {acts.shape[1]} positions"
        )
    if not np.array_equal(n_tok[:n_pairs], n_tok[n_pairs:]):
        raise ValueError("each clean prompt and its corruption must have the same number of tokens")
    starts = np.concatenate([[0], np.cumsum(n_tok)[:-1]])
    if positions == "mean":
        rows = np.stack([acts[:, s : s + n].mean(axis=1) for s, n in zip(starts, n_tok)], axis=1)
        idx = np.arange(n_pairs)
        return PairedRows(rows, idx, n_pairs + idx, w_o)
    if positions == "key" and (tokens is None or len(tokens) != 2 * n_pairs):
        raise ValueError("positions='key' needs tokens: the ids of every clean then corrupted sequence")
    picks = []
    for i in range(n_pairs):
        n = int(n_tok[i])
        if positions == "final":
            p = np.array([n - 1])
        elif positions == "all":
            p = np.arange(n)
        else:
            p = key_positions(tokens[i], tokens[n_pairs + i])  # pyright: ignore[reportOptionalSubscript]
        picks.append(p)
    clean = np.concatenate([starts[i] + p for i, p in enumerate(picks)])
    corrupted = np.concatenate([starts[n_pairs + i] + p for i, p in enumerate(picks)])
    keep = np.concatenate([clean, corrupted])
    m = clean.size
    return PairedRows(acts[:, keep], np.arange(m), m + np.arange(m), w_o)


def _members(f: jax.Array, v: CodeVariant) -> jax.Array:
    """``[..., m, d_sae]`` latents -> bool membership of each row's code."""
    if v.code == "argmax":
        return jax.nn.one_hot(jnp.argmax(f, axis=-1), f.shape[-1], dtype=bool)
    if v.code == "topk":
        _, idx = jax.lax.top_k(f, v.top_k)
        return jnp.any(jax.nn.one_hot(idx, f.shape[-1], dtype=bool), axis=-2)
    return f > v.threshold


def code_change_scores(
    latents: Float[np.ndarray, "S H m k"],
    clean: np.ndarray,
    corrupted: np.ndarray,
    variant: CodeVariant,
    decoder_norms: Float[np.ndarray, "S H k"] | None = None,
) -> Float[np.ndarray, "S H"]:
    """Per seed and head, the mean over pairs of how much the code changes between ``clean[i]`` and
    ``corrupted[i]``: with ``weight="none"`` ``|A ^ B| / |A | B|`` for the two rows' latent sets (0 when
    both are empty); with ``"decoder"`` the sum of ``decoder_norms`` over ``A ^ B``."""
    if variant.weight == "decoder" and decoder_norms is None:
        raise ValueError("weight='decoder' needs decoder_norms [S, H, d_sae]")
    norms = None if decoder_norms is None else jnp.asarray(decoder_norms)
    per_pair = _pair_changes(jnp.asarray(latents), np.asarray(clean), np.asarray(corrupted), variant, norms)
    return _mean_over_pairs(per_pair)


def _mean_over_pairs(per_pair: Float[jax.Array, "S H p"]) -> Float[np.ndarray, "S H"]:
    """The mean over pairs, as its own program (inside a larger one XLA may sum in another order)."""
    return np.asarray(per_pair.mean(-1), np.float64)


def _pair_changes(latents, clean, corrupted, variant: CodeVariant, norms) -> Float[jax.Array, "S H p"]:
    """How much each pair's code changes (:func:`code_change_scores` before the mean over pairs), as jax
    operations to run inside a program."""
    member = _members(latents, variant)
    a, b = member[:, :, clean], member[:, :, corrupted]  # [S, H, p, k]
    changed = a ^ b
    if variant.weight == "decoder":
        per_pair = jnp.einsum("shpk,shk->shp", changed.astype(jnp.float32), norms)
    else:
        union = (a | b).sum(-1)
        per_pair = changed.sum(-1) / jnp.maximum(union, 1)
    return per_pair


def combine_seeds(scores: Float[np.ndarray, "S H"], combine: str, vote_fraction: float = 0.1) -> np.ndarray:
    """``[H]`` from per-seed scores: their ``"mean"``, or the fraction of seeds whose top
    ``ceil(vote_fraction * H)`` heads (ties by lower index) hold the head (``"vote"``)."""
    scores = np.asarray(scores, np.float64)
    if combine == "mean":
        return scores.mean(axis=0)
    if combine != "vote":
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    k = int(np.ceil(vote_fraction * scores.shape[1]))
    votes = np.zeros_like(scores)
    for s, row in enumerate(scores):
        votes[s, np.argsort(-row, kind="stable")[:k]] = 1.0
    return votes.mean(axis=0)


def decoder_norms(
    w_dec: Float[np.ndarray, "H k r"], basis: np.ndarray | None, scale: np.ndarray, w_o: np.ndarray | None
) -> Float[np.ndarray, "H k"]:
    """Residual-stream norm of each latent's decoder row: from the SAE's input coordinates back to the
    head's own space (the row basis ``[H, d, r]``, then ``/ scale[h]``, :func:`standardise_with_scale`),
    then through ``w_o [H, d, D]`` for ``z`` heads. A head that never varies (scale 0) gets 0."""
    q = None if basis is None else jnp.asarray(basis)
    out = None if w_o is None else jnp.asarray(w_o)
    return np.asarray(_decoder_norms(jnp.asarray(w_dec), q, jnp.asarray(scale), out))


def _decoder_norms(w, basis, scale, w_o) -> jax.Array:
    """:func:`decoder_norms` as jax operations, to run inside a program."""
    if basis is not None:
        w = jnp.einsum("hkr,hdr->hkd", w, basis)
    inv = jnp.where(scale > 0, 1.0 / jnp.maximum(scale, 1e-30), 0.0)
    w = w * inv[:, None, None]
    if w_o is not None:
        w = jnp.einsum("hkd,hdD->hkD", w, w_o)
    return jnp.linalg.norm(w, axis=-1)


def family_scores(key, rows: PairedRows, variants: Sequence[CodeVariant]) -> tuple[np.ndarray, dict]:
    """Head scores ``[len(variants), H]`` of variants that share one stack (equal :meth:`stack_key`).

    One program trains ``max(seeds)`` seeds x the distinct ``l1`` values x ``H`` heads on every row of
    ``rows`` (standardised per head; in the rows' basis when they number at most half the head width)
    and reads every variant's per-seed scores from its seeds' and sparsity's latents; the seeds'
    scores are then combined on the host. Seed ``s`` is keyed ``fold_in(key, s)`` for every variant, so
    a 1-seed variant is the first seed of a many-seed one. Also returns the stack's per-SAE metrics
    (``l0``, ``explained_variance``) as lists over (seed, l1)."""
    if not variants:
        raise ValueError("family_scores needs at least one variant")
    stack = {v.stack_key() for v in variants}
    if len(stack) != 1:
        raise ValueError(f"variants must share point, positions, d_sae, epochs and lr to share a stack; got {stack}")
    v0 = variants[0]
    acts = np.asarray(rows.acts, np.float32)
    H, m, d = acts.shape
    if v0.point == "z" and rows.w_o is None and any(v.weight == "decoder" for v in variants):
        raise ValueError("weight='decoder' on z rows needs rows.w_o, each head's W_O [H, d_head, d_model]")
    standard, scale = standardise_with_scale(acts, np.arange(m))
    S = max(v.seeds for v in variants)
    l1s = tuple(sorted({v.l1 for v in variants}))
    basis = 2 * m <= d
    w_o = None if rows.w_o is None or not any(v.weight == "decoder" for v in variants) else rows.w_o
    program = _program(_family, ("seeds", "sparsities", "variants", "basis"))
    per_pair, metrics = program(
        key,
        standard,
        scale,
        np.asarray(rows.clean, np.int32),
        np.asarray(rows.corrupted, np.int32),
        None if w_o is None else np.asarray(w_o, np.float32),
        seeds=S,
        sparsities=tuple(c * d for c in l1s),
        variants=tuple((v, l1s.index(v.l1)) for v in variants),
        basis=basis,
    )
    out = [combine_seeds(_mean_over_pairs(p), v.combine, v.vote_fraction) for v, p in zip(variants, per_pair)]
    info = {
        k: np.asarray(metrics[k]).reshape(S, len(l1s), H).mean(-1).tolist()
        for k in ("l0", "explained_variance")
        if k in metrics
    }
    return np.stack(out), {"l1": list(l1s), "seeds": S, "rows": m, "basis": basis, **info}


def _family(key, standard, scale, clean, corrupted, w_o, *, seeds: int, sparsities, variants, basis: bool):
    """:func:`family_scores`' program: the stack of ``seeds`` x ``len(sparsities)`` x ``H`` SAEs trained on
    every row, and for each ``(variant, sparsity index)`` of ``variants`` how much each pair's code
    changes, ``[seeds_v, H, pairs]``, with the stack's per-SAE metrics."""
    v0 = variants[0][0]
    H, m, _ = standard.shape
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(seeds))
    sae, x, q, metrics = _fit_stack(
        keys, standard, jnp.arange(m), sparsities, v0.lr, d_sae=v0.d_sae, epochs=v0.epochs, basis=basis
    )
    S, P = seeds, len(sparsities)
    latents = jax.vmap(lambda s, v: s.encode(v))(sae, jnp.tile(x, (S * P, 1, 1))).reshape(S, P, H, m, v0.d_sae)
    norms = None
    if any(v.weight == "decoder" for v, _ in variants):
        w_dec = sae.W_dec.reshape(S, P, H, v0.d_sae, -1)
        norms = jax.vmap(jax.vmap(lambda w: _decoder_norms(w, q, scale, w_o)))(w_dec)  # [S, P, H, k]
    per_pair = [
        _pair_changes(latents[: v.seeds, p], clean, corrupted, v, None if norms is None else norms[: v.seeds, p])
        for v, p in variants
    ]
    return per_pair, metrics


def variant_scores(key, rows: dict[tuple[str, str], PairedRows], variants: Sequence[CodeVariant]) -> np.ndarray:
    """Scores ``[len(variants), H]`` of any variants: one :func:`family_scores` stack per distinct
    :meth:`CodeVariant.stack_key`, each on ``rows[(point, positions)]``."""
    out: dict[int, np.ndarray] = {}
    families: dict[tuple, list[int]] = {}
    for i, v in enumerate(variants):
        families.setdefault(v.stack_key(), []).append(i)
    for idx in families.values():
        v0 = variants[idx[0]]
        if (v0.point, v0.positions) not in rows:
            raise ValueError(f"no rows for point {v0.point!r} at positions {v0.positions!r}")
        scores, _ = family_scores(key, rows[(v0.point, v0.positions)], [variants[i] for i in idx])
        for j, i in enumerate(idx):
            out[i] = scores[j]
    return np.stack([out[i] for i in range(len(variants))])
