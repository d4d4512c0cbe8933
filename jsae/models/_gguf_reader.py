"""Read GGUF files (llama.cpp format) with the ``gguf`` package: metadata and dequantised tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._errors import ModelFileError


def open_gguf(path: str | Path):
    """A ``gguf.GGUFReader`` for ``path``, with a clear error for missing or truncated files."""
    import gguf

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"GGUF file {p} does not exist; check the path")
    try:
        return gguf.GGUFReader(str(p))
    except Exception as e:  # truncated files fail inside numpy memmap / struct parsing
        raise ModelFileError(
            f"cannot read GGUF file {p} ({type(e).__name__}: {e}); it is truncated or not a GGUF file, re-download it"
        ) from e


def metadata(reader) -> dict[str, Any]:
    """All key/value metadata as Python values (strings, numbers, lists)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            out[key] = field.contents()
        except Exception:  # pragma: no cover - exotic field types
            continue
    return out


def tensors(reader) -> dict[str, np.ndarray]:
    """Dequantised float32 tensors in PyTorch/HF orientation (``[out, in]`` for matrices)."""
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        try:
            arr = dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise ModelFileError(
                f"tensor {t.name} uses quantisation {t.tensor_type.name}, which gguf cannot dequantise"
            ) from e
        shape = tuple(int(s) for s in reversed(t.shape))
        out[t.name] = np.asarray(arr, np.float32).reshape(shape)
    return out


def undo_rotary_permutation(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's ``permute`` of Q/K rows (``[n_heads*dh, D]``) to HF's rotate-half layout.

    llama.cpp stores each head's rows interleaved (pairs ``(i, i + dh/2)`` adjacent); HF keeps the two
    halves contiguous.
    """
    dh = w.shape[0] // n_heads
    return w.reshape(n_heads, dh // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
