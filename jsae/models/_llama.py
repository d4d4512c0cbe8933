"""Llama-architecture GGUF files (SmolLM2); HF checkpoints are read by :mod:`jsae.models._hf_weights`.

RMSNorm, RoPE with the checkpoint's theta (rotate-half layout), grouped-query attention, SwiGLU, tied
or untied embeddings. GGUF files store Q/K rows permuted for llama.cpp's interleaved rotary layout;
:func:`~jsae.models._gguf_reader.undo_rotary_permutation` restores HF's layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._build import make_transformer
from ._config import ModelConfig
from ._errors import ModelFileError, UnsupportedArchitectureError
from ._transformer import Transformer

GGUF_LLAMA_ARCHS = {"llama"}


def layer_weights(
    cfg: ModelConfig, q, k, v, o, gate, up, down, ln1, ln2, bq=None, bk=None, bv=None, bo=None, bup=None, bdown=None
) -> dict:
    """One layer in jsae's layout from HF-oriented matrices (``[out, in]``); a None norm is absent."""
    D, H, K, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    lay = dict(
        ln1_w=ln1,
        ln2_w=ln2,
        W_Q=q.T.reshape(D, H, dh),
        W_K=k.T.reshape(D, K, dh),
        W_V=v.T.reshape(D, K, dh),
        W_O=o.T.reshape(H, dh, D),
        W_gate=gate.T,
        W_in=up.T,
        W_out=down.T,
    )
    if bq is not None:
        if bk is None or bv is None:
            raise ModelFileError("the checkpoint has a query bias but no key/value bias; jsae needs all three or none")
        lay.update(b_Q=bq.reshape(H, dh), b_K=bk.reshape(K, dh), b_V=bv.reshape(K, dh))
    if bo is not None:
        lay["b_O"] = bo
    if bup is not None:
        lay.update(b_in=bup, b_out=bdown)
    return lay


def _get(t: dict, key: str, where: str) -> np.ndarray:
    if key not in t:
        raise ModelFileError(f"tensor {key!r} is missing from {where}; the checkpoint is incomplete")
    return t[key]


def read_gguf_config(path: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` of a Llama-architecture GGUF file, from its header and tensor names (no
    tensor data is read)."""
    from ._gguf_reader import metadata, open_gguf

    reader = open_gguf(path)
    names: dict = {t.name: None for t in reader.tensors}  # tied or not: the names say
    return config_from_gguf(metadata(reader), names, name=Path(path).stem)


def config_from_gguf(meta: dict, t: dict | None = None, name: str = "") -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in GGUF_LLAMA_ARCHS:
        raise UnsupportedArchitectureError(
            f"GGUF architecture {arch!r} is not supported; jsae loads GGUF files of architecture 'llama' "
            "(convert other models from HF safetensors instead)"
        )

    def a(k: str, d: Any = None) -> Any:
        return meta.get(f"llama.{k}", d)

    H = int(a("attention.head_count"))
    D = int(a("embedding_length"))
    vocab = a("vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))
    return ModelConfig(
        arch="llama",
        n_layers=int(a("block_count")),
        d_model=D,
        n_heads=H,
        n_kv_heads=int(a("attention.head_count_kv", H)),
        d_head=int(a("attention.key_length", D // H)),
        d_mlp=int(a("feed_forward_length")),
        vocab_size=int(vocab),
        n_ctx=int(a("context_length", 2048)),
        norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(a("rope.freq_base", 10000.0)),
        tied_embeddings=t is None or "output.weight" not in t,
        name=name,
    )


def from_gguf(meta: dict, t: dict[str, np.ndarray], name: str = "") -> Transformer:
    """A model from GGUF metadata and dequantised tensors (see :mod:`jsae.models._gguf_reader`)."""
    from ._gguf_reader import undo_rotary_permutation

    cfg = config_from_gguf(meta, t, name)
    where = f"GGUF file {name}"
    layers = []
    for i in range(cfg.n_layers):

        def g(k: str, i: int = i) -> np.ndarray:
            return _get(t, f"blk.{i}.{k}", where)

        layers.append(
            layer_weights(
                cfg,
                undo_rotary_permutation(g("attn_q.weight"), cfg.n_heads),
                undo_rotary_permutation(g("attn_k.weight"), cfg.n_kv_heads),
                g("attn_v.weight"),
                g("attn_output.weight"),
                g("ffn_gate.weight"),
                g("ffn_up.weight"),
                g("ffn_down.weight"),
                g("attn_norm.weight"),
                g("ffn_norm.weight"),
            )
        )
    out = t.get("output.weight")
    return make_transformer(
        cfg,
        _get(t, "token_embd.weight", where),
        layers,
        _get(t, "output_norm.weight", where),
        W_U=None if out is None else out.T,
    )
