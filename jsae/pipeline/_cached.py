"""Sweeps: one model pass writes an activation cache, then any number of stacks train from it.

``write_cache`` runs the model over batches of contexts and writes each batch's rows as one chunk of a
:mod:`jsae.activations._cache` (resumable: chunks already on disk are skipped without a forward).
``cache_source`` is the cache as a source of the one engine, ``jsae.train.train``; ``train_from_cache`` is
that source plus ``train``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from tqdm.auto import tqdm

from jsae.activations import ActivationCache, HookInput, capture_rows_jit, create, input_width, model_for
from jsae.models import Transformer
from jsae.sae import SAE
from jsae.train import IteratorSource, LossFn, TrainConfig, TrainResult, train

from ._contexts import ContextBatches


def write_cache(
    model: Transformer,
    contexts: ContextBatches,
    inputs: tuple[HookInput, ...],
    path,
    *,
    tokens: int,
    dtype: str = "bfloat16",
    config: dict | None = None,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> ActivationCache:
    """Capture ``inputs`` on ``tokens`` text tokens (rounded up to whole batches of contexts) into a cache at
    ``path``: chunk ``i`` holds batch ``i``'s ``[N, batch_contexts * context_size, d]`` rows.

    ``config`` (model name, text source, ...) is stored with the cache together with the inputs and the
    contexts' description; a folder holding an incomplete cache of the same config is resumed.
    """
    rows = contexts.batch_contexts * contexts.context_size
    n_chunks = -(-tokens // rows)
    cfg = {**(config or {}), "inputs": [i.to_json() for i in inputs], "contexts": contexts.describe()}
    writer = create(
        path,
        n_rows=len(inputs),
        d=input_width(model.cfg, inputs[0].point),
        chunk_tokens=rows,
        n_chunks=n_chunks,
        dtype=dtype,
        config=cfg,
    )
    done = set(writer.done_chunks())
    run_model = model_for(model, inputs)
    reader = contexts.iterator()
    with tqdm(
        total=n_chunks * rows,
        initial=len(done) * rows,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc=f"cache {len(inputs)} inputs",
    ) as bar:
        for i in range(n_chunks):
            try:
                batch = next(reader)
            except StopIteration:
                raise ValueError(
                    f"the text ran out after {i} batches of contexts ({i * rows} tokens) but the cache "
                    f"needs {n_chunks}; give more text or fewer --tokens"
                ) from None
            if i in done:
                continue
            rows_i = capture_rows_jit(run_model, jnp.asarray(batch, jnp.int32), inputs, contexts.bos_positions)
            writer.write_chunk(i, rows_i.astype(jnp.bfloat16) if dtype == "bfloat16" else rows_i)  # cast on the device
            bar.update(rows)
            if on_chunk is not None:
                on_chunk(i)
    return writer.finish()


def cached_inputs(cache: ActivationCache) -> tuple[HookInput, ...]:
    """What each row of a cache written by :func:`write_cache` holds."""
    return tuple(HookInput(**i) for i in cache.config.get("inputs", []))


def cache_source(cache: ActivationCache, batch_size: int, *, seed: int = 0, rows=None) -> IteratorSource:
    """A cache as a :class:`jsae.train.Source`: batches shuffled across chunks (``seed`` decides the order),
    in the on-disk dtype (bf16 stays bf16 to the device, where the step widens it); a resumed run starts
    reading at its step. ``rows`` picks some of the cache's inputs (default all; SAE i reads row
    ``rows[i]``). The first rows (for scales and a data-dependent init) are chunk 0's."""
    sample = cache.read_chunk(0, rows=rows)[:, :8192]
    batches = functools.partial(cache.batches, batch_size, seed=seed, rows=rows, out_dtype=cache.dtype)
    return IteratorSource(batches, sample=sample)


def train_from_cache(
    cache: ActivationCache,
    sae: SAE | Callable[[jax.Array], SAE],
    cfg: TrainConfig,
    *,
    rows=None,
    checkpoint_dir: str | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    optimizer: optax.GradientTransformation | None = None,
    optimizer_hp: dict[str, Any] | None = None,
    loss_fn: LossFn | None = None,
    compute_dtype: str | None = None,
) -> TrainResult:
    """Train a stack on a cache's batches, shuffled across chunks (``cfg.seed`` decides the order):
    ``train(sae, cache_source(cache, cfg.batch_size, seed=cfg.seed, rows=rows), cfg, ...)``.

    ``rows`` picks some of the cache's inputs (default all; SAE i reads row ``rows[i]``). With
    ``cfg.normalise_activations`` the scale of each input comes from the cache's first chunk and is
    folded back into the returned SAEs, as for every source. ``sae`` may be
    ``init(sample [N, n, d]) -> stack`` for a data-dependent initialisation. The other arguments are
    those of ``jsae.train.train``.
    """
    return train(
        sae,
        cache_source(cache, cfg.batch_size, seed=cfg.seed, rows=rows),
        cfg,
        checkpoint_dir=checkpoint_dir,
        mesh=mesh,
        progress=progress,
        optimizer=optimizer,
        optimizer_hp=optimizer_hp,
        loss_fn=loss_fn,
        compute_dtype=compute_dtype,
    )
