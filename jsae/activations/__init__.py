"""Activations of a model's hook points for SAE training: which points a stack reads (``points``), one
forward pass that captures them (``capture``), a shuffle buffer on the device (``buffer``), and the
on-disk activation cache for sweeps (``cache``: zarr v3 via tensorstore, checksummed chunks, resumable
writes, shuffled streaming reads).
"""

from jsae.activations._buffer import buffer_bytes, drain, exchange, exchange_key
from jsae.activations._cache import (
    ActivationCache,
    CacheConfigError,
    CacheError,
    CacheWriter,
    CorruptChunkError,
    IncompleteCacheError,
    create,
    open_cache,
    open_writer,
)
from jsae.activations._capture import capture_rows, capture_rows_and, capture_rows_jit, model_for
from jsae.activations._points import TRAINABLE_POINTS, HookInput, input_width, last_layer, parse_inputs

__all__ = [
    "HookInput",
    "TRAINABLE_POINTS",
    "buffer_bytes",
    "capture_rows",
    "capture_rows_and",
    "capture_rows_jit",
    "drain",
    "exchange",
    "exchange_key",
    "input_width",
    "last_layer",
    "model_for",
    "parse_inputs",
    "ActivationCache",
    "CacheConfigError",
    "CacheError",
    "CacheWriter",
    "CorruptChunkError",
    "IncompleteCacheError",
    "create",
    "open_cache",
    "open_writer",
]
