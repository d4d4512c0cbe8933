"""Llama-family loaders (SmolLM2, Llama 2/3, Mistral-style): HF safetensors directories and GGUF files.

RMSNorm, RoPE with the checkpoint's theta (rotate-half layout), grouped-query attention, SwiGLU, tied
or untied embeddings. GGUF files store Q/K rows permuted for llama.cpp's interleaved rotary layout;
:func:`~jsae.models.gguf_reader.undo_rotary_permutation` restores HF's layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .build import make_transformer
from .config import ModelConfig
from .errors import ModelFileError, UnsupportedArchitectureError
from .transformer import Transformer

HF_LLAMA_ARCHS = {"llama", "mistral"}
GGUF_LLAMA_ARCHS = {"llama"}


def _layer(
    cfg: ModelConfig, q, k, v, o, gate, up, down, ln1, ln2, bq=None, bk=None, bv=None, bo=None, bup=None, bdown=None
) -> dict:
    """jsae layout from HF-oriented matrices (``[out, in]``)."""
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
        raise ModelFileError(
            f"tensor {key!r} is missing from {where}; the checkpoint is incomplete or not a Llama model"
        )
    return t[key]


def config_from_hf(c: dict, name: str = "") -> ModelConfig:
    mt = c.get("model_type", "")
    if mt not in HF_LLAMA_ARCHS:
        raise UnsupportedArchitectureError(f"model_type {mt!r} is not a Llama-family architecture")
    scaling = c.get("rope_scaling") or (c.get("rope_parameters") or {})
    rtype = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rtype not in ("default", None):
        raise UnsupportedArchitectureError(f"RoPE scaling {rtype!r} is not supported; only default RoPE is implemented")
    H = c["num_attention_heads"]
    window = c.get("sliding_window") or 0  # HF: a key attends iff query - key < sliding_window
    types = c.get("layer_types") or ["sliding_attention" if window else "full_attention"] * c["num_hidden_layers"]
    if set(types) - {"sliding_attention", "full_attention"}:
        raise UnsupportedArchitectureError(f"layer_types {sorted(set(types))} are not supported")
    theta = c.get("rope_theta", (c.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    return ModelConfig(
        arch="llama",
        n_layers=c["num_hidden_layers"],
        d_model=c["hidden_size"],
        n_heads=H,
        n_kv_heads=c.get("num_key_value_heads") or H,
        d_head=c.get("head_dim") or c["hidden_size"] // H,
        d_mlp=c["intermediate_size"],
        vocab_size=c["vocab_size"],
        n_ctx=c.get("max_position_embeddings", 2048),
        norm_eps=c.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        name=name,
        attn_window=tuple(window if t == "sliding_attention" else 0 for t in types) if window else (),
    )


def from_hf(c: dict, t: dict[str, np.ndarray], name: str = "") -> Transformer:
    """A model from an HF Llama ``config.json`` dict and its safetensors tensors."""
    cfg = config_from_hf(c, name)
    t = {k.removeprefix("model."): v for k, v in t.items()}
    where = f"the safetensors of {name or 'the checkpoint'}"
    layers = []
    for i in range(cfg.n_layers):
        p = f"layers.{i}."

        def g(k: str, p: str = p) -> np.ndarray:
            return _get(t, p + k, where)

        def opt(k: str, p: str = p) -> np.ndarray | None:
            return t.get(p + k)

        layers.append(
            _layer(
                cfg,
                g("self_attn.q_proj.weight"),
                g("self_attn.k_proj.weight"),
                g("self_attn.v_proj.weight"),
                g("self_attn.o_proj.weight"),
                g("mlp.gate_proj.weight"),
                g("mlp.up_proj.weight"),
                g("mlp.down_proj.weight"),
                g("input_layernorm.weight"),
                g("post_attention_layernorm.weight"),
                opt("self_attn.q_proj.bias"),
                opt("self_attn.k_proj.bias"),
                opt("self_attn.v_proj.bias"),
                opt("self_attn.o_proj.bias"),
                opt("mlp.up_proj.bias"),
                opt("mlp.down_proj.bias"),
            )
        )
    embed = _get(t, "embed_tokens.weight", where)
    lm_head = t.get("lm_head.weight")
    if lm_head is None and not cfg.tied_embeddings:
        raise ModelFileError(f"lm_head.weight is missing from {where} and the config says embeddings are untied")
    return make_transformer(
        cfg, embed, layers, _get(t, "norm.weight", where), W_U=None if lm_head is None else lm_head.T
    )


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
    """A model from GGUF metadata and dequantised tensors (see :mod:`jsae.models.gguf_reader`)."""
    from .gguf_reader import undo_rotary_permutation

    cfg = config_from_gguf(meta, t, name)
    where = f"GGUF file {name}"
    layers = []
    for i in range(cfg.n_layers):

        def g(k: str, i: int = i) -> np.ndarray:
            return _get(t, f"blk.{i}.{k}", where)

        layers.append(
            _layer(
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
