"""Discrete SAE codes and the head scores built on them (O'Neill & Bui 2024, arXiv:2405.12522).

Each (prompt, head) activation is encoded by an SAE and reduced to one integer, the index of its
largest latent (its *code*). A head matters for a task when some of its codes occur on positive prompts
(the model gets the answer) and never on negative ones (it cannot).

Shapes: ``n`` prompts, ``H`` heads (all layers flattened, row ``layer * n_heads + head``), ``C`` codes
(the SAE's number of latents), ``d`` activation width.
"""

from __future__ import annotations

import functools
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Bool, Float, Int

NodeScore = Literal["raw", "softmax", "normalised"]


def discretise(sae, acts: Float[ArrayLike, "H n d"], *, per_head: bool, chunk: int = 16384) -> Int[Array, "n H"]:
    """Codes ``[n, H]``: the argmax latent of each (prompt, head) activation.

    sae: one SAE (``per_head=False``: shared by every head) or a stack of ``H`` SAEs (``per_head=True``:
      head ``h`` is encoded by SAE ``h``). An all-zero encoding gets code 0, as in the authors' argmax.
    """
    acts = jnp.asarray(acts)
    H, n, d = acts.shape
    if per_head:
        codes = eqx.filter_jit(eqx.filter_vmap(lambda s, x: jnp.argmax(s.encode(x), axis=-1)))(sae, acts)
        return codes.T.astype(jnp.int32)
    flat = acts.reshape(H * n, d)
    encode = eqx.filter_jit(lambda s, x: jnp.argmax(s.encode(x), axis=-1))
    codes = jnp.concatenate([encode(sae, flat[i : i + chunk]) for i in range(0, H * n, chunk)])
    return codes.reshape(H, n).T.astype(jnp.int32)


@eqx.filter_jit
def _argmax_latents(saes, x: Float[ArrayLike, "m d"]) -> Int[Array, "M m"]:
    return eqx.filter_vmap(lambda s: jnp.argmax(s.encode(x), axis=-1), in_axes=(eqx.if_array(0),))(saes)


def discretise_stack(saes, acts: Float[ArrayLike, "H n d"], *, chunk: int = 16384) -> Int[Array, "M n H"]:
    """Codes ``[M, n, H]`` of a stack of ``M`` SAEs, each shared by every head (vmapped over the stack):
    ``discretise(saes[i], acts, per_head=False)`` for every ``i`` in one program per chunk of rows."""
    acts = jnp.asarray(acts)
    H, n, d = acts.shape
    flat = acts.reshape(H * n, d)
    codes = jnp.concatenate([_argmax_latents(saes, flat[i : i + chunk]) for i in range(0, H * n, chunk)], axis=1)
    return jnp.swapaxes(codes.reshape(-1, H, n), 1, 2).astype(jnp.int32)


def code_counts(codes: Int[ArrayLike, "n H"], rows: Bool[ArrayLike, " n"], n_codes: int) -> Int[Array, "H C"]:
    """How often each head shows each code on the selected prompts ``rows``."""
    onehot = jax.nn.one_hot(codes, n_codes, dtype=jnp.int32)  # [n, H, C]
    return jnp.einsum("nhc,n->hc", onehot, jnp.asarray(rows).astype(jnp.int32))


def unique_positive_counts(
    codes: Int[ArrayLike, "n H"], positive: Bool[ArrayLike, " n"], n_codes: int
) -> Int[Array, " H"]:
    """Per head: the number of distinct codes that occur on >= 1 positive prompt and on no negative."""
    codes, positive = jnp.asarray(codes), jnp.asarray(positive, bool)
    pos = code_counts(codes, positive, n_codes)
    neg = code_counts(codes, ~positive, n_codes)
    return jnp.sum((pos > 0) & (neg == 0), axis=-1)


def distinct_counts(codes: Int[ArrayLike, "n H"], n_codes: int) -> Int[Array, " H"]:
    """Per head: the number of distinct codes it shows on any prompt."""
    codes = jnp.asarray(codes)
    return jnp.sum(code_counts(codes, jnp.ones(codes.shape[0], bool), n_codes) > 0, axis=-1)


def node_scores(
    codes: Int[ArrayLike, "n H"], positive: Bool[ArrayLike, " n"], n_codes: int, kind: NodeScore = "softmax"
) -> Float[Array, " H"]:
    """Head scores from unique-positive code counts.

    kind: ``"raw"`` the counts; ``"softmax"`` a softmax of the counts over heads (the paper's score; same
    ranking as raw); ``"normalised"`` counts divided by the head's number of distinct codes.
    """
    count = unique_positive_counts(codes, positive, n_codes).astype(jnp.float32)
    if kind == "raw":
        return count
    if kind == "softmax":
        return jax.nn.softmax(count)
    if kind == "normalised":
        return count / jnp.maximum(distinct_counts(codes, n_codes), 1).astype(jnp.float32)
    raise ValueError(f"node score kind must be 'raw', 'softmax' or 'normalised', got {kind!r}")


@functools.partial(jax.jit, static_argnames="normalised")
def edge_scores(
    codes: Int[ArrayLike, "n H"], positive: Bool[ArrayLike, " n"], normalised: bool = False
) -> Float[Array, "H H"]:
    """Per head pair ``(a, b)``: the number of distinct code pairs ``(codes[:, a], codes[:, b])`` that
    occur on >= 1 positive prompt and on no negative prompt (the diagonal equals the node counts).
    ``normalised``: divided by the number of distinct code pairs on positives (the fraction of the
    pair's positive codes that never occur on negatives).

    Computed without a loop over pairs: positive prompt ``p`` shows a negative-only-free pair for heads
    ``(a, b)`` iff no negative prompt ``q`` matches it on both heads, i.e. ``sum_q E_a[p,q] E_b[p,q] = 0``
    with ``E_h[p,q] = [codes[p,h] == codes[q,h]]``; it is counted once if no earlier positive prompt
    showed the same pair. Cost ``O(H^2 n^2)`` multiply-adds.
    """
    codes = jnp.asarray(codes)
    positive = jnp.asarray(positive, bool)
    n = codes.shape[0]
    same = (codes[:, None, :] == codes[None, :, :]).astype(jnp.float32)  # [n, n, H]: prompts p, q agree on h
    negative = (~positive).astype(jnp.float32)
    earlier_positive = jnp.tril(jnp.ones((n, n), jnp.float32), -1) * positive[None, :].astype(jnp.float32)
    # batched over p, contracting q: [H, n] @ [n, H] per prompt (never an [n, n, H, H] intermediate)
    matched_by_negative = jnp.einsum("pqa,pqb->pab", same * negative[None, :, None], same) > 0  # [n, H, H]
    seen_before = jnp.einsum("pqa,pqb->pab", same * earlier_positive[:, :, None], same) > 0
    first_seen = positive[:, None, None] & ~seen_before
    unique = jnp.sum(first_seen & ~matched_by_negative, axis=0).astype(jnp.float32)
    if normalised:
        return unique / jnp.maximum(jnp.sum(first_seen, axis=0), 1).astype(jnp.float32)
    return unique


def heads_from_edges(edges: Float[ArrayLike, "H H"]) -> Float[Array, " H"]:
    """A head ranking from edge scores: each head's mean score over its pairs with the other heads.

    (The best partner's score would not do: pairing any head with a circuit head inherits that head's
    unique codes, so every head would look like a circuit head.)"""
    edges = jnp.asarray(edges, jnp.float32)
    H = edges.shape[0]
    off_diagonal = jnp.where(jnp.eye(H, dtype=bool), 0.0, edges)
    return jnp.sum(off_diagonal, axis=1) / max(H - 1, 1)


def paired_code_changes(
    codes: Int[ArrayLike, "n H"], clean_rows: Int[ArrayLike, " m"], corrupted_rows: Int[ArrayLike, " m"]
) -> Float[Array, " H"]:
    """Per head: the fraction of (clean, corrupted) prompt pairs whose codes differ.

    ``clean_rows[i]`` and ``corrupted_rows[i]`` index the two prompts of pair ``i`` (a positive prompt and
    its own corruption, e.g. the same IOI sentence with the first-clause names replaced). Activation
    patching replaces a head's clean output by its corrupted one; a head whose discrete code never changes
    between the two has (to the SAE's resolution) nothing to patch, so this is the code-level analogue of
    the per-pair activation difference that patching acts on (jsae addition, not in O'Neill & Bui).
    """
    codes = jnp.asarray(codes)
    clean_rows, corrupted_rows = jnp.asarray(clean_rows), jnp.asarray(corrupted_rows)
    if clean_rows.shape != corrupted_rows.shape or clean_rows.ndim != 1 or clean_rows.size == 0:
        raise ValueError(
            f"clean_rows {tuple(clean_rows.shape)} and corrupted_rows {tuple(corrupted_rows.shape)} "
            "must be two non-empty index vectors of the same length (one entry per prompt pair)"
        )
    return _changed_fraction(codes, clean_rows, corrupted_rows)


@jax.jit
def _changed_fraction(codes: Int[Array, "n H"], clean_rows: Int[Array, " m"], corrupted_rows: Int[Array, " m"]):
    return jnp.mean((codes[clean_rows] != codes[corrupted_rows]).astype(jnp.float32), axis=0)
