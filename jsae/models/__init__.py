"""Language models with hookable per-head outputs (SmolLM2-135M offline default).

HF checkpoints of GPT-2, Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, Qwen3, Gemma 1/2/3 (text), GPT-NeoX/Pythia,
Phi-3 and OLMo-2 load from a directory or a hub id; :func:`config_from_hf` reads ``config.json`` alone.

>>> model, tok, meta = load("smollm2-135m")
>>> batch = tok.encode_batch(["When Mary and John went to the store,", "John gave a drink to"])  # -1 padded
>>> logits, cache = forward(model, batch, hooks=capture("result"))   # cache["result"]: [L, B, T, H, D]
>>> pz_model = to_penzai(model)          # the same model as penzai layers, with HookPoint layers
>>> model2 = from_penzai(pz_model)       # penzai llamalike / Gemma / GPT-NeoX models -> jsae

Two modules are namespaces of their own: :mod:`jsae.models.hooks` (hook points and edits, also exported
here) and :mod:`jsae.models.flax` (per-head outputs of flax models; needs the ``flax`` extra).
"""

from . import hooks
from ._batched import map_batches, split_tokens
from ._config import ModelConfig
from ._errors import (
    HookError,
    ModelError,
    ModelFileError,
    SequenceTooLongError,
    TokenOutOfRangeError,
    UnknownModelError,
    UnsupportedArchitectureError,
)
from ._harvest import harvest, head_means
from ._hf_config import config_from_hf
from ._llama import read_gguf_config
from ._penzai import (
    HookPoint,
    ReplaceHeads,
    add_hook_points,
    from_penzai,
    from_penzai_edited,
    penzai_logits,
    to_penzai,
)
from ._penzai import head_mask as penzai_head_mask
from ._registry import available, cache_dir, load, load_gguf, load_hf_dir, smollm2_gguf_path
from ._sharding import load_sharded, shard_model
from ._tokenizer import PAD, TokenBatch, Tokenizer, pad_sequences
from ._transformer import Blocks, Transformer, forward, layer_range, unembed, value_vectors
from .hooks import (
    POINTS,
    Add,
    Apply,
    Edit,
    HookSpec,
    Replace,
    add,
    capture,
    edit,
    head_mask,
    mean_ablate,
    patch,
    zero_ablate,
)

__all__ = [
    "Add",
    "Apply",
    "Blocks",
    "Edit",
    "HookError",
    "HookPoint",
    "HookSpec",
    "ModelConfig",
    "ModelError",
    "ModelFileError",
    "POINTS",
    "Replace",
    "ReplaceHeads",
    "SequenceTooLongError",
    "PAD",
    "TokenBatch",
    "TokenOutOfRangeError",
    "Tokenizer",
    "Transformer",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "add",
    "add_hook_points",
    "available",
    "cache_dir",
    "capture",
    "config_from_hf",
    "edit",
    "flax",  # pyright: ignore[reportUnsupportedDunderAll]  # a module, imported on use: it needs the flax extra
    "forward",
    "from_penzai",
    "from_penzai_edited",
    "harvest",
    "head_mask",
    "head_means",
    "hooks",
    "layer_range",
    "load",
    "load_gguf",
    "load_hf_dir",
    "map_batches",
    "mean_ablate",
    "pad_sequences",
    "patch",
    "penzai_logits",
    "read_gguf_config",
    "load_sharded",
    "shard_model",
    "smollm2_gguf_path",
    "split_tokens",
    "to_penzai",
    "penzai_head_mask",
    "unembed",
    "value_vectors",
    "zero_ablate",
]
