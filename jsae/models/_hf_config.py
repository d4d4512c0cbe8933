"""``config_from_hf``: a :class:`ModelConfig` from a Hugging Face ``config.json`` dict, one reader per family.

Works from ``config.json`` alone (no weights), so memory planning can call it too. Every field that changes
the numbers of a family's forward is either read or, when it has a value jsae does not implement,
refused with :class:`UnsupportedArchitectureError`: a field silently ignored would be a wrong logit.
:data:`READ` and :data:`REFUSED` list them per ``model_type``. Both the transformers 4 layout
(``rope_theta``, ``rope_scaling``, ``rotary_pct``, ``rope_local_base_freq``) and the transformers 5
layout (``rope_parameters``, ``layer_types``) are read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ._config import ModelConfig
from ._errors import ModelFileError, UnsupportedArchitectureError

_ACTS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
_COMMON = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
    "tie_word_embeddings",
    "rope_theta / rope_parameters",
)
_ROPE = ("rope_scaling (default, linear, llama3)",)
_WINDOWS = ("sliding_window", "layer_types")
_QWEN_WINDOWS = ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types")

READ: dict[str, tuple[str, ...]] = {
    "gpt2": ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
             "layer_norm_epsilon"),
    "llama": (*_COMMON, *_ROPE, "hidden_act", "rms_norm_eps", "attention_bias"),
    "mistral": (*_COMMON, *_ROPE, "hidden_act", "rms_norm_eps", "sliding_window"),
    "qwen2": (*_COMMON, *_ROPE, "hidden_act", "rms_norm_eps", *_QWEN_WINDOWS),
    "qwen3": (*_COMMON, *_ROPE, "hidden_act", "rms_norm_eps", "attention_bias", *_QWEN_WINDOWS),
    "gemma": (*_COMMON, *_ROPE, "hidden_act", "rms_norm_eps", "attention_bias"),
    "gemma2": (*_COMMON, *_ROPE, "hidden_activation", "rms_norm_eps", "attention_bias", "query_pre_attn_scalar",
               "attn_logit_softcapping", "final_logit_softcapping", *_WINDOWS),
    "gemma3_text": (*_COMMON, *_ROPE, "hidden_activation", "rms_norm_eps", "attention_bias", "query_pre_attn_scalar",
                    "attn_logit_softcapping", "final_logit_softcapping", "sliding_window_pattern",
                    "rope_local_base_freq", *_WINDOWS),
    "gpt_neox": (*_COMMON[:4], *_COMMON[6:], *_ROPE, "hidden_act", "layer_norm_eps", "attention_bias",
                 "use_parallel_residual", "rotary_pct / partial_rotary_factor", "rotary_emb_base"),
    "phi3": (*_COMMON, *_ROPE, "hidden_act", "rms_norm_eps", "partial_rotary_factor", "sliding_window"),
    "olmo2": (*_COMMON, *_ROPE, "hidden_act", "rms_norm_eps", "attention_bias"),
    "gemma3": ("text_config (as gemma3_text; the vision tower is not loaded)",),
}  # fmt: skip

# field -> the values jsae implements; any other value is refused. Besides these, every family refuses a RoPE
# type other than default/linear/llama3, an activation it has no implementation of, unknown layer_types,
# and a partial rotary factor where transformers does not apply one.
REFUSED: dict[str, dict[str, tuple[Any, ...]]] = {
    "gpt2": {
        "scale_attn_weights": (None, True),
        "scale_attn_by_inverse_layer_idx": (None, False),
        "add_cross_attention": (None, False),
    },
    "llama": {"mlp_bias": (None, False)},
    "mistral": {},
    "qwen2": {},
    "qwen3": {},
    "gemma": {},
    "gemma2": {},
    "gemma3_text": {"use_bidirectional_attention": (None, False)},
    "gpt_neox": {},
    "phi3": {},
    "olmo2": {"clip_qkv": (None,)},
    "gemma3": {},
}
SUPPORTED = tuple(READ)

# transformers' defaults for the fields above that config.json may leave out (its configuration_*.py)
_LLAMA_DEFAULTS = dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False)
_GEMMA_DEFAULTS = dict(head_dim=256, rms_norm_eps=1e-6, tie_word_embeddings=True, query_pre_attn_scalar=256)
_QWEN_DEFAULTS = dict(_LLAMA_DEFAULTS, use_sliding_window=False, sliding_window=4096, max_window_layers=28)
DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": dict(activation_function="gelu_new", layer_norm_epsilon=1e-5),
    "llama": _LLAMA_DEFAULTS,
    "mistral": dict(_LLAMA_DEFAULTS, num_key_value_heads=8, sliding_window=4096),
    "qwen2": _QWEN_DEFAULTS,
    "qwen3": dict(_QWEN_DEFAULTS, head_dim=128),
    "gemma": dict(_GEMMA_DEFAULTS, hidden_act="gelu_pytorch_tanh"),
    "gemma2": dict(_GEMMA_DEFAULTS, hidden_activation="gelu_pytorch_tanh", num_key_value_heads=4,
                   sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    "gemma3_text": dict(_GEMMA_DEFAULTS, hidden_activation="gelu_pytorch_tanh", num_key_value_heads=4,
                        sliding_window=4096, vocab_size=262208, hidden_size=2304, intermediate_size=9216,
                        num_hidden_layers=26, num_attention_heads=8, max_position_embeddings=131072),
    "gemma3": {},
    "gpt_neox": dict(hidden_act="gelu", layer_norm_eps=1e-5, use_parallel_residual=True, tie_word_embeddings=False),
    "phi3": dict(_LLAMA_DEFAULTS, rms_norm_eps=1e-5),
    "olmo2": dict(_LLAMA_DEFAULTS, rms_norm_eps=1e-5),
}  # fmt: skip


def config_from_hf(config: dict, name: str = "") -> ModelConfig:
    """The :class:`ModelConfig` of an HF ``config.json`` dict, dispatched on its ``model_type``.

    Raises :class:`UnsupportedArchitectureError` for a ``model_type`` outside :data:`SUPPORTED` and for a
    field with a value jsae does not implement (e.g. ``rope_scaling`` of type ``yarn``).
    """
    mt = check_model_type(config)
    reader = _READERS[mt]
    config = {**DEFAULTS[mt], **config}
    for field, allowed in REFUSED[mt].items():
        if field in config and config[field] not in allowed:
            raise UnsupportedArchitectureError(
                f"{name or mt}: config field {field}={config[field]!r} is not implemented for model_type {mt!r} "
                f"(jsae implements {', '.join(map(repr, allowed))})"
            )
    try:
        return reader(config, name)
    except KeyError as e:
        raise ModelFileError(
            f"{name or mt}: config.json has no {e.args[0]!r}, which model_type {mt!r} needs; re-download or re-save it"
        ) from e


def check_model_type(config: dict) -> str:
    """The config's ``model_type`` when jsae implements it; else :class:`UnsupportedArchitectureError`."""
    mt = config.get("model_type")
    if not isinstance(mt, str) or mt not in _READERS:
        raise UnsupportedArchitectureError(f"model_type {mt!r} is not supported; jsae supports {', '.join(SUPPORTED)}")
    return mt


def _act(c: dict, key: str, mt: str) -> Any:
    act = c.get(key) or "silu"
    if mt == "gemma" and act == "gelu":  # transformers treats Gemma's legacy "gelu" as the tanh GELU
        act = "gelu_pytorch_tanh"
    if act not in _ACTS:
        raise UnsupportedArchitectureError(
            f"{key}={act!r} of model_type {mt!r} is not implemented; jsae implements {', '.join(_ACTS)}"
        )
    default = "gelu_tanh" if mt in ("gpt2", "gpt_neox") else "silu"  # None: the arch's own activation
    return None if _ACTS[act] == default else _ACTS[act]


def _rope_params(c: dict, layer_type: str | None = None) -> dict:
    """RoPE parameters from either layout: ``rope_parameters`` (transformers 5, per layer type for Gemma 3)
    over ``rope_theta`` + ``rope_scaling`` (transformers 4)."""
    out: dict = {}
    if c.get("rope_theta") is not None:
        out["rope_theta"] = c["rope_theta"]
    out.update(c.get("rope_scaling") or {})
    rp = c.get("rope_parameters") or {}
    if layer_type is not None and isinstance(rp.get(layer_type), dict):
        rp = rp[layer_type]
    out.update({k: v for k, v in rp.items() if not isinstance(v, dict)})
    return out


def _rope(params: dict, mt: str, default_theta: float = 10000.0) -> dict:
    """``rope_theta``, ``rope_type`` and ``rope_scaling`` fields of :class:`ModelConfig`."""
    rtype = params.get("rope_type", params.get("type")) or "default"
    theta = float(params.get("rope_theta", default_theta))
    if rtype == "default":
        return dict(rope_theta=theta)
    if rtype == "linear":
        return dict(rope_theta=theta, rope_type="linear", rope_scaling=(float(params["factor"]),))
    if rtype == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        return dict(rope_theta=theta, rope_type="llama3", rope_scaling=tuple(float(params[k]) for k in keys))
    raise UnsupportedArchitectureError(
        f"rope_scaling of type {rtype!r} (model_type {mt!r}) is not implemented; jsae implements RoPE types "
        "'default', 'linear' and 'llama3'"
    )


def _partial_rotary(c: dict, params: dict, d_head: int, mt: str, allowed: bool) -> int | None:
    frac = params.get("partial_rotary_factor", c.get("partial_rotary_factor", c.get("rotary_pct", 1.0)))
    if frac is None or float(frac) == 1.0:
        return None
    if not allowed:
        raise UnsupportedArchitectureError(
            f"partial_rotary_factor={frac} is not implemented for model_type {mt!r} (transformers does not apply it "
            "there either)"
        )
    return int(d_head * float(frac))


def _windows(c: dict, mt: str, window: int | None, default_types: list[str]) -> tuple[int, ...]:
    """Per-layer sliding windows (0: global) from ``layer_types`` or the family's default pattern.

    HF masks key ``j`` for query ``i`` unless ``i - window < j <= i`` (``masking_utils.sliding_window_overlay``),
    which is jsae's ``i - j < window``.
    """
    types = c.get("layer_types") or default_types
    unknown = set(types) - {"sliding_attention", "full_attention"}
    if unknown:
        raise UnsupportedArchitectureError(
            f"layer_types {sorted(unknown)} of model_type {mt!r} are not implemented; jsae implements "
            "'sliding_attention' and 'full_attention'"
        )
    if len(types) != c["num_hidden_layers"]:
        raise UnsupportedArchitectureError(
            f"layer_types has {len(types)} entries but num_hidden_layers is {c['num_hidden_layers']}; fix config.json"
        )
    if "sliding_attention" not in types:
        return ()
    if not window:
        raise UnsupportedArchitectureError(
            f"layer_types of model_type {mt!r} has sliding_attention layers but sliding_window is {window!r}"
        )
    return tuple(int(window) if t == "sliding_attention" else 0 for t in types)


def _base(c: dict, mt: str, name: str, *, eps_key: str = "rms_norm_eps", partial: bool = False) -> dict:
    """Fields every Llama-shaped family shares."""
    H, D = c["num_attention_heads"], c["hidden_size"]
    dh = c.get("head_dim") or D // H
    params = _rope_params(c)
    return dict(
        n_layers=c["num_hidden_layers"],
        d_model=D,
        n_heads=H,
        n_kv_heads=c.get("num_key_value_heads") or H,
        d_head=dh,
        d_mlp=c["intermediate_size"],
        vocab_size=c["vocab_size"],
        n_ctx=c.get("max_position_embeddings", 2048),
        norm_eps=float(c.get(eps_key, 1e-6)),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        name=name,
        rotary_dim=_partial_rotary(c, params, dh, mt, partial),
        **_rope(params, mt),
    )


def _gpt2(c: dict, name: str) -> ModelConfig:
    D, H = c["n_embd"], c["n_head"]
    act = _act(c, "activation_function", "gpt2") if "activation_function" in c else None
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
        norm_eps=float(c.get("layer_norm_epsilon", 1e-5)),
        tied_embeddings=True,
        name=name,
        mlp_act=act,
    )


def _llama(c: dict, name: str) -> ModelConfig:
    return ModelConfig(arch="llama", mlp_act=_act(c, "hidden_act", "llama"), **_base(c, "llama", name))


def _mistral(c: dict, name: str) -> ModelConfig:
    base = _base(c, "mistral", name)
    w = c.get("sliding_window")
    windows = (int(w),) * base["n_layers"] if w else ()
    return ModelConfig(arch="llama", mlp_act=_act(c, "hidden_act", "mistral"), attn_window=windows, **base)


def _qwen_windows(c: dict, mt: str) -> tuple[int, ...]:
    window = c.get("sliding_window") if c.get("use_sliding_window") else None
    first = c.get("max_window_layers", c["num_hidden_layers"])
    default = [
        "sliding_attention" if window and i >= first else "full_attention" for i in range(c["num_hidden_layers"])
    ]
    return _windows(c, mt, window, default)


def _qwen2(c: dict, name: str) -> ModelConfig:
    windows, act = _qwen_windows(c, "qwen2"), _act(c, "hidden_act", "qwen2")
    return ModelConfig(arch="llama", mlp_act=act, attn_window=windows, **_base(c, "qwen2", name))


def _qwen3(c: dict, name: str) -> ModelConfig:
    windows, act = _qwen_windows(c, "qwen3"), _act(c, "hidden_act", "qwen3")
    return ModelConfig(arch="llama", mlp_act=act, attn_window=windows, qk_norm="head", **_base(c, "qwen3", name))


def _gemma_common(c: dict, mt: str, name: str, act_key: str) -> dict:
    base = _base(c, mt, name)
    base["tied_embeddings"] = bool(c.get("tie_word_embeddings", True))
    return dict(arch="llama", mlp_act=_act(c, act_key, mt), embed_scale=math.sqrt(c["hidden_size"]), **base)


def _gemma_scales(c: dict) -> dict:
    return dict(
        query_scale=float(c.get("query_pre_attn_scalar") or c.get("head_dim") or 256) ** -0.5,
        attn_softcap=c.get("attn_logit_softcapping"),
        final_softcap=c.get("final_logit_softcapping"),
        post_norms=True,
    )


def _gemma(c: dict, name: str) -> ModelConfig:
    return ModelConfig(**_gemma_common(c, "gemma", name, "hidden_act"))


def _gemma2(c: dict, name: str) -> ModelConfig:
    n = c["num_hidden_layers"]
    default = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    windows = _windows(c, "gemma2", c.get("sliding_window"), default)
    return ModelConfig(**_gemma_common(c, "gemma2", name, "hidden_activation"), **_gemma_scales(c), attn_window=windows)


def _gemma3_text(c: dict, name: str) -> ModelConfig:
    n, pattern = c["num_hidden_layers"], c.get("sliding_window_pattern") or c.get("_sliding_window_pattern") or 6
    default = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    windows = _windows(c, "gemma3_text", c.get("sliding_window"), default)
    common = _gemma_common(c, "gemma3_text", name, "hidden_activation")
    common.update(_rope(_rope_params(c, "full_attention"), "gemma3_text", default_theta=1_000_000.0))
    if isinstance((c.get("rope_parameters") or {}).get("sliding_attention"), dict):
        local = _rope_params(c, "sliding_attention")
    else:
        local = {"rope_theta": c.get("rope_local_base_freq", 10000.0)}
    if _rope(local, "gemma3_text") != dict(rope_theta=float(local.get("rope_theta", 10000.0))):
        raise UnsupportedArchitectureError("gemma3_text: scaled RoPE on the sliding-window layers is not implemented")
    local_theta = float(local.get("rope_theta", 10000.0))
    return ModelConfig(**common, **_gemma_scales(c), attn_window=windows, qk_norm="head", rope_local_theta=local_theta)


def _gpt_neox(c: dict, name: str) -> ModelConfig:
    params = _rope_params(c)
    if "rope_theta" not in params and "rotary_emb_base" in c:
        params["rope_theta"] = c["rotary_emb_base"]
    c = {k: v for k, v in c.items() if k not in ("num_key_value_heads", "head_dim")}  # transformers' NeoX has neither
    base = _base(c, "gpt_neox", name, eps_key="layer_norm_eps", partial=True)
    base.update(_rope(params, "gpt_neox"))
    if "partial_rotary_factor" not in params and "partial_rotary_factor" not in c and "rotary_pct" not in c:
        base["rotary_dim"] = int(base["d_head"] * 0.25)  # transformers' default rotary_pct
    parallel = bool(c.get("use_parallel_residual", True))
    return ModelConfig(arch="gpt2", mlp_act=_act(c, "hidden_act", "gpt_neox"), parallel_block=parallel, **base)


def _phi3(c: dict, name: str) -> ModelConfig:
    base = _base(c, "phi3", name, partial=True)
    w = c.get("sliding_window")
    windows = (int(w),) * base["n_layers"] if w else ()
    return ModelConfig(arch="llama", mlp_act=_act(c, "hidden_act", "phi3"), attn_window=windows, **base)


def _olmo2(c: dict, name: str) -> ModelConfig:
    act = _act(c, "hidden_act", "olmo2")
    return ModelConfig(arch="llama", mlp_act=act, qk_norm="all", post_norms=True, **_base(c, "olmo2", name))


def _gemma3(c: dict, name: str) -> ModelConfig:
    """A multimodal Gemma 3 (4B and larger): its text model, whose published ``text_config`` leaves most
    fields to ``gemma3_text``'s defaults."""
    if not isinstance(c.get("text_config"), dict):
        raise ModelFileError(f"{name or 'gemma3'}: config.json has no text_config; re-download it")
    if c["text_config"].get("final_logit_softcapping") is not None:
        raise UnsupportedArchitectureError(
            f"{name or 'gemma3'}: text_config.final_logit_softcapping is set, but transformers' multimodal Gemma 3 "
            "does not apply it while its text model does; jsae refuses the ambiguity (published Gemma 3 has null)"
        )
    tied = c.get("tie_word_embeddings", True)  # the multimodal model ties by its own flag, not text_config's
    return config_from_hf({**c["text_config"], "model_type": "gemma3_text", "tie_word_embeddings": tied}, name)


_READERS: dict[str, Callable[[dict, str], ModelConfig]] = {
    "gpt2": _gpt2,
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "gemma3_text": _gemma3_text,
    "gpt_neox": _gpt_neox,
    "phi3": _phi3,
    "olmo2": _olmo2,
    "gemma3": _gemma3,
}
