"""GPT-2 (small/medium/large/xl) from HF ``model.safetensors`` (numpy, no torch).

Learned absolute positions, LayerNorm with bias (eps 1e-5), biased projections, GELU (tanh form), tied
unembedding. HF's GPT-2 uses ``Conv1D`` layers, whose weights are already ``[in, out]``.
"""

from __future__ import annotations

import numpy as np

from .build import make_transformer
from .config import ModelConfig
from .errors import ModelFileError, UnsupportedArchitectureError
from .transformer import Transformer


def config_from_hf(c: dict, name: str = "") -> ModelConfig:
    if c.get("model_type") != "gpt2":
        raise UnsupportedArchitectureError(f"model_type {c.get('model_type')!r} is not 'gpt2'")
    act = c.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UnsupportedArchitectureError(f"GPT-2 activation {act!r} is not supported (only the tanh GELU)")
    D, H = c["n_embd"], c["n_head"]
    return ModelConfig(
        arch="gpt2",
        n_layers=c["n_layer"],
        d_model=D,
        n_heads=H,
        n_kv_heads=H,
        d_head=D // H,
        d_mlp=c.get("n_inner") or 4 * D,
        vocab_size=c["vocab_size"],
        n_ctx=c["n_positions"],
        norm_eps=c.get("layer_norm_epsilon", 1e-5),
        tied_embeddings=True,
        name=name,
    )


def from_hf(c: dict, t: dict[str, np.ndarray], name: str = "") -> Transformer:
    """A model from an HF GPT-2 ``config.json`` dict and its safetensors tensors."""
    cfg = config_from_hf(c, name)
    t = {k.removeprefix("transformer."): v for k, v in t.items()}
    D, H, dh = cfg.d_model, cfg.n_heads, cfg.d_head

    def g(k):
        if k not in t:
            raise ModelFileError(f"tensor {k!r} is missing from the safetensors of {name or 'the checkpoint'}")
        return t[k]

    layers = []
    for i in range(cfg.n_layers):
        p = f"h.{i}."
        w_qkv, b_qkv = g(p + "attn.c_attn.weight"), g(p + "attn.c_attn.bias")  # [D, 3D], [3D]
        wq, wk, wv = np.split(w_qkv, 3, axis=1)
        bq, bk, bv = np.split(b_qkv, 3)
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
    return make_transformer(cfg, g("wte.weight"), layers, g("ln_f.weight"), g("ln_f.bias"), pos_embed=g("wpe.weight"))
