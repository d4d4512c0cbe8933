"""Sweeps: one model pass writes an activation cache, then any number of stacks train from it.

``write_cache`` runs the model over batches of contexts and writes each batch's rows as one chunk of a
:mod:`jsae.activations.cache` (resumable: chunks already on disk are skipped without a forward).
``train_from_cache`` trains a stack on the cache's shuffled batches with the ordinary trainer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jsae.activations.cache import ActivationCache, create
from jsae.activations.capture import capture_rows_jit, model_for
from jsae.activations.points import HookInput, input_width
from jsae.models.transformer import Transformer
from jsae.sae.base import SAE, normalisation_scale
from jsae.train.config import TrainConfig
from jsae.train.loop import TrainResult, train

from .contexts import ContextBatches


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


def train_from_cache(
    cache: ActivationCache,
    sae: SAE | Callable[[jax.Array], SAE],
    cfg: TrainConfig,
    *,
    rows=None,
    checkpoint_dir: str | None = None,
    progress: bool = True,
    **train_kwargs,
) -> TrainResult:
    """Train a stack on a cache's batches, shuffled across chunks (``cfg.seed`` decides the order).

    ``rows`` picks some of the cache's inputs (default all; SAE i reads row ``rows[i]``). With
    ``cfg.normalise_activations`` the scale of each input comes from the cache's first chunk and is
    folded back into the returned SAEs, as ``train`` does for arrays. ``sae`` may be
    ``init(sample [N, n, d]) -> stack`` for a data-dependent initialisation.
    """
    sample = cache.read_chunk(0, rows=rows)[:, :8192]
    if not isinstance(sae, SAE):
        sae = sae(jnp.asarray(sample))
    scales = (
        np.asarray(jax.vmap(normalisation_scale)(jnp.asarray(sample)))
        if cfg.normalise_activations
        else np.ones(sample.shape[0], np.float32)
    )
    # batches in the on-disk dtype (bf16 stays bf16 to the device); the step applies the scales
    batches = functools.partial(cache.batches, cfg.batch_size, seed=cfg.seed, rows=rows, out_dtype=cache.dtype)
    import dataclasses

    result = train(
        sae,
        batches,
        dataclasses.replace(cfg, normalise_activations=False),
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        input_scale=scales,
        **train_kwargs,
    )
    if cfg.normalise_activations:
        folded = eqx.filter_vmap(lambda s, c: s.fold_scale(c))(result.sae, jnp.asarray(scales))
        result = dataclasses.replace(result, sae=folded)
    return result
