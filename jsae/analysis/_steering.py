"""Steering with SAE directions, and greedy/sampled generation with explicit PRNG keys.

Steering adds ``alpha * W_dec[latent]`` (the latent's decoder direction) to the activation at a hook,
at every position, during the whole generation: :func:`steering_hooks` builds the
:class:`~jsae.models.HookSpec`, :func:`generate` runs the model with any HookSpec, and
:func:`next_token_probs` measures the effect on the next token.

>>> hooks = steering_hooks(model.cfg, decoder_direction(sae, latent=123), alpha=8.0, layer=12)
>>> out = generate(model, tokens, lengths, max_new_tokens=20, key=jax.random.key(0), hooks=hooks)
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from jsae.models import HookSpec, ModelConfig, Transformer, add, forward
from jsae.sae import SAE

STEER_POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "result")


def decoder_direction(
    sae: SAE, latent: int, *, sae_index: int | None = None, unit: bool = True
) -> Float[Array, " d_in"]:
    """Row ``latent`` of ``W_dec`` (of SAE ``sae_index`` of a stack), unit-normalised if ``unit``."""
    W_dec = sae.W_dec
    if W_dec.ndim == 3:
        if sae_index is None:
            raise ValueError(f"the SAE is a stack of {W_dec.shape[0]}; pass sae_index=")
        W_dec = W_dec[sae_index]
    if not 0 <= latent < W_dec.shape[0]:
        raise ValueError(f"latent {latent} is out of range: the SAE has {W_dec.shape[0]} latents")
    d = W_dec[latent]
    return d / jnp.maximum(jnp.linalg.norm(d), jnp.finfo(d.dtype).tiny) if unit else d


def steering_hooks(
    cfg: ModelConfig,
    direction: Float[Array, " d"],
    alpha: float | Float[Array, ""],
    *,
    layer: int,
    point: str = "resid_post",
    head: int | None = None,
) -> HookSpec:
    """A HookSpec adding ``alpha * direction`` at ``point`` of ``layer`` (every position, every row).

    direction: ``[d_model]`` for residual-stream points; for ``z``/``result`` either ``[d]`` for one
      ``head`` or ``[H * d]`` for all heads flattened (``head=None``).
    ``alpha`` may be a traced scalar (vmap/grad over steering strength).
    """
    if point not in STEER_POINTS:
        raise ValueError(f"cannot steer at {point!r}; choose one of {', '.join(STEER_POINTS)}")
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{cfg.n_layers - 1}")
    direction = jnp.asarray(direction, jnp.float32)
    width = {"z": cfg.d_head, "result": cfg.d_model}.get(point, cfg.d_model)
    if point in ("z", "result"):
        if head is None:
            want, shape = cfg.n_heads * width, (cfg.n_heads, width)
        else:
            if not 0 <= head < cfg.n_heads:
                raise ValueError(f"head {head} is out of range: the model has heads 0..{cfg.n_heads - 1}")
            want, shape = width, (cfg.n_heads, width)
    else:
        if head is not None:
            raise ValueError(f"head= applies to z and result, not {point!r}")
        want, shape = width, (width,)
    if direction.shape != (want,):
        raise ValueError(f"direction has shape {direction.shape}; steering {point!r} here needs [{want}]")
    if point in ("z", "result") and head is not None:
        delta = jnp.zeros(shape).at[head].set(direction)
    else:
        delta = direction.reshape(shape)
    per_layer = jnp.zeros((cfg.n_layers, 1, 1) + shape).at[layer].set(alpha * delta)  # [L, B=1, T=1, ...]
    return add(point, per_layer)


def next_token_probs(
    model: Transformer,
    tokens: Int[Array, "B T"],
    lengths: Int[Array, " B"] | None = None,
    *,
    hooks: HookSpec | None = None,
) -> Float[Array, "B V"]:
    """Probabilities of the token following position ``lengths - 1`` of each row."""
    tokens = jnp.asarray(tokens, jnp.int32)
    lengths = (
        jnp.full((tokens.shape[0],), tokens.shape[1], jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
    )
    logits, _ = forward(model, tokens, hooks=hooks, lengths=lengths)
    assert logits is not None  # logits=True by default
    last = logits[jnp.arange(tokens.shape[0]), lengths - 1]
    return jax.nn.softmax(last.astype(jnp.float32), axis=-1)


@eqx.filter_jit
def _generate(model, buffer, lengths, key, hooks, n_new: int, temperature: float):
    rows = jnp.arange(buffer.shape[0])

    def step(i, carry):
        buf, key = carry
        pos = lengths + i  # where the new token goes
        logits, _ = forward(model, buf, hooks=hooks, lengths=pos)
        assert logits is not None  # logits=True by default
        last = logits[rows, pos - 1].astype(jnp.float32)
        key, sub = jax.random.split(key)
        if temperature == 0.0:
            nxt = jnp.argmax(last, axis=-1)
        else:
            nxt = jax.random.categorical(sub, last / temperature, axis=-1)
        return buf.at[rows, pos].set(nxt.astype(buf.dtype)), key

    buf, _ = jax.lax.fori_loop(0, n_new, step, (buffer, key))
    return buf


def generate(
    model: Transformer,
    tokens: Int[Array, "B T"] | np.ndarray,
    lengths: Int[Array, " B"] | np.ndarray | None = None,
    *,
    max_new_tokens: int,
    key: PRNGKeyArray | None = None,
    temperature: float = 0.0,
    hooks: HookSpec | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Continue each prompt by ``max_new_tokens`` tokens (greedy when ``temperature == 0``, else sampled
    from ``softmax(logits / temperature)`` with ``key``).

    tokens: ``[B, T]`` right-padded prompts; lengths: ``[B]`` prompt lengths (default T).
    hooks: e.g. :func:`steering_hooks` (applied at every step, to prompt and generated tokens alike).
    Returns ``(tokens [B, max(lengths) + max_new_tokens], lengths + max_new_tokens)``. Without a KV
    cache each step reruns the whole (fixed-size) buffer: one compilation, cost ~ steps x forward.
    """
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, positions], got shape {tokens.shape}")
    lengths = np.full(tokens.shape[0], tokens.shape[1], np.int32) if lengths is None else np.asarray(lengths, np.int32)
    if lengths.shape != (tokens.shape[0],) or lengths.min() < 1 or lengths.max() > tokens.shape[1]:
        raise ValueError(f"lengths must be [{tokens.shape[0]}] values in 1..{tokens.shape[1]}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if temperature > 0 and key is None:
        raise ValueError("sampling (temperature > 0) needs an explicit PRNG key: key=jax.random.key(seed)")
    total = int(lengths.max()) + max_new_tokens
    if total > model.cfg.n_ctx:
        raise ValueError(f"prompt + new tokens = {total} exceeds the model's context of {model.cfg.n_ctx}")
    buffer = np.zeros((tokens.shape[0], total), np.int32)
    buffer[:, : tokens.shape[1]] = tokens[:, :total]
    key = jax.random.key(0) if key is None else key
    out = _generate(model, jnp.asarray(buffer), jnp.asarray(lengths), key, hooks, max_new_tokens, float(temperature))
    return np.asarray(out), lengths + max_new_tokens
