"""Read HF-style checkpoint directories (``config.json`` + ``*.safetensors``) with numpy only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ModelFileError


def read_config(directory: str | Path) -> dict:
    """The parsed ``config.json`` of a checkpoint directory."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; a model directory needs config.json and model.safetensors")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path} is not valid JSON ({e}); re-download or re-save the checkpoint") from e


_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of one ``.safetensors`` file as float32 numpy arrays (bf16/f16 upcast).

    Parsed directly (8-byte header length, JSON header, raw little-endian data) so that bf16 works
    without torch and a truncated file gets a clear error.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path} is truncated (no header); re-download or re-save it")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise ModelFileError(
                f"{path} is truncated: its header says {n} bytes but the file has {size}; re-download it"
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelFileError(f"{path} is not a safetensors file (bad header: {e}); re-download it") from e
    data = np.memmap(path, dtype=np.uint8, mode="r")
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if base + end > size:
            raise ModelFileError(
                f"{path} is truncated: tensor {name!r} ends at byte {base + end} but the file has {size}; "
                "re-download it"
            )
        if info["dtype"] not in _DTYPES:
            raise ModelFileError(f"tensor {name!r} in {path} has unsupported dtype {info['dtype']}")
        raw = np.frombuffer(data[base + begin : base + end], dtype=_DTYPES[info["dtype"]])
        if info["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = raw.reshape(info["shape"]).astype(np.float32)
    return out


def read_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` (or sharded ``model-*.safetensors``) as float32 numpy arrays."""
    d = Path(directory)
    files = sorted(d.glob("model*.safetensors"))
    if not files:
        raise ModelFileError(
            f"no model.safetensors in {d}; save the model with save_pretrained(..., safe_serialization=True)"
        )
    out: dict[str, np.ndarray] = {}
    for f in files:
        out.update(read_safetensors(f))
    return out
