"""One streamed pass over a token stream serves every chosen SAE: top-k contexts per latent (merged per batch
on the device, so memory is bounded by ``k``), log-scale histograms, firing frequency, L0 and explained
variance per SAE, and for per-head ``z`` SAEs the source attribution of each kept context.

>>> data = feature_data(model, stack, inputs, tokens, latents=32, k=10)
>>> data.top_value[m, j]          # the 10 largest activations of latent data.latents[m, j] of SAE m
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jsae.activations import HookInput, capture_rows_and, model_for
from jsae.models import Transformer, map_batches, value_vectors
from jsae.sae import SAE
from jsae.train import AXIS, pad_leading, padded_size, sae_mesh, shard_leading

from ._arrays import (
    HIST_EDGES,
    batch_top_k,
    directions_in_model_space,
    log_histogram,
    logit_effects,
    merge_top_k,
    pre_activation_constant,
    rows_at,
    source_contributions,
)

RESIDUAL_POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_POINTS = ("z", "result")


@dataclasses.dataclass(frozen=True)
class FeatureData:
    """What the feature page shows, as numpy arrays (``M`` SAEs, ``J`` latents each, ``k`` contexts, ``T``
    positions per context row, ``nb`` histogram bins, ``n`` logit tokens).

    Top contexts are largest first; a slot that no token filled has ``top_seq == -1`` (and a latent that
    never fired has no slot with ``top_value > 0``). ``top_sources`` is None unless every SAE reads one
    head's ``z``; then ``top_sources[m, j, c, s]`` is source position ``s``'s contribution to the latent's
    pre-activation at ``(top_seq, top_pos)``, and ``source_constant[m, j]`` the rest
    (:func:`jsae.viz.source_contributions`)."""

    inputs: list[dict[str, Any]]  # what each SAE reads: {"layer", "point", "head"}
    latents: np.ndarray  # [M, J] latent indices shown
    top_value: np.ndarray  # [M, J, k]
    top_seq: np.ndarray  # [M, J, k] row of ``tokens``
    top_pos: np.ndarray  # [M, J, k] position in that row
    top_acts: np.ndarray  # [M, J, k, T] the latent's activation along the whole row (0 at skipped positions)
    top_sources: np.ndarray | None  # [M, J, k, T]
    source_constant: np.ndarray | None  # [M, J]
    fires: np.ndarray  # [M, J] tokens on which the latent fired
    hist: np.ndarray  # [M, J, nb] counts of positive activations in log-spaced bins
    hist_edges: np.ndarray  # [nb + 1]
    n_tokens: int  # tokens counted (BOS positions and padding left out)
    explained_variance: np.ndarray  # [M]
    l0: np.ndarray  # [M] mean active latents per token
    logit_up: np.ndarray  # [M, J, n] largest direct logit effects
    logit_up_ids: np.ndarray  # [M, J, n]
    logit_down: np.ndarray  # [M, J, n] most negative
    logit_down_ids: np.ndarray  # [M, J, n]

    @property
    def firing_frequency(self) -> np.ndarray:
        """``[M, J]`` fraction of tokens on which each latent fired."""
        return self.fires / max(self.n_tokens, 1)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Static description of what the stack reads (hashable: part of the jitted programs' static args)."""

    kind: str  # "head" (one head of z/result), "all_heads" (z of all heads flattened), "model" (d_model points)
    points: tuple[str, ...]  # points captured for the SAE inputs
    sources: bool  # per-head z: capture pattern + resid_pre for source attributions
    k: int
    skip: int
    layers: tuple[int, ...] = ()  # the layers the SAEs read


def normalise_inputs(inputs: Sequence[Mapping[str, Any] | Any], n: int) -> list[dict[str, Any]]:
    """``inputs`` (dicts or objects with ``layer``, ``point``, ``head``) as N dicts."""
    out = []
    for i in inputs:
        d = dict(i) if isinstance(i, Mapping) else {"layer": i.layer, "point": i.point, "head": i.head}
        out.append({"layer": d.get("layer"), "point": d.get("point"), "head": d.get("head")})
    if len(out) != n:
        raise ValueError(f"{len(out)} inputs for a stack of {n} SAEs; give one input per SAE")
    return out


def check_inputs(model: Transformer, sae: SAE, inputs: list[dict[str, Any]]) -> _Layout:
    """One clear error for inputs the model cannot serve; returns the stack's layout (without k/skip)."""
    cfg = model.cfg
    for i, inp in enumerate(inputs):
        layer, point, head = inp["layer"], inp["point"], inp["head"]
        if point is None or layer is None:
            raise ValueError(
                f"SAE {i} reads unknown activations (no hook point saved); the page needs SAEs trained on a "
                "model's hook point"
            )
        if point not in RESIDUAL_POINTS + HEAD_POINTS:
            raise ValueError(f"SAE {i} reads {point!r}; the page reads {', '.join(RESIDUAL_POINTS + HEAD_POINTS)}")
        if not 0 <= layer < cfg.n_layers:
            raise ValueError(
                f"SAE {i} reads layer {layer} but the model {cfg.name or ''} has layers 0..{cfg.n_layers - 1}; "
                "is it the model these SAEs were trained on?"
            )
        if head is not None and not 0 <= head < cfg.n_heads:
            raise ValueError(
                f"SAE {i} reads head {head} but the model has heads 0..{cfg.n_heads - 1} per layer; is it the "
                "model these SAEs were trained on?"
            )
        width = (
            cfg.d_head
            if point == "z" and head is not None
            else cfg.n_heads * cfg.d_head
            if point == "z"
            else cfg.d_model
        )
        if sae.d_in != width:
            raise ValueError(
                f"SAE {i} has d_in={sae.d_in} but {point!r} at layer {layer} has width {width} in this model; "
                "is it the model these SAEs were trained on?"
            )
    kinds = {
        "head" if i["point"] in HEAD_POINTS and i["head"] is not None else "all_heads" if i["point"] == "z" else "model"
        for i in inputs
    }
    points = tuple(dict.fromkeys(i["point"] for i in inputs))
    if len(kinds) > 1 or (kinds == {"head"} and len(points) > 1):
        raise ValueError(
            f"the SAEs read {', '.join(points)} in different ways (per head, all heads, d_model); "
            "build the page of each kind separately"
        )
    kind = kinds.pop()
    return _Layout(kind, points, kind == "head" and points == ("z",), 0, 0)


def _hook_inputs(inputs: list[dict[str, Any]]) -> tuple[HookInput, ...]:
    return tuple(HookInput(i["layer"], i["point"], i["head"]) for i in inputs)


@functools.partial(jax.jit, static_argnames=("inputs", "skip", "sources", "n_pad"))
def _batch_inputs(model, tokens, *, inputs: tuple[HookInput, ...], skip: int, sources: bool, n_pad: int):
    """What the SAEs read from one batch ``tokens [B, T]``, from the one forward of
    :func:`jsae.activations.capture_rows_and` (on one device, whose large matmuls use every core):
    ``{"x": [n_pad, B * T', d]}`` (``T' = T - skip``) and, for per-head ``z`` SAEs, each SAE's attention
    pattern rows ``"p": [n_pad, B, T', T]`` and the value vectors of its key/value head ``"v": [n_pad, B, T, dh]``.
    The leading SAE axis is padded to ``n_pad`` (a multiple of the devices) with copies of the last SAE's."""
    rows, cache = capture_rows_and(model, tokens, inputs, skip, ("pattern", "resid_pre") if sources else ())
    out = {"x": rows}
    if sources:
        layers = np.array([i.layer for i in inputs])
        heads = np.array([i.head for i in inputs])
        read = np.array(sorted(set(layers.tolist())))
        values = jax.vmap(lambda r, layer: value_vectors(model, r, layer))(cache["resid_pre"][read], jnp.asarray(read))
        G = model.cfg.n_heads // model.cfg.n_kv_heads  # query heads per key/value head
        out["v"] = values[np.searchsorted(read, layers), :, :, heads // G]  # [M, B, T, dh]
        out["p"] = cache["pattern"][layers, :, heads][:, :, skip:]  # [M, B, T', T]
    return pad_leading(out, n_pad)


def _stats_one(args, valid, row_ids, k: int, skip: int, edges):
    """One SAE's batch merged into its running statistics (``valid [B, T']``: the positions counted)."""
    s, lat, batch, acc_m = args
    B, T1 = valid.shape
    x = batch["x"]  # [R, d]
    f = s.encode(x)  # [R, d_sae]
    a = jnp.take(f, lat, axis=-1)  # [R, J]
    vr = valid.reshape(-1)
    vm = vr[:, None]
    out = {
        "err": acc_m["err"] + jnp.sum(jnp.where(vm, (s.decode(f) - x) ** 2, 0.0)),
        "sum_x": acc_m["sum_x"] + jnp.sum(jnp.where(vm, x, 0.0), axis=0),
        "sum_x2": acc_m["sum_x2"] + jnp.sum(jnp.where(vm, x * x, 0.0)),
        "l0": acc_m["l0"] + jnp.sum(jnp.where(vm, f != 0, False)).astype(jnp.float32),
        "fires": acc_m["fires"] + jnp.sum((a > 0) & vm, axis=0).astype(jnp.int32),
        "hist": acc_m["hist"] + log_histogram(a, vr, edges),
    }
    a3 = a.reshape(B, T1, -1)
    value, row, position = batch_top_k(a3, valid, k)
    cand = {"value": value, "seq": row_ids[row], "pos": position + skip, "acts": rows_at(a3, row)}
    if "v" in batch:
        along = batch["v"] @ s.W_enc[:, lat]  # [B, T, J]: v[s] . w for each latent
        p_rows = batch["p"][row, position]  # [J, k, T]: the attention of each kept query
        cand["sources"] = source_contributions(p_rows, rows_at(along, row))
    out.update(merge_top_k({name: acc_m[name] for name in cand}, cand, k))
    return out


@functools.partial(jax.jit, donate_argnums=0, static_argnames=("k", "skip", "mesh"))
def _stats(acc, sae, latents, batch, valid, row_ids, *, k: int, skip: int, mesh: Mesh):
    """Merge one batch's SAE inputs into the running statistics of every SAE: a ``shard_map`` over the SAE
    axis, so each device (one per CPU core, :func:`jsae.runtime.use_cpu_cores`) encodes its own slice of
    the stack (XLA:CPU runs a stack's small matmuls and its ``top_k`` on one core)."""
    edges = jnp.asarray(HIST_EDGES, jnp.float32)

    def local(acc, sae, latents, batch, valid, row_ids):
        one = functools.partial(_stats_one, valid=valid, row_ids=row_ids, k=k, skip=skip, edges=edges)
        # one SAE at a time keeps its [B * T, d_sae] intermediates in cache (at 8,192 tokens of 270 heads,
        # 2-core EPYC: pass 31.7 s one at a time, 33.1-35.6 s in vmapped chunks of 32)
        return jax.lax.map(one, (sae, latents, batch, acc))

    by_sae, whole = P(AXIS), P()
    new = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(by_sae, by_sae, by_sae, by_sae, whole, whole),
        out_specs=by_sae,
        check_vma=False,
    )(acc, sae, latents, batch, valid, row_ids)
    return new, new["l0"] + 0.0  # (statistics, a small output not donated to the next batch: done when it is)


@jax.jit
def _fire_counts(sae, x, valid):
    """``[M, d_sae]`` tokens of ``x [M, R, d]`` on which each latent of each SAE fires (to choose latents)."""
    return jax.lax.map(lambda args: jnp.sum((args[0].encode(args[1]) > 0) & valid[:, None], axis=0), (sae, x))


def choose_latents(counts: np.ndarray, n: int, max_density: float = 0.2, n_tokens: int = 1) -> np.ndarray:
    """``[M, n]`` latents to show for each SAE from firing counts ``[M, d_sae]`` on a probe batch: the most
    frequent latents that fire on at most ``max_density`` of the tokens, then the denser ones, then those
    that did not fire (ties by index)."""
    counts = np.asarray(counts, np.float64)
    dense = counts > max_density * max(n_tokens, 1)
    score = np.where(counts == 0, -1.0, np.where(dense, counts / (10 * max(n_tokens, 1)), counts))
    order = np.argsort(-score, axis=1, kind="stable")
    return order[:, :n].astype(np.int32)


def _init_acc(M: int, J: int, k: int, T: int, d: int, nb: int, sources: bool, skip: int) -> dict:
    """The running statistics before the first batch (numpy: put on the devices without a compiled op);
    ``acts`` cover the ``T - skip`` positions from ``skip`` on, ``sources`` every source position."""
    f32, i32 = np.float32, np.int32
    per = {
        "err": np.zeros((M,), f32),
        "sum_x": np.zeros((M, d), f32),
        "sum_x2": np.zeros((M,), f32),
        "l0": np.zeros((M,), f32),
        "fires": np.zeros((M, J), i32),
        "hist": np.zeros((M, J, nb), i32),
        "value": np.full((M, J, k), -np.inf, f32),
        "seq": np.full((M, J, k), -1, i32),
        "pos": np.zeros((M, J, k), i32),
        "acts": np.zeros((M, J, k, T - skip), f32),
    }
    if sources:
        per["sources"] = np.zeros((M, J, k, T), f32)
    return per


@functools.partial(jax.jit, static_argnames=("kind", "n", "center", "sources"))
def _per_latent(
    model: Transformer, sae: SAE, latents, layers, heads, *, kind: str, n: int, center: bool, sources: bool
):
    """Direct logit effects ``[M, J, n]`` of every shown latent (one SAE at a time, so only ``[J, V]`` is live),
    and for per-head ``z`` SAEs the constant term of each latent's pre-activation ``[M, J]``."""
    W_U = model.unembed_matrix()

    def one(args):
        s, lat, layer, head = args
        rows = s.W_dec[lat]  # [J, d]
        point, h = ("z", head) if kind == "head" else ("z", None) if kind == "all_heads" else ("model", None)
        dirs = directions_in_model_space(rows, model.blocks.W_O[layer], point, h)
        effects = logit_effects(dirs, model.ln_f_w, W_U, n, center=center)
        constant = (
            pre_activation_constant(s.W_enc[:, lat], s.b_enc[lat], s.b_dec, s.apply_b_dec_to_input)
            if sources
            else jnp.zeros(lat.shape)
        )
        return effects, constant

    return jax.lax.map(one, (sae, latents, layers, heads))


def feature_data(
    model: Transformer,
    sae: SAE,
    inputs: Sequence[Mapping[str, Any] | Any],
    tokens: np.ndarray,
    lengths: np.ndarray | None = None,
    *,
    latents: int | Sequence[int] | np.ndarray = 32,
    k: int = 10,
    skip: int = 0,
    batch_size: int = 8,
    n_logits: int = 10,
    progress: bool = False,
) -> FeatureData:
    """Everything the feature page shows for ``M`` SAEs, from one streamed pass over ``tokens [S, T]``.

    Args:
      model: the jsae Transformer the SAEs read (the pass stops after the deepest layer they read).
      sae: a stack of ``M`` SAEs (leading axis; one SAE is a stack of one: ``jsae.sae.concat([sae])``).
      inputs: what each SAE reads, ``M`` dicts ``{"layer", "point", "head"}`` (``load_run``'s inputs) or
        ``HookInput``s. All per-head (``z``/``result`` with a head), all ``z`` of all heads, or all
        ``d_model`` points.
      tokens: ``[S, T]`` contexts (``lengths [S]`` real tokens each; default all ``T``).
      latents: how many latents to show per SAE (chosen per SAE from the first batch: the most frequent
        ones firing on at most a fifth of its tokens, :func:`choose_latents`), a list shown for every SAE, or
        an ``[M, J]`` array.
      k: top contexts kept per latent. skip: leading positions of each row left out (a prepended BOS).
      batch_size: contexts per forward. n_logits: promoted and suppressed tokens per latent.

    Per batch, two jitted programs: the forward of :func:`jsae.activations.capture_rows_and` (the stack's
    inputs, as the trainer captures them, plus the patterns and value vectors the source panel needs) on one
    device, then every SAE's encoder, decoder and the top-k merge as a ``shard_map`` over the SAE axis (one
    device per CPU core). The next batch's forward is dispatched while the statistics of this one run; the host
    only feeds token ids (through :func:`jsae.models.map_batches`), and nothing grows with the number of tokens.
    The source contributions are exact (``pattern x (v . w)`` from the same forward), not recomputed.
    """
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.size == 0:
        raise ValueError(f"tokens must be a non-empty [S, T] array, got shape {tokens.shape}")
    S, T = tokens.shape
    lengths = np.full(S, T, np.int32) if lengths is None else np.asarray(lengths, np.int32)
    if sae.W_enc.ndim != 3:
        raise ValueError("feature_data takes a stack of SAEs [M, ...]; wrap one SAE with jsae.sae.concat([sae])")
    M, d_sae = sae.W_enc.shape[0], sae.W_enc.shape[-1]
    ins = normalise_inputs(inputs, M)
    layout = dataclasses.replace(
        check_inputs(model, sae, ins), k=int(k), skip=int(skip), layers=tuple(sorted({i["layer"] for i in ins}))
    )
    if k < 1 or k > S * T:
        raise ValueError(f"k must be in 1..{S * T} (the tokens given), got {k}")
    if not 0 <= skip < T:
        raise ValueError(f"skip must be in 0..{T - 1}, got {skip}")
    layers = jnp.asarray([i["layer"] for i in ins], jnp.int32)
    heads = jnp.asarray([i["head"] or 0 for i in ins], jnp.int32)
    hook_inputs = _hook_inputs(ins)
    run_model = model_for(model, hook_inputs)
    row_ids = np.arange(S, dtype=np.int32)
    mesh = sae_mesh(jax.devices()[: max(1, min(len(jax.devices()), M))])
    n_pad = padded_size(M, mesh)
    read = functools.partial(_batch_inputs, inputs=hook_inputs, skip=skip, n_pad=n_pad)

    def counted(lens, ids) -> np.ndarray:
        """``[B, T']`` the positions a batch counts: real, not skipped, first copy of a row."""
        first = np.zeros(len(ids), bool)
        first[np.unique(ids, return_index=True)[1]] = True
        return (np.arange(skip, T)[None, :] < lens[:, None]) & first[:, None]

    state: dict[str, Any] = {}
    if isinstance(latents, (int, np.integer)):
        if not 1 <= latents <= d_sae:
            raise ValueError(f"latents must be a count in 1..{d_sae} (the SAEs' d_sae), got {latents}")
        first = slice(0, min(S, batch_size))  # a probe batch: which latents fire, and how often
        probe = read(run_model, tokens[first], sources=layout.sources)  # the pass's own program
        state["probe"] = (tokens[first], lengths[first], probe)  # the pass's first batch reuses this forward
        probe = probe["x"][:M]
        valid = counted(lengths[first], row_ids[first])
        counts = _fire_counts(sae, probe, jnp.asarray(valid.reshape(-1)))
        lat = choose_latents(np.asarray(counts), int(latents), n_tokens=int(valid.sum()))
    else:
        lat = np.asarray(latents, np.int64)
        lat = np.broadcast_to(lat.reshape(1, -1) if lat.ndim == 1 else lat, (M, lat.shape[-1]))
        if lat.size == 0 or lat.min() < 0 or lat.max() >= d_sae:
            bad = sorted({int(v) for v in lat.reshape(-1) if not 0 <= v < d_sae})
            raise ValueError(f"latent(s) {bad or 'none given'} do not exist: the SAEs have latents 0..{d_sae - 1}")
        lat = np.ascontiguousarray(lat, np.int32)
    J = lat.shape[1]

    sae_sharded, lat_sharded = shard_leading(pad_leading((sae, jnp.asarray(lat)), n_pad), mesh)
    acc = shard_leading(_init_acc(n_pad, J, k, T, sae.d_in, len(HIST_EDGES) - 1, layout.sources, skip), mesh)
    state.update(acc=acc, n=0, pending=[])
    by_sae = NamedSharding(mesh, P(AXIS))

    def step(m, tok, lens, ids):
        valid = counted(lens, ids)
        cached = state.pop("probe", None)
        if cached is not None and np.array_equal(cached[0], tok) and np.array_equal(cached[1], lens):
            inputs = cached[2]
        else:
            inputs = read(m, tok, sources=layout.sources)
        batch = jax.device_put(inputs, by_sae)  # the forward's rows, split by SAE
        state["acc"], done = _stats(
            state["acc"], sae_sharded, lat_sharded, batch, valid, ids, k=int(k), skip=int(skip), mesh=mesh
        )
        state["n"] += int(valid.sum())
        # at most two batches in flight: the next forward overlaps this batch's statistics, and memory stays
        # bounded (the host would otherwise queue every batch's activations at once)
        state["pending"].append(done)
        if len(state["pending"]) > 1:
            jax.block_until_ready(state["pending"].pop(0))
        return np.zeros(tok.shape[0], np.int8)  # map_batches wants a per-row output; the statistics stay here

    map_batches(
        step,
        run_model,
        tokens,
        lengths,
        row_ids,
        batch_size=batch_size,
        pad_multiple=T,
        progress=progress,
        desc="feature pass",
    )
    per = jax.tree.map(lambda a: np.asarray(a)[:M], jax.device_get(state["acc"]))
    n = state["n"]
    lat_j = jnp.asarray(lat)
    if skip:  # the rows' activations over every position (none at the skipped ones)
        per["acts"] = np.concatenate([np.zeros((*per["acts"].shape[:-1], skip), np.float32), per["acts"]], -1)

    sum_x = np.asarray(per["sum_x"], np.float64)
    total = np.asarray(per["sum_x2"], np.float64) - (sum_x**2).sum(-1) / max(n, 1)
    ev = 1.0 - np.asarray(per["err"], np.float64) / np.maximum(total, np.finfo(np.float64).tiny)

    (up, up_ids, down, down_ids), constant = jax.device_get(
        _per_latent(
            model,
            sae,
            lat_j,
            layers,
            heads,
            kind=layout.kind,
            n=n_logits,
            center=model.cfg.arch == "gpt2",
            sources=layout.sources,
        )
    )
    return FeatureData(
        inputs=ins,
        latents=lat,
        top_value=np.asarray(per["value"]),
        top_seq=np.asarray(per["seq"]),
        top_pos=np.asarray(per["pos"]),
        top_acts=np.asarray(per["acts"]),
        top_sources=np.asarray(per["sources"]) if layout.sources else None,
        source_constant=np.asarray(constant) if layout.sources else None,
        fires=np.asarray(per["fires"]),
        hist=np.asarray(per["hist"]),
        hist_edges=HIST_EDGES.copy(),
        n_tokens=n,
        explained_variance=ev,
        l0=np.asarray(per["l0"], np.float64) / max(n, 1),
        logit_up=np.asarray(up),
        logit_up_ids=np.asarray(up_ids),
        logit_down=np.asarray(down),
        logit_down_ids=np.asarray(down_ids),
    )
