"""Static description of a decoder-only transformer (GPT-2 or Llama family)."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters shared by every architecture jsae implements.

    ``arch`` selects the block: ``"gpt2"`` (LayerNorm with bias, learned positions, GELU-tanh MLP,
    biased projections) or ``"llama"`` (RMSNorm, RoPE, SwiGLU, grouped-query attention).

    The optional fields below describe other families in the same two blocks (their defaults keep GPT-2
    and Llama exactly as they are): Gemma 1/2/3 (GeGLU, embeddings scaled by sqrt(d_model), query scale,
    tanh soft-caps, sliding-window layers, post-attention/-MLP norms, per-head q/k norms, a separate RoPE
    base on local layers), GPT-NeoX and Phi-3 (parallel attention and MLP, rotary on a prefix of each
    head, exact GELU), Llama 3.1 (``rope_type`` llama3), Qwen3 and OLMo-2 (q/k norms). OLMo-2 norms the
    attention and MLP outputs instead of their inputs: its blocks have no ``ln1_w``/``ln2_w``, only the
    post norms (the forward reads the placement from which weights are present).

    RoPE: ``rope_type`` ``"default"`` (no ``rope_scaling``), ``"linear"`` (``rope_scaling = (factor,)``:
    frequencies divided by ``factor``) or ``"llama3"`` (``rope_scaling = (factor, low_freq_factor,
    high_freq_factor, original_max_position_embeddings)``), as in HF's ``modeling_rope_utils``. With
    ``rope_local_theta`` set, sliding-window layers use plain RoPE of that base and the global layers use
    ``rope_theta`` with the scaling (Gemma 3); otherwise every layer uses ``rope_theta`` with the scaling.
    """

    arch: Literal["gpt2", "llama"]
    n_layers: int
    d_model: int
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads (== n_heads without GQA)
    d_head: int
    d_mlp: int
    vocab_size: int
    n_ctx: int
    norm_eps: float
    rope_theta: float = 10000.0
    tied_embeddings: bool = True
    name: str = ""
    mlp_act: Literal["silu", "gelu_tanh", "gelu", "relu"] | None = None  # None: silu (llama), gelu_tanh (gpt2)
    embed_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(d_model))
    query_scale: float | None = None  # attention score scale; None: 1 / sqrt(d_head)
    attn_softcap: float | None = None  # scores <- c * tanh(scores / c) before masking
    final_softcap: float | None = None  # logits <- c * tanh(logits / c)
    attn_window: tuple[int, ...] = ()  # per-layer sliding windows, cycled over layers; 0 = global
    post_norms: bool = False  # extra RMSNorm on the attention and MLP outputs (Gemma 2)
    parallel_block: bool = False  # x + attn(norm1(x)) + mlp(norm2(x)) (GPT-NeoX)
    rotary_dim: int | None = None  # RoPE on the first rotary_dim dims of each head; None: all
    rope_type: Literal["default", "linear", "llama3"] = "default"
    rope_scaling: tuple[float, ...] = ()  # parameters of rope_type (see the class docstring)
    rope_local_theta: float | None = None  # RoPE base of sliding-window layers (Gemma 3); None: rope_theta
    qk_norm: Literal["head", "all"] | None = None  # RMSNorm of q and k over each head (Qwen3, Gemma 3) or all

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        for key in ("attn_window", "rope_scaling"):
            if key in kw:
                kw[key] = tuple(kw[key])  # JSON gives a list; the config must stay hashable
        return cls(**kw)
