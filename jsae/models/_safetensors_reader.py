"""Read HF-style checkpoint directories (``config.json`` + ``*.safetensors``) with numpy only."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

from ._errors import ModelFileError


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


def read_header(path: str | Path) -> tuple[dict, int]:
    """``(header, data_start)`` of a ``.safetensors`` file, checking that the file is exactly as long as
    its header says (a truncated or padded file is a clear error, raised before any tensor is read)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; re-download the checkpoint or re-save it with save_pretrained")
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
    header.pop("__metadata__", None)
    end = max((info["data_offsets"][1] for info in header.values()), default=0)
    if 8 + n + end != size:
        raise ModelFileError(
            f"{path} is {'truncated' if 8 + n + end > size else 'longer than its header says'}: its tensors end at "
            f"byte {8 + n + end} but the file has {size} bytes; re-download it"
        )
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ModelFileError(f"tensor {name!r} in {path} has unsupported dtype {info['dtype']}")
    return header, 8 + n


def read_safetensors(
    path: str | Path, header: tuple[dict, int] | None = None, keep_bf16: bool = False
) -> dict[str, np.ndarray]:
    """Tensors of one ``.safetensors`` file as float32 numpy arrays (bf16/f16 upcast); with ``keep_bf16``,
    bf16 tensors stay bf16 (``ml_dtypes.bfloat16`` views of the memory-mapped file, nothing copied).

    Parsed directly (8-byte header length, JSON header, raw little-endian data) so that bf16 works
    without torch and a truncated file gets a clear error.
    """
    header_, base = header or read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header_.items():
        begin, end = info["data_offsets"]
        raw = np.frombuffer(data[base + begin : base + end], dtype=_DTYPES[info["dtype"]])
        if info["dtype"] == "BF16" and keep_bf16:
            out[name] = raw.view(ml_dtypes.bfloat16).reshape(info["shape"])
            continue
        if info["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = raw.reshape(info["shape"]).astype(np.float32)
    return out


INDEX = "model.safetensors.index.json"


def checkpoint_files(directory: str | Path) -> tuple[list[Path], dict[str, str]]:
    """The safetensors files of a checkpoint and, when sharded, its index's ``{tensor: file}`` map."""
    d = Path(directory)
    index = d / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise ModelFileError(f"{index} is not a valid index (no weight_map: {e}); re-download it") from e
        files = [d / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelFileError(
                f"shard(s) {', '.join(missing)} listed in {index} are missing from {d}; download every shard"
            )
        return files, weight_map
    files = sorted(d.glob("model*.safetensors"))
    if not files:
        raise ModelFileError(
            f"no model.safetensors in {d}; save the model with save_pretrained(..., safe_serialization=True)"
        )
    return files, {}


def verify_blob_checksum(path: Path) -> None:
    """In a Hugging Face cache a weight file links to ``blobs/<sha256>``: check its content against that."""
    real = path.resolve()
    digest = real.name
    if real == path.absolute() or len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        return  # no checksum given
    import hashlib

    h = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    if h.hexdigest() != digest:
        raise ModelFileError(
            f"{path} fails its checksum: the cache names it sha256 {digest[:12]}... but its content hashes to "
            f"{h.hexdigest()[:12]}...; delete it from the HF cache and download it again"
        )


def read_tensors(directory: str | Path, keep_bf16: bool = False) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` or of the shards named by ``model.safetensors.index.json``
    (float32 numpy). Every shard's presence, size, checksum (where the HF cache gives one) and the index's
    tensors are checked before any tensor is read."""
    files, weight_map = checkpoint_files(directory)
    headers = {f.name: read_header(f) for f in files}
    for tensor, fname in weight_map.items():
        if tensor not in headers[fname][0]:
            raise ModelFileError(
                f"tensor {tensor!r} is listed in {INDEX} under {fname} but {fname} does not contain it; "
                "the shard is from another checkpoint or incomplete: re-download it"
            )
    for f in files:
        verify_blob_checksum(f)
    out: dict[str, np.ndarray] = {}
    for f in files:
        out.update(read_safetensors(f, headers[f.name], keep_bf16))
    return out
