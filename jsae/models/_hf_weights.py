"""Hugging Face checkpoints to jsae's layout, one converter per family (numpy only, no torch).

HF ``nn.Linear`` weights are ``[out, in]``; jsae's are ``[in, ...]`` with heads as an axis
(``W_Q [D, H, dh]``, ``W_O [H, dh, D]``). Family specifics:

- GPT-2: ``Conv1D`` weights are already ``[in, out]``; fused ``c_attn`` is ``[q | k | v]`` along columns.
- Llama, Mistral, Qwen2/3, OLMo-2, Gemma: separate q/k/v/o and gate/up/down projections.
- Phi-3: fused ``qkv_proj`` (rows ``[q | k | v]``) and ``gate_up_proj`` (rows ``[gate | up]``).
- GPT-NeoX: fused ``query_key_value`` whose rows are per head ``[q_h | k_h | v_h]`` (``[H, 3, dh]``).
- Multimodal Gemma 3: the text model's tensors under ``language_model.model.`` (or ``model.language_model.``).
- Gemma stores norm scales as ``w`` and applies ``1 + w``; jsae stores ``1 + w``.
- Qwen3 and Gemma 3 norm q and k per head (one ``[dh]`` scale, tiled over heads); OLMo-2 over the
  whole projection (``[H * dh]``, reshaped to ``[H, dh]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._build import make_transformer
from ._config import ModelConfig
from ._errors import ModelFileError
from ._hf_config import config_from_hf
from ._llama import layer_weights
from ._transformer import Transformer


class _Tensors:
    """Checkpoint tensors by name (a prefix removed); a missing one is a clear error."""

    def __init__(self, t: Mapping[str, np.ndarray], prefix: str, where: str):
        self.t = {k.removeprefix(prefix): v for k, v in t.items()}
        self.where = where

    def __call__(self, key: str) -> np.ndarray:
        if key not in self.t:
            raise ModelFileError(f"tensor {key!r} is missing from {self.where}; the checkpoint is incomplete")
        return self.t[key]

    def opt(self, key: str) -> np.ndarray | None:
        return self.t.get(key)

    def unembedding(self, key: str, cfg: ModelConfig) -> np.ndarray | None:
        """``W_U [D, V]`` from the untied output matrix ``key`` (``[V, D]``), or None when it is absent and
        the config ties the embeddings; absent and untied is a clear error."""
        w = self.opt(key)
        if w is None and not cfg.tied_embeddings:
            raise ModelFileError(f"tensor {key!r} is missing from {self.where} and the config says it is untied")
        return None if w is None else w.T


def from_hf(config: dict, tensors: Mapping[str, np.ndarray], name: str = "", dtype: Any = None) -> Transformer:
    """A model from an HF ``config.json`` dict and its tensors (``{name: [out, in] array}``); ``dtype``: the
    matrices' dtype (default float32; norms and biases are always float32)."""
    cfg = config_from_hf(config, name)
    return _convert(cfg, config, tensors, name, dtype)


def _convert(cfg: ModelConfig, config: dict, tensors: Mapping[str, np.ndarray], name: str, dtype: Any) -> Transformer:
    where = f"the safetensors of {name or 'the checkpoint'}"
    mt = config["model_type"]
    if mt == "gpt2":
        return _gpt2(cfg, _Tensors(tensors, "transformer.", where), dtype)
    if mt == "gpt_neox":
        return _gpt_neox(cfg, _Tensors(tensors, "gpt_neox.", where), dtype)
    if mt == "gemma3":  # multimodal: the text model's tensors, under either of transformers' prefixes
        return _llama_shaped(cfg, "gemma3_text", _Tensors(_gemma3_text(tensors), "", where), dtype)
    return _llama_shaped(cfg, mt, _Tensors(tensors, "model.", where), dtype)


def _gemma3_text(t: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    prefixes = ("language_model.model.", "model.language_model.")
    prefix = next((p for p in prefixes if any(k.startswith(p) for k in t)), prefixes[0])
    text = {k.removeprefix(prefix): v for k, v in t.items() if k.startswith(prefix)}
    for head in ("language_model.lm_head.weight", "lm_head.weight"):
        if head in t:
            text["lm_head.weight"] = t[head]
    return text


def _gpt2(cfg: ModelConfig, g: _Tensors, dtype: Any) -> Transformer:
    D, H, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    layers = []
    for i in range(cfg.n_layers):
        p = f"h.{i}."
        wq, wk, wv = np.split(g(p + "attn.c_attn.weight"), 3, axis=1)  # [D, 3D]
        bq, bk, bv = np.split(g(p + "attn.c_attn.bias"), 3)
        layers.append(
            dict(
                ln1_w=g(p + "ln_1.weight"),
                ln1_b=g(p + "ln_1.bias"),
                W_Q=wq.reshape(D, H, dh),
                W_K=wk.reshape(D, H, dh),
                W_V=wv.reshape(D, H, dh),
                b_Q=bq.reshape(H, dh),
                b_K=bk.reshape(H, dh),
                b_V=bv.reshape(H, dh),
                W_O=g(p + "attn.c_proj.weight").reshape(H, dh, D),
                b_O=g(p + "attn.c_proj.bias"),
                ln2_w=g(p + "ln_2.weight"),
                ln2_b=g(p + "ln_2.bias"),
                W_in=g(p + "mlp.c_fc.weight"),
                b_in=g(p + "mlp.c_fc.bias"),
                W_out=g(p + "mlp.c_proj.weight"),
                b_out=g(p + "mlp.c_proj.bias"),
            )
        )
    return make_transformer(
        cfg, g("wte.weight"), layers, g("ln_f.weight"), g("ln_f.bias"), pos_embed=g("wpe.weight"), dtype=dtype
    )


def _gpt_neox(cfg: ModelConfig, g: _Tensors, dtype: Any) -> Transformer:
    D, H, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    layers = []
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        qkv = g(p + "attention.query_key_value.weight").reshape(H, 3, dh, D)
        b = g.opt(p + "attention.query_key_value.bias")
        b = None if b is None else b.reshape(H, 3, dh)
        lay = dict(
            ln1_w=g(p + "input_layernorm.weight"),
            ln1_b=g(p + "input_layernorm.bias"),
            W_Q=qkv[:, 0].transpose(2, 0, 1),
            W_K=qkv[:, 1].transpose(2, 0, 1),
            W_V=qkv[:, 2].transpose(2, 0, 1),
            W_O=g(p + "attention.dense.weight").T.reshape(H, dh, D),
            b_O=g.opt(p + "attention.dense.bias"),
            ln2_w=g(p + "post_attention_layernorm.weight"),
            ln2_b=g(p + "post_attention_layernorm.bias"),
            W_in=g(p + "mlp.dense_h_to_4h.weight").T,
            b_in=g(p + "mlp.dense_h_to_4h.bias"),
            W_out=g(p + "mlp.dense_4h_to_h.weight").T,
            b_out=g(p + "mlp.dense_4h_to_h.bias"),
        )
        if b is not None:
            lay.update(b_Q=b[:, 0], b_K=b[:, 1], b_V=b[:, 2])
        layers.append(lay)
    return make_transformer(
        cfg,
        g("embed_in.weight"),
        layers,
        g("final_layer_norm.weight"),
        g("final_layer_norm.bias"),
        W_U=g.unembedding("embed_out.weight", cfg),
        dtype=dtype,
    )


def _llama_shaped(cfg: ModelConfig, mt: str, g: _Tensors, dtype: Any) -> Transformer:
    H, K, dh = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    gemma = mt.startswith("gemma")

    def norm(key: str) -> np.ndarray:  # in float32: 1 + w of a bf16 w is exact there, as in HF
        w = g(key).astype(np.float32)
        return w + 1.0 if gemma else w

    layers = []
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        a = p + "self_attn."
        if mt == "phi3":
            q, k, v = np.split(g(a + "qkv_proj.weight"), [H * dh, (H + K) * dh])
            gate, up = np.split(g(p + "mlp.gate_up_proj.weight"), 2)
        else:
            q, k, v = g(a + "q_proj.weight"), g(a + "k_proj.weight"), g(a + "v_proj.weight")
            gate, up = g(p + "mlp.gate_proj.weight"), g(p + "mlp.up_proj.weight")
        if mt == "olmo2":  # norms on the attention and MLP outputs, none on their inputs
            ln1 = ln2 = None
            post = dict(ln1_post_w=g(p + "post_attention_layernorm.weight"))
            post["ln2_post_w"] = g(p + "post_feedforward_layernorm.weight")
        elif mt in ("gemma2", "gemma3_text"):
            ln1, ln2 = norm(p + "input_layernorm.weight"), norm(p + "pre_feedforward_layernorm.weight")
            post = dict(ln1_post_w=norm(p + "post_attention_layernorm.weight"))
            post["ln2_post_w"] = norm(p + "post_feedforward_layernorm.weight")
        else:
            ln1, ln2, post = norm(p + "input_layernorm.weight"), norm(p + "post_attention_layernorm.weight"), {}
        o, down = g(a + "o_proj.weight"), g(p + "mlp.down_proj.weight")
        biases = [g.opt(a + f"{x}_proj.bias") for x in "qkvo"]
        lay = layer_weights(cfg, q, k, v, o, gate, up, down, ln1, ln2, *biases)
        lay.update(post)
        if cfg.qk_norm is not None:
            qn, kn = (norm(a + "q_norm.weight"), norm(a + "k_norm.weight"))
            lay["q_norm_w"] = np.broadcast_to(qn.reshape(-1, dh), (H, dh))
            lay["k_norm_w"] = np.broadcast_to(kn.reshape(-1, dh), (K, dh))
        layers.append(lay)
    return make_transformer(
        cfg,
        g("embed_tokens.weight"),
        layers,
        norm("norm.weight"),
        W_U=g.unembedding("lm_head.weight", cfg),
        dtype=dtype,
    )
