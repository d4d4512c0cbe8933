"""Pure functions over arrays behind the feature page: running top-k, log-scale histograms, attention values,
source attributions and direct logit effects. No host loop, no model call: each works on one batch (or one
set of weights) and is vmapped over SAEs (``M``) and latents (``J``) by its caller.

Shape letters: ``M`` SAEs, ``J`` latents shown per SAE, ``k`` top contexts per latent, ``B`` rows of a batch,
``T`` positions, ``d`` an SAE's input width, ``D`` d_model, ``V`` vocabulary, ``L`` layers, ``H`` query heads,
``K`` key/value heads, ``dh`` head size, ``nb`` histogram bins.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from jsae.models import Transformer, value_vectors

# fixed histogram bins: 10 per decade from 1e-3 to 1e3 (an activation below the first edge falls in bin 0,
# one above the last in the last bin), the same for every latent so that one scatter-add counts them all
HIST_EDGES: np.ndarray = 10.0 ** np.linspace(-3.0, 3.0, 61)


def log_histogram(
    acts: Float[Array, "N J"], valid: Bool[Array, " N"], edges: Float[Array, " nb1"]
) -> Int[Array, "J nb"]:
    """Counts of the positive activations of ``J`` latents over ``N`` tokens in the log-spaced bins
    ``[edges[i], edges[i+1])`` (``nb = len(edges) - 1``; values outside the range go to the end bins);
    zeros and masked tokens are not counted."""
    nb = edges.shape[0] - 1
    J = acts.shape[1]
    fired = (acts > 0) & valid[:, None]
    b = jnp.clip(jnp.searchsorted(edges, acts, side="right") - 1, 0, nb - 1)
    idx = jnp.where(fired, jnp.arange(J)[None, :] * nb + b, J * nb)  # not fired: a dump bin past the end
    return jnp.bincount(idx.reshape(-1), length=J * nb + 1)[:-1].reshape(J, nb).astype(jnp.int32)


def merge_top_k(top: dict[str, Array], candidates: dict[str, Array], k: int) -> dict[str, Array]:
    """Keep the ``k`` largest of ``top["value"] [..., k]`` and ``candidates["value"] [..., c]`` (largest first),
    with every other field of the two dicts (``[..., k, ...]`` and ``[..., c, ...]``) carried along.

    A running top-k: merging each batch's candidates into the kept set bounds memory by ``k``, never by the
    number of tokens seen."""
    both = {name: jnp.concatenate([top[name], candidates[name]], axis=top["value"].ndim - 1) for name in top}
    _, order = jax.lax.top_k(both["value"], k)
    axis = top["value"].ndim - 1

    def take(a):
        idx = order.reshape(order.shape + (1,) * (a.ndim - order.ndim))
        return jnp.take_along_axis(a, idx, axis=axis)

    return {name: take(a) for name, a in both.items()}


def batch_top_k(
    acts: Float[Array, "B T J"], valid: Bool[Array, "B T"], k: int
) -> tuple[Float[Array, "J k"], Int[Array, "J k"], Int[Array, "J k"]]:
    """The ``k`` largest activations of each latent among the valid tokens of one batch:
    ``(values, row, position)`` (``-inf`` values where fewer than ``k`` tokens are valid)."""
    B, T, J = acts.shape
    masked = jnp.where(valid[..., None], acts, -jnp.inf).reshape(B * T, J).T
    values, flat = jax.lax.top_k(masked, k)
    return values, flat // T, flat % T


def rows_at(a: Float[Array, "B T J"], row: Int[Array, "J k"]) -> Float[Array, "J k T"]:
    """Latent ``j``'s values along whole rows: ``out[j, c] = a[row[j, c], :, j]``."""
    per_latent = jnp.moveaxis(a, 2, 0)  # [J, B, T]
    return jnp.take_along_axis(per_latent, row[..., None], axis=1)


def attention_values(
    model: Transformer, resid_pre: Float[Array, "B T D"], layer: Int[Array, ""], kv_head: Int[Array, ""] | None = None
) -> Float[Array, "B T dh"] | Float[Array, "B T K dh"]:
    """The value vectors ``v [B, T, dh]`` of key/value head ``kv_head`` at ``layer`` (all of them, ``[B, T, K, dh]``,
    when ``kv_head`` is None) from the residual stream entering the block: ``v = norm1(resid_pre) W_V (+ b_V)``
    (:func:`jsae.models.value_vectors`: the model's own pre-norm and projection)."""
    v = value_vectors(model, resid_pre, layer)  # [B, T, K, dh], as the model's own forward computes them
    return v if kv_head is None else v[:, :, kv_head]


def source_contributions(
    pattern_row: Float[Array, "... T"], values_along_encoder: Float[Array, "... T"]
) -> Float[Array, "... T"]:
    """Each source position's share of a per-head ``z`` SAE latent's pre-activation at one query position.

    Head ``h`` writes ``z[t] = sum_s pattern[h, t, s] v[s]`` (``v`` the values of ``h``'s key/value group), so
    for an SAE with ``pre(z) = (z - b_dec) . w + b_enc`` (``w = W_enc[:, latent]``; without
    ``apply_b_dec_to_input`` the ``b_dec`` term is absent)::

        pre(z[t]) = sum_s pattern[h, t, s] (v[s] . w)  +  (b_enc - b_dec . w)
                    \\______ contribution of s ______/     \\____ constant ____/

    exactly (no approximation: ``z`` is linear in ``v`` for fixed attention weights). This returns the
    contributions ``pattern_row[s] * values_along_encoder[s]`` with ``values_along_encoder[s] = v[s] . w``; they
    sum to the pre-activation minus the constant (:func:`pre_activation_constant`). Positions after ``t`` have
    zero attention and contribute 0.
    """
    return pattern_row * values_along_encoder


def pre_activation_constant(
    W_enc: Float[Array, "d J"], b_enc: Float[Array, " J"], b_dec: Float[Array, " d"], apply_b_dec_to_input: bool
) -> Float[Array, " J"]:
    """The part of the pre-activation ``(x - b_dec) W_enc + b_enc`` that does not depend on ``x``:
    ``b_enc - b_dec W_enc`` (``b_enc`` when the SAE does not subtract ``b_dec`` from its input)."""
    return b_enc - b_dec @ W_enc if apply_b_dec_to_input else b_enc


def directions_in_model_space(
    W_dec_rows: Float[Array, "J d"], W_O: Float[Array, "H dh D"], point: str, head: int | None
) -> Float[Array, "J D"]:
    """Decoder directions written into the residual stream: through head ``head``'s ``W_O [dh, D]`` for a
    per-head ``z`` SAE, through every head's ``W_O`` for an all-heads ``z`` SAE (``d = H * dh``), as they are
    for the ``d_model`` points (``result``, ``attn_out``, ``mlp_out`` and the residual stream)."""
    if point != "z":
        return W_dec_rows
    if head is not None:
        return W_dec_rows @ W_O[head]
    H, dh, _ = W_O.shape
    return jnp.einsum("jhe,hed->jd", W_dec_rows.reshape(-1, H, dh), W_O)


def logit_effects(
    directions: Float[Array, "J D"],
    ln_f_w: Float[Array, " D"],
    W_U: Float[Array, "D V"],
    n: int,
    *,
    center: bool = False,
) -> tuple[Float[Array, "J n"], Int[Array, "J n"], Float[Array, "J n"], Int[Array, "J n"]]:
    """Direct logit effect of residual-stream directions: ``(d * ln_f_w) W_U [J, V]``, and its ``n`` most
    promoted and ``n`` most suppressed tokens ``(up_values, up_ids, down_values, down_ids)``.

    The final norm is applied as the diagonal matrix of its weight (the scale it divides by depends on the
    whole residual stream, not on one direction, and is left out, as usual for direct logit attribution);
    ``center`` (for LayerNorm models such as GPT-2) also removes the direction's mean first, the linear part
    of LayerNorm. Soft-capped logits (Gemma 2) are read before the cap."""
    d = directions - directions.mean(-1, keepdims=True) if center else directions
    logits = (d * ln_f_w) @ W_U
    up, up_ids = jax.lax.top_k(logits, n)
    down, down_ids = jax.lax.top_k(-logits, n)
    return up, up_ids, -down, down_ids
