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
    and Llama exactly as they are): Gemma 1/2 (GeGLU, embeddings scaled by sqrt(d_model), query scale,
    tanh soft-caps, sliding-window layers, post-attention/-MLP norms) and GPT-NeoX (parallel attention
    and MLP, rotary on a prefix of each head, exact GELU).
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
        if "attn_window" in kw:
            kw["attn_window"] = tuple(kw["attn_window"])  # JSON gives a list; the config must stay hashable
        return cls(**kw)
