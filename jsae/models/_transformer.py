"""The decoder-only transformer behind GPT-2, the Llama family, Gemma and GPT-NeoX, with per-head hook points.

Why an equinox core next to penzai: penzai *can* express all of this (``pz.nn.LayerStack`` runs
stacked blocks under ``lax.scan``, and a ``Linear`` with ``parallel_axes`` keeps heads as an axis of the
attention output: :func:`jsae.models.to_penzai` builds exactly that view, and :func:`jsae.models.from_penzai`
reads penzai's models back). jsae's own forward stays the fast core because (1) hooks are plain array
arguments of one jitted function (a :class:`~jsae.models.hooks.HookSpec`), so ``vmap`` over patch masks
(activation patching of every head in one program) and ``grad`` w.r.t. per-head deltas (attribution
patching) need no model rewriting, whereas a penzai hook is a layer inserted by tree surgery, which
means one new model, and one new trace, per edit structure; (2) the per-head ``result`` is computed
only when a spec asks for it; the attention output is the fused ``z @ W_O`` unless ``result`` is
edited, when it is the sum of the edited per-head results (a different float32 summation order: on
SmolLM2 the logits then differ from the fused ones by rounding, see docs/BENCHMARKS.md);
(3) all layers are one ``lax.scan`` over ``[L]``-stacked weights with hook values sliced per layer,
and penzai's hook points carry a static layer index, which needs unrolled blocks; (4) compile time: one
scanned block compiles once for all layers, where penzai's unrolled blocks compile each layer
(``experiments/bench_compile.py`` measures both; figures in docs/BENCHMARKS.md). Parameters are an equinox
pytree with an explicit ``[L]`` layer axis and named dimensions in their docstrings.

Shape letters: ``B`` batch, ``T`` positions, ``L`` layers, ``D`` d_model, ``H`` query heads, ``K``
key/value heads, ``G = H // K``, ``dh`` d_head, ``F`` d_mlp, ``V`` vocabulary.
Sequences are right-padded: causal masking keeps padding from touching real positions, and
``lengths`` tells hooks which positions are real. Pad with -1 (what ``Tokenizer.encode_batch`` and
``pad_sequences`` do) and ``forward`` finds the lengths itself.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._config import ModelConfig
from ._errors import ModelError, SequenceTooLongError, TokenOutOfRangeError
from ._tokenizer import PAD, TokenBatch
from .hooks import HookSpec, as_spec

SCAN_UNROLL = 1  # layers per scan iteration (1: smallest program, fastest compile)


class Blocks(eqx.Module):
    """Weights of all layers, stacked on a leading ``[L]`` axis. ``None`` where the arch has none."""

    ln1_w: Float[Array, "L D"]  # None only in OLMo-2-style blocks: no norm before attention (the forward checks)
    ln1_b: Float[Array, "L D"] | None
    W_Q: Float[Array, "L D H dh"]
    b_Q: Float[Array, "L H dh"] | None
    W_K: Float[Array, "L D K dh"]
    b_K: Float[Array, "L K dh"] | None
    W_V: Float[Array, "L D K dh"]
    b_V: Float[Array, "L K dh"] | None
    W_O: Float[Array, "L H dh D"]
    b_O: Float[Array, "L D"] | None
    ln2_w: Float[Array, "L D"]  # None only in OLMo-2-style blocks: no norm before the MLP
    ln2_b: Float[Array, "L D"] | None
    W_gate: Float[Array, "L D F"] | None  # SwiGLU gate (Llama); None for GPT-2
    W_in: Float[Array, "L D F"]
    b_in: Float[Array, "L F"] | None
    W_out: Float[Array, "L F D"]
    b_out: Float[Array, "L D"] | None
    ln1_post_w: Float[Array, "L D"] | None = None  # norm on the attention output (cfg.post_norms)
    ln2_post_w: Float[Array, "L D"] | None = None  # norm on the MLP output (cfg.post_norms)
    q_norm_w: Float[Array, "L H dh"] | None = None  # RMSNorm scale of q (cfg.qk_norm; per-head norms tiled)
    k_norm_w: Float[Array, "L K dh"] | None = None  # RMSNorm scale of k


class Transformer(eqx.Module):
    """A decoder-only language model: embeddings, ``L`` blocks, final norm, unembedding."""

    cfg: ModelConfig = eqx.field(static=True)
    embed: Float[Array, "V D"]
    pos_embed: Float[Array, "n_ctx D"] | None
    blocks: Blocks
    ln_f_w: Float[Array, " D"]
    ln_f_b: Float[Array, " D"] | None
    W_U: Float[Array, "D V"] | None  # None: tied to ``embed``

    def unembed_matrix(self) -> Float[Array, "D V"]:
        return self.embed.T if self.W_U is None else self.W_U


def _norm(cfg: ModelConfig, x: Array, w: Array, b: Array | None) -> Array:
    if cfg.arch == "gpt2":
        mu = x.mean(-1, keepdims=True)
        xc = x - mu
        var = (xc * xc).mean(-1, keepdims=True)
        y = xc * jax.lax.rsqrt(var + cfg.norm_eps) * w
        return y if b is None else y + b
    var = (x * x).mean(-1, keepdims=True)
    return x * jax.lax.rsqrt(var + cfg.norm_eps) * w


def _qk_norm(cfg: ModelConfig, x: Float[Array, "B T N dh"], w: Float[Array, "N dh"]) -> Array:
    """RMSNorm of queries or keys over each head (``qk_norm="head"``) or the whole projection (``"all"``)."""
    axes = (-1,) if cfg.qk_norm == "head" else (-2, -1)
    var = (x * x).mean(axes, keepdims=True)
    return x * jax.lax.rsqrt(var + cfg.norm_eps) * w


def rope_inv_freq(cfg: ModelConfig, local: bool = False) -> np.ndarray:
    """``[r / 2]`` RoPE inverse frequencies (HF ``modeling_rope_utils``: default, linear, llama3)."""
    r = cfg.rotary_dim or cfg.d_head
    theta = cfg.rope_local_theta if local and cfg.rope_local_theta else cfg.rope_theta
    inv_freq = 1.0 / (theta ** (np.arange(0, r // 2, dtype=np.float64) * 2 / r))
    if local or cfg.rope_type == "default":
        return inv_freq
    if cfg.rope_type == "linear":
        return inv_freq / cfg.rope_scaling[0]
    factor, low, high, old_ctx = cfg.rope_scaling  # llama3
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def _rope(cfg: ModelConfig, T: int, local: bool = False) -> tuple[Array, Array]:
    """cos, sin tables ``[T, r]`` (``r = rotary_dim or dh``) in the rotate-half layout used by HF Llama;
    ``local``: the tables of sliding-window layers (``cfg.rope_local_theta``)."""
    inv_freq = rope_inv_freq(cfg, local)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv_freq[None, :]
    ang = np.concatenate([ang, ang], axis=-1)
    return jnp.asarray(np.cos(ang), jnp.float32), jnp.asarray(np.sin(ang), jnp.float32)


def _apply_rope(x: Float[Array, "B T N dh"], cos: Array, sin: Array) -> Array:
    r = cos.shape[-1]
    if r < x.shape[-1]:  # partial rotary: the other dims pass through
        return jnp.concatenate([_apply_rope(x[..., :r], cos, sin), x[..., r:]], axis=-1)
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[None, :, None, :] + rot * sin[None, :, None, :]


def _gelu_tanh(x: Array) -> Array:
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


_ACTS = {
    "silu": jax.nn.silu,
    "gelu_tanh": _gelu_tanh,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


def _act(cfg: ModelConfig, x: Array) -> Array:
    return _ACTS[cfg.mlp_act or ("silu" if cfg.arch == "llama" else "gelu_tanh")](x)


def _mm(spec: str, x: Array, w: Array) -> Array:
    """``einsum`` of an activation and a weight in the weight's dtype, accumulated and returned in float32
    (bf16 weights: bf16 products, float32 sums; float32 weights: unchanged)."""
    return jnp.einsum(spec, x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def _softcap(x: Array, cap: float | None) -> Array:
    return x if cap is None else cap * jnp.tanh(x / cap)


def _reduce(x: Array, how: str, lengths: Int[Array, " B"], point: str) -> Array:
    """Reduce the position axis (axis 1) of a captured ``[B, T, ...]`` activation."""
    if how == "all" or point == "pattern":
        return x
    if how == "last":
        return x[jnp.arange(x.shape[0]), lengths - 1]
    valid = (jnp.arange(x.shape[1])[None, :] < lengths[:, None]).astype(x.dtype)
    valid = valid.reshape(valid.shape + (1,) * (x.ndim - 2))
    return (x * valid).sum(1) / lengths.reshape((-1,) + (1,) * (x.ndim - 2)).astype(x.dtype)


def _block(cfg, spec: HookSpec, lengths, cos, sin, x, xs):
    """One transformer block with hook points. ``x`` ``[B, T, D]``; returns (x, captured)."""
    p, layer, sliced = xs
    captured = {}

    def hook(point, a):
        for e, s in zip(spec.edits.get(point, ()), sliced.get(point, ())):
            a = e.apply(point, a, layer, s)
        if point in spec.capture:
            captured[point] = _reduce(a, spec.reduce, lengths, point)
        return a

    B, T, _ = x.shape
    H, K, G, dh = cfg.n_heads, cfg.n_kv_heads, cfg.group_size, cfg.d_head
    x = x_pre = hook("resid_pre", x)
    h = x if p.ln1_w is None else _norm(cfg, x, p.ln1_w, p.ln1_b)
    q = _mm("btd,dhe->bthe", h, p.W_Q)
    k = _mm("btd,dke->btke", h, p.W_K)
    v = _mm("btd,dke->btke", h, p.W_V)
    if p.b_Q is not None:
        q, k, v = q + p.b_Q, k + p.b_K, v + p.b_V
    if p.q_norm_w is not None:
        q, k = _qk_norm(cfg, q, p.q_norm_w), _qk_norm(cfg, k, p.k_norm_w)
    w = jnp.asarray(cfg.attn_window)[layer % len(cfg.attn_window)] if cfg.attn_window else 0  # 0: global
    if cos is not None:
        if cos.ndim == 3:  # [global, local] tables (cfg.rope_local_theta): local ones on sliding-window layers
            local = jnp.asarray(w != 0, jnp.int32)
            cos, sin = cos[local], sin[local]
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
    scale = (1.0 / math.sqrt(dh)) if cfg.query_scale is None else cfg.query_scale
    q = (q * scale).reshape(B, T, K, G, dh)
    scores = _softcap(jnp.einsum("bqkge,bske->bkgqs", q, k), cfg.attn_softcap)
    causal = jnp.tril(jnp.ones((T, T), bool))
    if cfg.attn_window:  # sliding-window layers: keys at most window - 1 positions back (0: global)
        causal = causal & ((w == 0) | (jnp.arange(T)[:, None] - jnp.arange(T)[None, :] < w))
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    pattern = jax.nn.softmax(scores, axis=-1)
    if "pattern" in spec.capture or "pattern" in spec.edits:
        pattern = hook("pattern", pattern.reshape(B, H, T, T)).reshape(B, K, G, T, T)
    z = jnp.einsum("bkgqs,bske->bqkge", pattern, v).reshape(B, T, H, dh)
    z = hook("z", z)
    if "result" in spec.edits:  # edited heads feed the sum, so the sum runs over the per-head result
        attn = hook("result", _mm("bthe,hed->bthd", z, p.W_O)).sum(2)
    else:  # the fused contraction: capturing ``result`` leaves the logits bit for bit as they are
        if "result" in spec.capture:
            hook("result", _mm("bthe,hed->bthd", z, p.W_O))
        attn = _mm("bthe,hed->btd", z, p.W_O)
    if p.b_O is not None:
        attn = attn + p.b_O
    if p.ln1_post_w is not None:
        attn = _norm(cfg, attn, p.ln1_post_w, None)
    attn = hook("attn_out", attn)
    x = hook("resid_mid", x + attn)
    h = x_pre if cfg.parallel_block else x
    h = h if p.ln2_w is None else _norm(cfg, h, p.ln2_w, p.ln2_b)
    if cfg.arch == "llama":
        mid = _act(cfg, _mm("btd,df->btf", h, p.W_gate)) * _mm("btd,df->btf", h, p.W_in)
    else:
        pre = _mm("btd,df->btf", h, p.W_in)
        mid = _act(cfg, pre + p.b_in if p.b_in is not None else pre)
    mlp = _mm("btf,fd->btd", mid, p.W_out)
    if p.b_out is not None:
        mlp = mlp + p.b_out
    if p.ln2_post_w is not None:
        mlp = _norm(cfg, mlp, p.ln2_post_w, None)
    mlp = hook("mlp_out", mlp)
    x = hook("resid_post", x + mlp)
    return x, captured


def _embed(model: Transformer, tokens: Array) -> Array:
    """``[B, T, D]`` the residual stream entering layer 0: token (and learned position) embeddings."""
    x = model.embed[jnp.maximum(tokens, 0)]  # -1 padding reads id 0; causal masking keeps it from real positions
    if model.cfg.embed_scale != 1.0:  # rounded to the weights' dtype first, as HF's Gemma does
        x = x * jnp.asarray(model.cfg.embed_scale, x.dtype)
    x = x.astype(jnp.float32)  # the residual stream is float32 whatever the weights' dtype
    if model.pos_embed is not None:
        x = x + model.pos_embed[: tokens.shape[1]][None]
    return x


@eqx.filter_jit
def _forward(model: Transformer, tokens: Array, spec: HookSpec, lengths: Array, logits: bool | str, resid=None):
    cfg = model.cfg
    B, T = tokens.shape
    x = _embed(model, tokens) if resid is None else resid.astype(jnp.float32)
    cos = sin = None
    if model.pos_embed is None:
        cos, sin = _rope(cfg, T)
        if cfg.rope_local_theta:
            cos_l, sin_l = _rope(cfg, T, local=True)
            cos, sin = jnp.stack([cos, cos_l]), jnp.stack([sin, sin_l])
    sliced = {pt: tuple(e.per_layer() for e in es) for pt, es in spec.edits.items()}
    layers = jnp.arange(cfg.n_layers)

    def body(carry, xs):
        return _block(cfg, spec, lengths, cos, sin, carry, xs)

    x, cache = jax.lax.scan(body, x, (model.blocks, layers, sliced), unroll=SCAN_UNROLL)
    if not logits:
        return None, cache
    if logits == "last":
        x = x[jnp.arange(B), lengths - 1]
    return unembed(model, x), cache


def value_vectors(
    model: Transformer, resid_pre: Float[Array, "B T D"], layer: Int[Array, ""] | int
) -> Float[Array, "B T K dh"]:
    """The value vectors of every key/value head at ``layer`` from the residual stream entering that block,
    exactly as the forward computes them (pre-norm of the model's family, the weights' dtype with float32
    sums, value bias): ``z[t] = sum_s pattern[t, s] v[s]`` for each head of a key/value group."""
    p = jax.tree.map(lambda a: a[layer], model.blocks)
    h = resid_pre if p.ln1_w is None else _norm(model.cfg, resid_pre, p.ln1_w, p.ln1_b)
    v = _mm("btd,dke->btke", h, p.W_V)
    return v if p.b_V is None else v + p.b_V


def unembed(model: Transformer, resid: Float[Array, "... D"]) -> Float[Array, "... V"]:
    """Logits from the last layer's residual stream: final norm, then the unembedding."""
    logits = _mm("...d,dv->...v", _norm(model.cfg, resid, model.ln_f_w, model.ln_f_b), model.unembed_matrix())
    return _softcap(logits, model.cfg.final_softcap)


def layer_range(model: Transformer, start: int = 0, stop: int | None = None) -> Transformer:
    """The same model with only layers ``start..stop-1`` (weights shared, not copied).

    ``layer_range(model, 0, l + 1)`` stops after layer ``l`` (cheap harvests of early layers);
    ``layer_range(model, l)`` is the tail that continues from the residual entering layer ``l``.
    Hook layer indices of the result count from ``start``.
    """
    n = model.cfg.n_layers
    stop = n if stop is None else stop
    if not 0 <= start < stop <= n:
        raise ModelError(f"layers {start}..{stop - 1} are out of range; the model has layers 0..{n - 1}")
    import dataclasses

    blocks = jax.tree.map(lambda a: a[start:stop], model.blocks)
    w = model.cfg.attn_window  # keep each layer's sliding window when indices restart at 0
    w = w[start % len(w) :] + w[: start % len(w)] if w else w
    cfg = dataclasses.replace(model.cfg, n_layers=stop - start, attn_window=w)
    return dataclasses.replace(model, cfg=cfg, blocks=blocks)


def check_tokens(cfg: ModelConfig, tokens) -> None:
    """Raise a clear error for sequences longer than the context, out-of-range ids, or -1 padding that is
    not at the right end of a row (ids are checked only when concrete)."""
    if tokens.ndim != 2:
        raise ModelError(f"tokens must have shape [batch, positions], got {tuple(tokens.shape)}")
    if tokens.shape[1] > cfg.n_ctx:
        raise SequenceTooLongError(
            f"sequence of {tokens.shape[1]} tokens is longer than the model's context of {cfg.n_ctx}; "
            "truncate or split the input"
        )
    if isinstance(tokens, jax.core.Tracer):  # pyright: ignore[reportAttributeAccessIssue]  # public, not in stubs
        return
    t = np.asarray(tokens)
    if t.size and (t.min() < PAD or t.max() >= cfg.vocab_size):
        bad = int(t.min()) if t.min() < PAD else int(t.max())
        raise TokenOutOfRangeError(
            f"token id {bad} is outside the vocabulary [0, {cfg.vocab_size}) (and -1 is padding); "
            "tokenize with this model's tokenizer"
        )
    pad = t == PAD
    if pad.any() and (pad[:, :-1] & ~pad[:, 1:]).any():
        row = int(np.nonzero((pad[:, :-1] & ~pad[:, 1:]).any(1))[0][0])
        raise TokenOutOfRangeError(
            f"row {row} has a real token after a -1 pad; pad on the right only (Tokenizer.encode_batch does)"
        )
    if pad[:, 0].any():
        raise TokenOutOfRangeError(f"row {int(np.nonzero(pad[:, 0])[0][0])} has no real token (it starts with -1)")


def real_lengths(tokens: Int[Array, "B T"] | Int[np.ndarray, "B T"]) -> Int[Array, " B"]:
    """``[B]`` number of real (``>= 0``) ids per right-padded row; works under ``jit``."""
    return (jnp.asarray(tokens) >= 0).sum(1).astype(jnp.int32)


def forward(
    model: Transformer,
    tokens: Int[Array, "B T"] | Int[np.ndarray, "B T"] | TokenBatch,
    *,
    hooks: HookSpec | None = None,
    lengths: Int[Array, " B"] | Int[np.ndarray, " B"] | None = None,
    logits: bool | str = True,
    resid: Float[Array, "B T D"] | None = None,
) -> tuple[Float[Array, "B T V"] | None, dict[str, Array]]:
    """Run the model; returns ``(logits [B, T, V], cache)``.

    tokens: a :class:`~jsae.models.TokenBatch` (``Tokenizer.encode_batch``), or ``[B, T]`` int
      ids right-padded with -1 (or with any in-range id, together with ``lengths``).
    hooks: a :class:`~jsae.models.hooks.HookSpec` (captures and edits for all layers).
    lengths: ``[B]`` number of real tokens per row; default: the batch's own lengths, else the count of
      ids ``>= 0`` per row (``T`` when nothing is -1). Used by ``logits="last"`` and ``reduce='last'/'mean'``.
    logits: False skips the final norm and unembedding (returns ``None`` logits; faster harvests);
      ``"last"`` returns only the logits at each row's last real position, ``[B, V]`` (next-token tasks).
    resid: ``[B, T, D]`` the residual stream entering the model's first layer, used instead of the
      embeddings of ``tokens`` (which still give the lengths and positions). With
      :func:`layer_range` it continues a run from a layer: ``forward(layer_range(model, l), tokens,
      resid=x)`` is the full forward when ``x`` is ``resid_pre`` of layer ``l`` (edit it first to splice).
    cache: ``{point: [L, B, T, ...]}`` (``[L, B, ...]`` when the spec reduces positions).

    Jit-compiled (one compilation per shape and static hook structure); usable inside ``jax.jit``,
    ``jax.vmap`` and ``jax.grad``.
    """
    if logits not in (True, False, "last"):
        raise ModelError(f"logits must be True, False or 'last', got {logits!r}")
    if isinstance(tokens, TokenBatch):
        lengths = tokens.lengths if lengths is None else lengths
        tokens = tokens.ids
    ids = tokens if isinstance(tokens, jax.Array) else jnp.asarray(tokens)
    check_tokens(model.cfg, ids)
    n = real_lengths(ids) if lengths is None else jnp.asarray(lengths, jnp.int32)
    if resid is not None and tuple(resid.shape) != (*ids.shape, model.cfg.d_model):
        raise ModelError(
            f"resid must be [batch, positions, d_model] = {(*ids.shape, model.cfg.d_model)} to match the "
            f"tokens, got {tuple(resid.shape)}"
        )
    return _forward(model, ids, as_spec(hooks), n, logits, resid)
