"""Standard SAE evaluations for a whole stack of N SAEs at once.

Activation-level metrics (:func:`activation_metrics`), on activations ``x`` at the SAE's hook, with
``f = encode(x)``, ``x_hat = decode(f)`` and sums over the n evaluation tokens:

    l0                  mean_t #{i : f_ti != 0}
    mse                 sum_t ||x_t - x_hat_t||^2 / (n d_in)
    explained_variance  1 - sum_t ||x_t - x_hat_t||^2 / sum_t ||x_t - mean_t x||^2
    cosine_similarity   mean_t <x_t, x_hat_t> / (||x_t|| ||x_hat_t||)
    l2_ratio            mean_t ||x_hat_t|| / ||x_t||
    firing_frequency    [d_sae] fraction of tokens on which latent i fires
    dead_fraction       fraction of latents that never fire;  dense_fraction: fire on > dense_threshold

Model-level metrics (:func:`spliced_losses`): next-token cross-entropy and KL divergence to the clean
model when each SAE's reconstruction replaces the activation at its hook, relative to the clean model
and to zero-ablating that activation:

    ce_loss_score = (CE_ablated - CE_sae) / (CE_ablated - CE_clean)     (1: perfect, 0: as bad as zero)
    kl_div_score  = (KL_ablated - KL_sae) / KL_ablated

The clean forward (and the residual stream entering the hook's layer) is computed once per token batch
and shared by all SAEs; only the layers from the hook on run once per SAE, vmapped over the SAE axis
(in chunks that bound the ``[chunk, B, T, vocab]`` logits).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jsae.models import HookSpec, Transformer, forward, layer_range, map_batches
from jsae.models.hooks import Apply, capture, hook_width  # noqa: F401  (hook_width: imported from here too)
from jsae.sae import SAE, concat

SPLICE_POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "result")


def as_stack(sae: SAE) -> SAE:
    """A stack ``[N, ...]`` as is; a single SAE (``W_enc [d_in, d_sae]``) as a stack of one."""
    if sae.W_enc.ndim == 2:
        return concat([sae])
    if sae.W_enc.ndim != 3:
        raise ValueError(f"expected an SAE or a stack of SAEs, got W_enc of shape {tuple(sae.W_enc.shape)}")
    return sae


# ---------------------------------------------------------------------------------------------------
# activation-level metrics


def _token_sums(sae: SAE, x: Float[Array, "b d"], valid: Float[Array, " b"], mean: Float[Array, " d"]) -> dict:
    """Sufficient statistics of one SAE on one chunk of tokens (``valid`` masks padding rows)."""
    f = sae.encode(x)
    x_hat = sae.decode(f)
    tiny = jnp.finfo(x.dtype).tiny
    norm_x, norm_hat = jnp.linalg.norm(x, axis=-1), jnp.linalg.norm(x_hat, axis=-1)
    fires = (f != 0).astype(x.dtype)
    real = valid > 0

    def total(per_token):  # where, not a product: padding rows may hold inf/nan ratios
        return jnp.sum(jnp.where(real, per_token, 0.0))

    return {
        "sse": total(jnp.sum((x_hat - x) ** 2, axis=-1)),
        "sst": total(jnp.sum((x - mean) ** 2, axis=-1)),
        "active": total(jnp.sum(fires, axis=-1)),
        "cosine": total(jnp.sum(x * x_hat, axis=-1) / jnp.maximum(norm_x * norm_hat, tiny)),
        "l2_ratio": total(norm_hat / jnp.maximum(norm_x, tiny)),
        "fires": jnp.where(real, 1.0, 0.0).astype(x.dtype) @ fires,
    }


@eqx.filter_jit
def _stack_token_sums(sae, x, valid, mean, shared: bool):
    axis = None if shared else 0
    return jax.vmap(_token_sums, in_axes=(0, axis, None, axis))(sae, x, valid, mean)


def activation_metrics(
    sae: SAE,
    x: Float[Array, "N n d_in"] | Float[Array, "n d_in"] | np.ndarray,
    *,
    batch_size: int = 2048,
    dense_threshold: float = 0.1,
) -> dict[str, np.ndarray]:
    """Activation-level metrics of every SAE of a stack (module docstring), vmapped over the SAE axis.

    sae: a stack ``[N, ...]`` (or one SAE: N = 1).
    x: ``[N, n, d_in]`` one activation set per SAE, or ``[n, d_in]`` shared by all.
    batch_size: tokens per chunk (bounds the ``[N, batch, d_sae]`` latents in memory).
    Returns ``{name: [N]}`` plus ``firing_frequency [N, d_sae]``.
    """
    sae = as_stack(sae)
    n_sae, d_in = sae.W_enc.shape[0], sae.W_enc.shape[1]
    x = np.asarray(x, np.float32)
    shared = x.ndim == 2
    if x.ndim not in (2, 3) or x.shape[-1] != d_in or (not shared and x.shape[0] != n_sae):
        raise ValueError(f"x has shape {x.shape}; expected [n, {d_in}] (shared) or [{n_sae}, n, {d_in}] (per SAE)")
    n = x.shape[-2]
    if n == 0:
        raise ValueError("activation_metrics needs at least one token")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mean = x.mean(axis=-2, dtype=np.float64).astype(np.float32)
    b = min(batch_size, n)
    totals: dict[str, np.ndarray] = {}
    for start in range(0, n, b):
        chunk = x[..., start : start + b, :]
        valid = np.zeros(b, np.float32)
        valid[: chunk.shape[-2]] = 1.0
        if chunk.shape[-2] < b:  # pad to one shape: one compilation
            pad = [(0, 0)] * (chunk.ndim - 2) + [(0, b - chunk.shape[-2]), (0, 0)]
            chunk = np.pad(chunk, pad)
        sums = jax.device_get(_stack_token_sums(sae, jnp.asarray(chunk), jnp.asarray(valid), jnp.asarray(mean), shared))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
    freq = totals["fires"] / n
    return {
        "l0": totals["active"] / n,
        "mse": totals["sse"] / (n * d_in),
        "explained_variance": 1.0 - totals["sse"] / np.maximum(totals["sst"], np.finfo(np.float32).tiny),
        "cosine_similarity": totals["cosine"] / n,
        "l2_ratio": totals["l2_ratio"] / n,
        "dead_fraction": np.mean(freq == 0, axis=-1),
        "dense_fraction": np.mean(freq > dense_threshold, axis=-1),
        "firing_frequency": freq,
    }


def density_histogram(
    firing_frequency: Float[Array, "N d_sae"] | np.ndarray, *, bins: int = 40, log10_min: float = -8.0
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of log10 firing frequencies per SAE: ``(counts [N, bins], edges [bins + 1])``.

    Frequencies below ``10**log10_min`` (dead latents included) land in the first bin; the last bin ends
    at log10(1) = 0.
    """
    freq = np.atleast_2d(np.asarray(firing_frequency, np.float64))
    edges = np.linspace(log10_min, 0.0, bins + 1)
    logf = np.log10(np.maximum(freq, 10.0**log10_min))
    which = np.clip(np.searchsorted(edges, logf, side="right") - 1, 0, bins - 1)
    counts = (which[..., None] == np.arange(bins)).sum(axis=-2)
    return counts, edges


# ---------------------------------------------------------------------------------------------------
# spliced cross-entropy / KL


def sae_input(x: Array, head: Array | None) -> Array:
    """What an SAE reads at a hook: ``[B, T, D]`` as is; head points ``[B, T, H, d]`` either one head
    (``head`` an int array) -> ``[B, T, d]`` or all heads flattened (``head`` None) -> ``[B, T, H*d]``."""
    if x.ndim == 3:
        return x
    if head is None:
        return x.reshape(*x.shape[:2], -1)
    return jnp.take(x, head, axis=2)


def apply_at_hook(x: Array, head: Array | None, fn) -> Array:
    """Replace what an SAE reads (:func:`sae_input`) by ``fn`` of it, in the activation's own shape."""
    y = fn(sae_input(x, head))
    if x.ndim == 3:
        return y
    if head is None:
        return y.reshape(x.shape)
    return x.at[:, :, head].set(y)


def _splice_sae(x, layer, _, shared):
    sae, head = shared
    return jax.lax.cond(layer == 0, lambda a: apply_at_hook(a, head, sae), lambda a: a, x)


def _zero_ablate(x, layer, _, head):
    return jax.lax.cond(layer == 0, lambda a: apply_at_hook(a, head, jnp.zeros_like), lambda a: a, x)


def _loss_sums(logits, clean_logp, targets, mask) -> tuple[Array, Array]:
    """Masked sums of next-token cross-entropy and of KL(clean || this) over each sequence: ``[B]`` x 2.

    Written with one logsumexp and elementwise terms that XLA fuses into the reductions, so only the
    ``[B, T, V]`` logits are materialised per SAE (KL summed elementwise, without cancellation).
    """
    z = logits[:, :-1].astype(jnp.float32)
    lse = jax.nn.logsumexp(z, axis=-1)
    ce = lse - jnp.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    kl = jnp.sum(jnp.exp(clean_logp) * (clean_logp - (z - lse[..., None])), axis=-1)  # fused: no [V] temporary
    return jnp.sum(ce * mask, axis=-1), jnp.sum(kl * mask, axis=-1)


@eqx.filter_jit
def _clean_pass(model, tokens, lengths, start_layers: tuple[int, ...]):
    logits, cache = forward(model, tokens, hooks=capture("resid_pre"), lengths=lengths)
    assert logits is not None  # logits=True by default
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return logp, {s: cache["resid_pre"][s] for s in start_layers}


@eqx.filter_jit
def _group_sums(tail, resid, clean_logp, tokens, lengths, targets, mask, saes, heads, point: str, chunk: int):
    """Per-sequence loss sums with each SAE of a group spliced in at ``point`` of the tail's first layer:
    ``[N_g, B]`` x 2."""

    def one(args):
        sae, head = args
        spec = HookSpec(edits={point: Apply(_splice_sae, shared=(sae, head))})
        logits, _ = forward(tail, tokens, hooks=spec, lengths=lengths, resid=resid)  # from the clean residual
        return _loss_sums(logits, clean_logp, targets, mask)

    return jax.lax.map(one, (saes, heads), batch_size=chunk)


@eqx.filter_jit
def _ablation_sums(tail, resid, clean_logp, tokens, lengths, targets, mask, heads, point: str):

    def one(head):
        spec = HookSpec(edits={point: Apply(_zero_ablate, shared=head)})
        logits, _ = forward(tail, tokens, hooks=spec, lengths=lengths, resid=resid)
        return _loss_sums(logits, clean_logp, targets, mask)

    if heads is None:
        ce, kl = one(None)
        return ce[None], kl[None]
    return jax.lax.map(one, heads)


def hook_activations(
    model: Transformer,
    tokens: np.ndarray,
    lengths: np.ndarray,
    *,
    layers: Sequence[int],
    point: str,
    heads: Sequence[int] | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """What each of N SAEs reads at its hook, for every real token: ``[N, n_tokens, d_in]``.

    layers: ``[N]`` hook layers; heads: ``[N]`` heads for ``z``/``result`` SAEs on one head, None for SAEs
    on residual points or on all heads flattened. Uses :func:`jsae.models.harvest` (one pass, all layers).
    """
    from jsae.models import harvest

    acts = harvest(
        model,
        (np.asarray(tokens), np.asarray(lengths)),
        point=point,
        positions="all",
        batch_size=batch_size,
        progress=False,
    )  # [L*H, n, d] head points, [L, n, D] otherwise
    H = model.cfg.n_heads
    if point not in ("z", "result"):
        return np.stack([acts[layer] for layer in layers])
    if heads is not None:
        return np.stack([acts[layer * H + h] for layer, h in zip(layers, heads)])
    return np.stack([np.concatenate(list(acts[layer * H : (layer + 1) * H]), axis=-1) for layer in layers])


def _per_sae(value, n: int, name: str) -> list:
    values = list(value) if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} SAEs; give one value or one per SAE")
    return values


def spliced_losses(
    model: Transformer,
    sae: SAE,
    tokens: Int[Array, "S T"] | np.ndarray,
    lengths: Int[Array, " S"] | np.ndarray | None = None,
    *,
    layer: int | Sequence[int],
    point: str = "resid_post",
    head: int | Sequence[int] | None = None,
    batch_size: int = 8,
    max_logits_bytes: int = 512 << 20,
) -> dict[str, np.ndarray]:
    """CE and KL with each SAE of a stack spliced into the model at its hook (module docstring).

    sae: a stack of N SAEs (or one SAE), all reading the same ``point``.
    tokens: ``[S, T]`` right-padded ids; lengths: ``[S]`` real tokens per row (default T). Losses cover
      next-token predictions at positions ``0 .. lengths-2``.
    layer: the layer of each SAE's hook, one for all or ``[N]``.
    head: for ``z``/``result``: the head each SAE reads (one for all or ``[N]``), or None for SAEs on
      all heads flattened (``d_in = H * d``, SAELens' ``hook_z``).
    batch_size: sequences per forward; max_logits_bytes bounds the vmapped ``[chunk, B, T, V]`` logits.
    Returns ``{name: [N]}``: ``ce_clean``, ``ce_sae``, ``ce_ablated``, ``kl_sae``, ``kl_ablated``,
    ``ce_loss_score``, ``kl_div_score``, ``tokens`` (number of predictions scored).
    """
    cfg = model.cfg
    sae = as_stack(sae)
    n = sae.W_enc.shape[0]
    if point not in SPLICE_POINTS:
        raise ValueError(f"cannot splice an SAE at {point!r}; choose one of {', '.join(SPLICE_POINTS)}")
    layers = [int(v) for v in _per_sae(layer, n, "layer")]
    bad = [v for v in layers if not 0 <= v < cfg.n_layers]
    if bad:
        raise ValueError(f"layer {bad[0]} is out of range: the model has layers 0..{cfg.n_layers - 1}")
    if head is not None and point not in ("z", "result"):
        raise ValueError(f"head= applies to the per-head points z and result, not {point!r}")
    heads = None if head is None else [int(h) for h in _per_sae(head, n, "head")]
    if heads is not None and not all(0 <= h < cfg.n_heads for h in heads):
        raise ValueError(f"head out of range: the model has heads 0..{cfg.n_heads - 1}")
    want = hook_width(cfg, point, heads is not None)
    if sae.W_enc.shape[1] != want:
        raise ValueError(
            f"the SAEs read d_in={sae.W_enc.shape[1]} but {point!r} "
            f"{'of one head ' if heads is not None else ''}has width {want} in this model"
        )
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [sequences, positions] with at least 2 positions, got {tokens.shape}")
    lengths = np.full(tokens.shape[0], tokens.shape[1], np.int32) if lengths is None else np.asarray(lengths, np.int32)
    if lengths.shape != (tokens.shape[0],) or lengths.min() < 1 or lengths.max() > tokens.shape[1]:
        raise ValueError(f"lengths must be [{tokens.shape[0]}] values in 1..{tokens.shape[1]}")
    b = min(batch_size, tokens.shape[0])
    T = tokens.shape[1]
    chunk = int(max(1, min(n, max_logits_bytes // (b * T * cfg.vocab_size * 4 * 2))))
    groups = {s: np.flatnonzero(np.asarray(layers) == s) for s in sorted(set(layers))}
    tails = {s: layer_range(model, s) for s in groups}

    def batch_sums(model, tok, lens) -> dict[str, np.ndarray]:
        """Per-sequence sums ``[b]`` (clean CE, predictions) and ``[b, N]`` (the spliced/ablated losses)."""
        b = tok.shape[0]
        targets = jnp.asarray(tok[:, 1:])
        mask = jnp.asarray((np.arange(T - 1)[None, :] < (lens - 1)[:, None]).astype(np.float32))
        tok_j, lens_j = jnp.asarray(tok), jnp.asarray(lens)
        clean_logp, resid = _clean_pass(model, tok_j, lens_j, tuple(groups))
        out = {k: np.zeros((b, n)) for k in ("ce_sae", "kl_sae", "ce_ablated", "kl_ablated")}
        out["ce_clean"] = -np.asarray(
            jnp.sum(jnp.take_along_axis(clean_logp, targets[..., None], axis=-1)[..., 0] * mask, axis=-1)
        )
        out["count"] = np.asarray(jnp.sum(mask, axis=-1))
        for s, idx in groups.items():
            group_sae = jax.tree.map(lambda a, idx=idx: a[idx], sae)
            group_heads = None if heads is None else jnp.asarray([heads[j] for j in idx], jnp.int32)
            args = (tails[s], resid[s], clean_logp, tok_j, lens_j, targets, mask)
            ce, kl = _group_sums(*args, group_sae, group_heads, point, chunk)  # [N_g, b]
            out["ce_sae"][:, idx] = np.asarray(ce).T
            out["kl_sae"][:, idx] = np.asarray(kl).T
            unique = None if group_heads is None else np.unique(np.asarray(group_heads))
            ce_a, kl_a = _ablation_sums(*args, None if unique is None else jnp.asarray(unique), point)
            pos = np.zeros(len(idx), int) if unique is None else np.searchsorted(unique, np.asarray(group_heads))
            out["ce_ablated"][:, idx] = np.asarray(ce_a)[pos].T
            out["kl_ablated"][:, idx] = np.asarray(kl_a)[pos].T
        return out

    # every bucket padded to T (one compilation per program, as for a fixed-length batch); padding rows dropped
    per_row = map_batches(batch_sums, model, tokens, lengths, batch_size=b, pad_multiple=T)
    totals = {k: v.sum(axis=0) for k, v in per_row.items()}
    count = float(totals.pop("count"))
    ce_clean = float(totals.pop("ce_clean"))
    sums = totals
    out = {k: v / count for k, v in sums.items()}
    out["ce_clean"] = np.full(n, ce_clean / count)
    out["ce_loss_score"] = (out["ce_ablated"] - out["ce_sae"]) / (out["ce_ablated"] - out["ce_clean"])
    out["kl_div_score"] = (out["kl_ablated"] - out["kl_sae"]) / out["kl_ablated"]
    out["tokens"] = np.full(n, count)
    return out
