"""penzai views of jsae models, and jsae models from penzai's own transformers.

:func:`to_penzai` turns a jsae :class:`~jsae.models.Transformer` into a penzai ``TransformerLM`` made of
penzai layers (Llama family: penzai's ``build_llamalike_transformer`` with the weights bound; GPT-2:
penzai's ``Attention``/``Affine``/``LayerNorm`` layers plus :class:`LearnedPositions`). Named axes:
``batch``, ``seq``, ``heads``, ``projection``, ``embedding``, ``neurons``, ``vocabulary``.

:func:`add_hook_points` (called by :func:`to_penzai`; usable on any penzai llamalike, Gemma or GPT-NeoX
model built with ``use_layer_stack=False``) splits each attention output projection per head, with
heads as a parallel ``heads`` axis, and inserts an identity :class:`HookPoint` layer at jsae's hook
points (``resid_pre z result attn_out resid_mid mlp_out resid_post``). Find them with penzai's own
selectors and replace them::

    pz_model = to_penzai(model)
    sel = pz.select(pz_model).at_instances_of(HookPoint).where(lambda h: h.point == "result" and h.layer == 3)
    ablated = sel.apply(lambda h: pz.nn.Sequential([h, ReplaceHeads.zero(n_heads=9, heads=[4])]))

:func:`from_penzai` reads penzai's llamalike (Llama, Mistral), Gemma 1/2 and GPT-NeoX models (unrolled
blocks or a ``LayerStack``) and models made by :func:`to_penzai` back into a jsae ``Transformer``, so
jsae's harvest, circuit discovery, absorption, evals and steering run on models that penzai loaded.
Every layer on the paths it walks must be one jsae maps: any other (a ``ConstantRescale`` appended to
an attention output, an extra layer in a norm or MLP) raises :class:`UnsupportedArchitectureError`
naming the layer and its path. :func:`from_penzai_edited` also converts :class:`ReplaceHeads` edits
into jsae hooks: ``model, hooks = from_penzai_edited(ablated)``, then ``forward(model, tokens, hooks=hooks)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int
from penzai import pz
from penzai.models.transformer import model_parts
from penzai.models.transformer.variants import llamalike_common as llc

from ._build import make_transformer
from ._config import ModelConfig
from ._errors import ModelError, UnsupportedArchitectureError
from ._transformer import Transformer
from .hooks import HookSpec, Replace

SUPPORTED = (
    "penzai llamalike (Llama, Mistral), Gemma 1/2 and GPT-NeoX TransformerLM models, and models "
    "made by jsae.models.to_penzai"
)
MASKED = -2.3819763e38  # penzai's masked-out attention logit
_HEAD_AXES = ("heads", "head_groups", "query_heads")  # the flat jsae head is (head_groups, query_heads)


# ---------------------------------------------------------------------------------------------------
# Layers jsae adds to penzai models


@pz.pytree_dataclass
class HookPoint(pz.nn.Layer):
    """Identity layer marking jsae hook ``point`` of block ``layer``; select it and wrap or replace it."""

    point: str = dataclasses.field(metadata={"pytree_node": False})
    layer: int = dataclasses.field(metadata={"pytree_node": False})

    def __call__(self, x, /, **_unused_side_inputs):
        return x


@pz.pytree_dataclass
class ReplaceHeads(pz.nn.Layer):
    """``x <- x + mask * (value - x)``, names broadcasting: zero ablation and activation patching.

    mask: a named array with a ``heads`` axis (1 = replace that head). value: a named array or scalar,
    e.g. a ``result`` activation captured on another input (axes ``batch seq heads embedding``).
    """

    mask: pz.nx.NamedArray
    value: Any

    def __call__(self, x, /, **_unused_side_inputs):
        return x + self.mask * (self.value - x)

    @classmethod
    def zero(cls, n_heads: int, heads) -> ReplaceHeads:
        """Zero the listed heads (flat jsae indices) of a ``[.., heads, ..]`` activation."""
        return cls(mask=head_mask(n_heads, heads), value=pz.nx.wrap(jnp.zeros((), jnp.float32)))


@pz.pytree_dataclass
class MergeHeads(pz.nn.Layer):
    """Merge penzai's grouped head axes (``head_groups``, ``query_heads``) into one flat ``heads`` axis."""

    axes: tuple[str, ...] = dataclasses.field(metadata={"pytree_node": False})

    def __call__(self, x, /, **_unused_side_inputs):
        return _merge_heads(x, self.axes)


@pz.pytree_dataclass
class SumHeads(pz.nn.Layer):
    """Sum a per-head output over its ``heads`` axis (the fused output projection, split in two)."""

    def __call__(self, x, /, **_unused_side_inputs):
        return pz.nx.nmap(jnp.sum)(x.untag("heads"))


@pz.pytree_dataclass
class LearnedPositions(pz.nn.Layer):
    """Add a learned position embedding (GPT-2): ``table`` has axes ``position`` and ``embedding``."""

    table: Any

    def __call__(self, x, /, *, token_positions, **_unused_side_inputs):
        rows = pz.nx.nmap(lambda t, i: t[i])(self.table.value.untag("position"), token_positions)
        return x + rows


def head_mask(n_heads: int, heads) -> pz.nx.NamedArray:
    """A ``{heads: n_heads}`` float32 mask with 1 at each listed head."""
    m = np.zeros(n_heads, np.float32)
    for h in heads:
        if not 0 <= h < n_heads:
            raise ModelError(f"head {h} is out of range; the model has heads 0..{n_heads - 1}")
        m[h] = 1.0
    return pz.nx.wrap(jnp.asarray(m)).tag("heads")


def select_hooks(pz_model, point: str | None = None, layer: int | None = None):
    """``pz.select`` of the :class:`HookPoint` layers at ``point`` / ``layer`` (None: any)."""
    sel = (
        pz.select(pz_model)
        .at_instances_of(HookPoint)
        .where(lambda h: (point is None or h.point == point) and (layer is None or h.layer == layer))
    )
    if sel.count() == 0:
        found = sorted({(h.point, h.layer) for h in pz.select(pz_model).at_instances_of(HookPoint).get_sequence()})
        raise ModelError(
            f"no HookPoint with point={point!r}, layer={layer!r} in this model; it has "
            f"{len(found)} hook points"
            + (f", e.g. {found[:3]}" if found else ": make it hookable with jsae.models.add_hook_points")
        )
    return sel


def _merge_heads(x: pz.nx.NamedArray, axes: tuple[str, ...]) -> pz.nx.NamedArray:
    if tuple(axes) == ("heads",):
        return x
    return pz.nx.nmap(lambda a: a.reshape(-1))(x.untag(*axes)).tag("heads")


def _param(value: pz.nx.NamedArray, label: str):
    return pz.Parameter(value=value, label=label)


def _named(a, *names) -> pz.nx.NamedArray:
    return pz.nx.wrap(jnp.asarray(a, jnp.float32)).tag(*names)


def _rescale(by: float) -> pz.nn.ConstantRescale:
    """penzai's ``ConstantRescale`` by ``by`` held as a float32 array (so ``x * by`` follows array dtype rules)."""
    return pz.nn.ConstantRescale(by=jnp.asarray(by, jnp.float32))  # pyright: ignore[reportArgumentType]  # penzai types by as float


def _sublayers(layer: pz.nn.Layer, what: str) -> list[pz.nn.Layer]:
    """``layer.sublayers`` (penzai's ``Sequential`` family, ``NamedGroup``, ``CheckedSequential``)."""
    subs = getattr(layer, "sublayers", None)
    if subs is None:
        raise UnsupportedArchitectureError(f"{what} is a {type(layer).__name__}, which has no sublayers")
    return list(subs)


def _need(weights: Array | None, field: str) -> Array:
    """A weight of ``Blocks`` that the penzai layers being built need (None where the arch has none)."""
    if weights is None:
        raise UnsupportedArchitectureError(f"to_penzai needs Blocks.{field}, which this model does not have (None)")
    return weights


# ---------------------------------------------------------------------------------------------------
# Running a penzai model on jsae's token arrays


def penzai_logits(pz_model, tokens: Int[Array, "B T"]) -> Float[Array, "B T V"]:
    """penzai forward on a ``[B, T]`` token array (right-padded as for jsae); logits ``[B, T, V]``."""
    named = pz.nx.wrap(jnp.asarray(tokens, jnp.int32)).tag("batch", "seq")
    return pz_model(named).unwrap("batch", "seq", "vocabulary")


# ---------------------------------------------------------------------------------------------------
# Hook points


def _per_head_attention(attn: pz.nn.Attention, layer: int) -> pz.nn.Attention:
    """Replace the fused output projection by ``MergeHeads, z, Linear (heads parallel), result, SumHeads``."""
    what = f"the attention output of block {layer}"
    items = _flat(attn.attn_value_to_output, "attn_value_to_output")
    if any(isinstance(x, HookPoint) for _, x in items):
        return attn
    (einsum,), (lin,), biases = _match(
        items, [(pz.nn.NamedEinsum, "1"), (pz.nn.Linear, "1"), (pz.nn.AddBias, "?")], what
    )
    label = getattr(lin.weights, "label", None)  # penzai's ParameterLike has only .value; Parameters have labels
    if label is None:
        raise UnsupportedArchitectureError(
            f"the attention output weights of block {layer} are a {type(lin.weights).__name__} without a label; "
            "jsae needs a penzai Parameter"
        )
    heads = tuple(a for a in _HEAD_AXES if a in lin.in_axis_names)
    w = _merge_heads(lin.weights.value, heads)
    per_head = pz.nn.Linear(weights=_param(w, label), in_axis_names=("projection",), out_axis_names=lin.out_axis_names)
    seq = [einsum, MergeHeads(heads), HookPoint("z", layer), per_head, HookPoint("result", layer), SumHeads()]
    return dataclasses.replace(attn, attn_value_to_output=pz.nn.Sequential(seq + list(biases)))


def _hooked_block(block, layer: int):
    hp = functools.partial(HookPoint, layer=layer)
    block = pz.select(block).at_instances_of(pz.nn.Attention).apply(lambda a: _per_head_attention(a, layer))
    subs = list(block.sublayers)
    if any(isinstance(s, HookPoint) for s in subs):
        return block
    if len(subs) == 2 and all(isinstance(s, pz.nn.Residual) for s in subs):
        a, m = (list(s.delta.sublayers) for s in subs)
        new = [
            hp("resid_pre"),
            pz.nn.Residual(pz.nn.Sequential(a + [hp("attn_out")])),
            hp("resid_mid"),
            pz.nn.Residual(pz.nn.Sequential(m + [hp("mlp_out")])),
            hp("resid_post"),
        ]
    elif len(subs) == 1 and isinstance(subs[0], pz.nn.BranchAndAddTogether) and len(subs[0].branches) == 3:
        ident, a, m = subs[0].branches
        new = [
            hp("resid_pre"),
            pz.nn.BranchAndAddTogether(
                [
                    ident,
                    pz.nn.Sequential(_sublayers(a, f"the attention branch of block {layer}") + [hp("attn_out")]),
                    pz.nn.Sequential(_sublayers(m, f"the MLP branch of block {layer}") + [hp("mlp_out")]),
                ]
            ),
            hp("resid_post"),
        ]
    else:
        raise UnsupportedArchitectureError(
            f"block {layer} has sublayers {[type(s).__name__ for s in subs]}; jsae's hook points need a "
            "serial block [Residual, Residual] or a parallel BranchAndAddTogether (GPT-NeoX)"
        )
    return dataclasses.replace(block, sublayers=new)


def add_hook_points(pz_model):
    """The same penzai model with per-head attention outputs and a :class:`HookPoint` at every jsae point.

    Logits are unchanged. Works on unrolled blocks (penzai's ``use_layer_stack=False``); a ``LayerStack``
    shares one block for all layers, so convert it with :func:`from_penzai` then :func:`to_penzai`.
    """
    if pz.select(pz_model).at_instances_of(pz.nn.LayerStack).count():
        raise UnsupportedArchitectureError(
            "the model's blocks are a penzai LayerStack, which has one block for all layers; hook points "
            "need unrolled blocks: build it with use_layer_stack=False, or use to_penzai(from_penzai(model))"
        )
    blocks = pz.select(pz_model).at_instances_of(model_parts.TransformerBlock)
    if blocks.count() == 0:
        raise UnsupportedArchitectureError(
            f"no TransformerBlock found in a {type(pz_model).__name__}; supported: {SUPPORTED}"
        )
    return blocks.set_sequence([_hooked_block(b, i) for i, b in enumerate(blocks.get_sequence())])


# ---------------------------------------------------------------------------------------------------
# jsae -> penzai


def _llamalike_config(cfg: ModelConfig) -> llc.LlamalikeTransformerConfig:
    act = cfg.mlp_act or "silu"
    variants: dict[str, Literal["swiglu", "geglu_approx"]] = {"silu": "swiglu", "gelu_tanh": "geglu_approx"}
    if act not in variants:
        raise UnsupportedArchitectureError(
            f"gated MLP activation {act!r} has no penzai llamalike variant; supported: {sorted(variants)}"
        )
    window = [
        llc.AttentionTypeSlidingWindowCausal(w) if w else llc.AttentionTypeGlobalCausal() for w in cfg.attn_window
    ] or llc.AttentionTypeGlobalCausal()
    return llc.LlamalikeTransformerConfig(
        num_kv_heads=cfg.n_kv_heads,
        query_head_multiplier=cfg.group_size,
        embedding_dim=cfg.d_model,
        projection_dim=cfg.d_head,
        mlp_hidden_dim=cfg.d_mlp,
        num_decoder_blocks=cfg.n_layers,
        vocab_size=cfg.vocab_size,
        mlp_variant=variants[act],
        tie_embedder_and_logits=cfg.tied_embeddings,
        rope_wavelength=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps,
        attention_type=window,
        use_post_attn_norm=cfg.post_norms,
        use_post_ffw_norm=cfg.post_norms,
        final_logit_softcap=cfg.final_softcap,
        attn_logits_soft_cap=cfg.attn_softcap,
        query_scaling_factor="default" if cfg.query_scale is None else cfg.query_scale,
    )


def _llama_to_penzai(model: Transformer):
    cfg, b = model.cfg, model.blocks
    unsupported = [f for f in ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out") if getattr(b, f) is not None]
    features = [
        *unsupported,
        *(["partial rotary"] if cfg.rotary_dim else []),
        *(["parallel blocks"] if cfg.parallel_block else []),
        *([f"q/k norms ({cfg.qk_norm})"] if cfg.qk_norm else []),
        *([f"RoPE scaling {cfg.rope_type!r}"] if cfg.rope_type != "default" else []),
        *(["a separate RoPE base on local layers"] if cfg.rope_local_theta else []),
        *(["no pre-norms (OLMo-2 style output norms)"] if b.ln1_w is None or b.ln2_w is None else []),
    ]
    if features:
        raise UnsupportedArchitectureError(
            f"this Llama-family model has {', '.join(features)}, which penzai's llamalike builder does not "
            "have; to_penzai supports bias-free Llama/Mistral/Gemma 1-2 models with default RoPE, and GPT-2"
        )
    pcfg = _llamalike_config(cfg)
    L, K, G = cfg.n_layers, cfg.n_kv_heads, cfg.group_size
    heads = (
        lambda w, *pre, post=("projection",): (  # noqa: E731  flat jsae heads -> penzai's head axes
            _named(
                w.reshape(w.shape[: len(pre)] + (K, G) + w.shape[len(pre) + 1 :]),
                *pre,
                "head_groups",
                "query_heads",
                *post,
            )
            if K > 1 and G > 1
            else _named(w, *pre, "heads" if G == 1 else "query_heads", *post)
        )
    )
    kv = lambda w: (
        _named(w, "embedding", "heads", "projection")
        if G == 1
        else (
            _named(w[:, 0], "embedding", "projection")
            if K == 1
            else _named(w, "embedding", "head_groups", "projection")
        )
    )
    vals = {
        "embedder.embeddings": _named(model.embed, "vocabulary", "embedding"),
        "final_norm/scale.weights": _named(model.ln_f_w, "embedding"),
    }
    if not cfg.tied_embeddings:
        vals["lm_head.weights"] = _named(model.W_U, "embedding", "vocabulary")
    for i in range(L):
        p = f"block_{i}/"
        vals.update(
            {
                p + "pre_attention_norm/scale.weights": _named(b.ln1_w[i], "embedding"),
                p + "pre_ffw_norm/scale.weights": _named(b.ln2_w[i], "embedding"),
                p + "attention/query.weights": heads(b.W_Q[i], "embedding"),
                p + "attention/key.weights": kv(b.W_K[i]),
                p + "attention/value.weights": kv(b.W_V[i]),
                p + "attention/output.weights": heads(b.W_O[i], post=("projection", "embedding")),
                p + "mlp/gating_linear.weights": _named(_need(b.W_gate, "W_gate")[i], "embedding", "neurons"),
                p + "mlp/value_linear.weights": _named(b.W_in[i], "embedding", "neurons"),
                p + "mlp/out_linear.weights": _named(b.W_out[i], "neurons", "embedding"),
            }
        )
        if cfg.post_norms:
            vals[p + "post_attention_norm/scale.weights"] = _named(_need(b.ln1_post_w, "ln1_post_w")[i], "embedding")
            vals[p + "post_ffw_norm/scale.weights"] = _named(_need(b.ln2_post_w, "ln2_post_w")[i], "embedding")
    skeleton = llc.build_llamalike_transformer(pcfg, init_base_rng=None, name="transformer")
    pz_model = pz.bind_variables(skeleton, [_param(v, "transformer/" + k) for k, v in vals.items()])
    pz.nn.assert_no_parameter_slots(pz_model)
    # penzai ties embeddings only together with a sqrt(d_model) input scale (Gemma); set jsae's scale.
    subs = list(pz_model.body.sublayers)
    subs = [s for s in subs if not isinstance(s, pz.nn.ConstantRescale)]
    if cfg.embed_scale != 1.0:
        subs.insert(1, _rescale(cfg.embed_scale))
    return dataclasses.replace(pz_model, body=pz.nn.Sequential(subs))


def _affine(w, b, ins, outs, label):
    lin = pz.nn.Linear(weights=_param(w, label + "/Linear.weights"), in_axis_names=ins, out_axis_names=outs)
    return pz.nn.Affine([lin, pz.nn.AddBias(bias=_param(b, label + "/AddBias.bias"), new_axis_names=())])


def _layernorm(w, b, eps, label):
    return pz.nn.LayerNorm(
        [
            pz.nn.Standardize(across=("embedding",), epsilon=eps),
            pz.nn.Linear(
                weights=_param(_named(w, "embedding"), label + "/scale.weights"), in_axis_names=(), out_axis_names=()
            ),
            pz.nn.AddBias(bias=_param(_named(b, "embedding"), label + "/shift.bias"), new_axis_names=()),
        ]
    )


def _gpt2_to_penzai(model: Transformer):
    cfg, b = model.cfg, model.blocks
    H, dh = cfg.n_heads, cfg.d_head
    gpt2_like = model.pos_embed is not None and not cfg.parallel_block and cfg.tied_embeddings
    if not gpt2_like or cfg.mlp_act not in (None, "gelu_tanh"):
        raise UnsupportedArchitectureError(
            "to_penzai supports GPT-2 (learned positions, serial blocks, tanh GELU, tied unembedding) and "
            "bias-free Llama-family models; this LayerNorm model is another variant (e.g. GPT-NeoX)"
        )
    embeddings = _param(_named(model.embed, "vocabulary", "embedding"), "transformer/embedder.embeddings")
    table = pz.nn.EmbeddingTable(embeddings=embeddings, vocabulary_axis="vocabulary")
    qk = ({"seq": "tq", "heads": "h", "projection": "p"}, {"seq": "tkv", "heads": "h", "projection": "p"})
    hp = {"seq": "tq", "heads": "h", "kv_seq": "tkv"}
    hpp = ("heads", "projection")

    def proj(w, bias, n, i):
        return _affine(
            _named(w[i], "embedding", *hpp),
            _named(bias[i], *hpp),
            ("embedding",),
            hpp,
            f"transformer/block_{i}/attention/{n}",
        )

    def dense(w, bias, ins, outs, label):
        return _affine(_named(w, ins, outs), _named(bias, outs), (ins,), (outs,), label)

    blocks = []
    for i in range(cfg.n_layers):
        p = f"transformer/block_{i}/"
        b_O, b_in, b_out = _need(b.b_O, "b_O"), _need(b.b_in, "b_in"), _need(b.b_out, "b_out")
        ln1_b, ln2_b = _need(b.ln1_b, "ln1_b"), _need(b.ln2_b, "ln2_b")
        attn = pz.nn.Attention(
            input_to_query=pz.nn.Sequential([proj(b.W_Q, b.b_Q, "query", i), _rescale(dh**-0.5)]),
            input_to_key=pz.nn.Sequential([proj(b.W_K, b.b_K, "key", i)]),
            input_to_value=pz.nn.Sequential([proj(b.W_V, b.b_V, "value", i)]),
            query_key_to_attn=pz.nn.Sequential(
                [
                    pz.nn.NamedEinsum(qk, hp),
                    pz.nn.ApplyCausalAttentionMask(masked_out_value=jnp.asarray(MASKED, jnp.float32)),
                    pz.nn.Softmax("kv_seq"),
                ]
            ),
            attn_value_to_output=pz.nn.Sequential(
                [
                    pz.nn.NamedEinsum((hp, qk[1]), qk[0]),
                    _affine(
                        _named(b.W_O[i], "heads", "projection", "embedding"),
                        _named(b_O[i], "embedding"),
                        ("heads", "projection"),
                        ("embedding",),
                        p + "attention/output",
                    ),
                ]
            ),
        )
        mlp = model_parts.TransformerFeedForward(
            [
                dense(b.W_in[i], b_in[i], "embedding", "neurons", p + "mlp/in"),
                pz.nn.Elementwise(functools.partial(jax.nn.gelu, approximate=True)),
                dense(b.W_out[i], b_out[i], "neurons", "embedding", p + "mlp/out"),
            ]
        )
        blocks.append(
            model_parts.TransformerBlock(
                [
                    pz.nn.Residual(
                        pz.nn.Sequential(
                            [_layernorm(b.ln1_w[i], ln1_b[i], cfg.norm_eps, p + "pre_attention_norm"), attn]
                        )
                    ),
                    pz.nn.Residual(
                        pz.nn.Sequential([_layernorm(b.ln2_w[i], ln2_b[i], cfg.norm_eps, p + "pre_ffw_norm"), mlp])
                    ),
                ]
            )
        )
    body = pz.nn.Sequential(
        [
            pz.nn.EmbeddingLookup(table),
            LearnedPositions(
                _param(_named(model.pos_embed, "position", "embedding"), "transformer/positions.embeddings")
            ),
            *blocks,
            _layernorm(model.ln_f_w, model.ln_f_b, cfg.norm_eps, "transformer/final_norm"),
            pz.nn.EmbeddingDecode(table),
        ]
    )
    meta = model_parts.TransformerMetadata(
        common_head_axes={"heads": H},
        query_only_head_axes={},
        embedding_dim=cfg.d_model,
        projection_dim=dh,
        mlp_hidden_dim=cfg.d_mlp,
        vocab_size=cfg.vocab_size,
        activation_dtype=jnp.float32,
    )
    return model_parts.TransformerLM(metadata=meta, body=body)


def to_penzai(model: Transformer, hook_points: bool = True):
    """A penzai ``TransformerLM`` with ``model``'s weights (logits equal jsae's :func:`forward`).

    Llama family: penzai's ``build_llamalike_transformer`` with the weights bound (GQA heads as penzai's
    ``head_groups`` x ``query_heads``); GPT-2: penzai layers plus :class:`LearnedPositions`.
    ``hook_points``: add :class:`HookPoint` layers and per-head outputs (see :func:`add_hook_points`).
    Call it on tokens with :func:`penzai_logits` or ``pz_model(pz.nx.wrap(tokens).tag("batch", "seq"))``.
    """
    if not isinstance(model, Transformer):
        raise ModelError(f"to_penzai takes a jsae Transformer, got {type(model).__name__}")
    pz_model = _llama_to_penzai(model) if model.cfg.arch == "llama" else _gpt2_to_penzai(model)
    return add_hook_points(pz_model) if hook_points else pz_model


# ---------------------------------------------------------------------------------------------------
# penzai -> jsae


def _unsupported(what: str, found) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(f"{what}: found {found}; from_penzai supports {SUPPORTED}")


# Every layer on a path that from_penzai walks is matched against the layers jsae maps; anything else
# raises (naming the layer and its path) instead of being dropped from the converted model.

_JSAE_MARKERS = (HookPoint, MergeHeads, SumHeads, pz.nn.Identity)
_ROPE = (pz.nn.ApplyRoPE, pz.nn.ApplyRoPEToSubset)
_MASKS = (pz.nn.ApplyCausalAttentionMask, pz.nn.ApplyCausalSlidingWindowAttentionMask)
Pattern = list[tuple[type | tuple[type, ...], str]]  # (layer types, "1" one, "?" optional, "*" any number)


@dataclasses.dataclass(frozen=True)
class _Edit:
    """A :class:`ReplaceHeads` found after hook point ``point`` of block ``layer``."""

    point: str
    layer: int
    replace: ReplaceHeads


def _flat(layer, path: str, keep: tuple[type, ...] = ()) -> list[tuple[str, Any]]:
    """The leaf layers of ``layer`` with their paths: penzai's Sequential containers opened (except ``keep``)."""
    if isinstance(layer, pz.nn.Sequential | pz.nn.CheckedSequential | pz.nn.NamedGroup) and not isinstance(layer, keep):
        return [item for i, sub in enumerate(layer.sublayers) for item in _flat(sub, f"{path}.sublayers[{i}]", keep)]
    return [(path, layer)]


def _type_names(types) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def _unexpected(what: str, items, i: int, pattern: Pattern) -> UnsupportedArchitectureError:
    found = [type(layer).__name__ for _, layer in items]
    expected = ", ".join(_type_names(t) + {"1": "", "?": " (optional)", "*": " (any number)"}[q] for t, q in pattern)
    if i == len(items):
        return UnsupportedArchitectureError(
            f"{what} ends early: found {found}, expected [{expected}]; from_penzai supports {SUPPORTED}"
        )
    path, layer = items[i]
    return UnsupportedArchitectureError(
        f"{what} has a {type(layer).__name__} at {path} that jsae has no counterpart for there (layers found: "
        f"{found}, expected [{expected}]). Converting without it would give a different model, so "
        "from_penzai refuses: remove the layer, or express it as a jsae hook edit on the converted model"
    )


def _match(items, pattern: Pattern, what: str) -> list[list[Any]]:
    """Match ``items`` (``(path, layer)``, jsae's marker layers removed) to ``pattern``; the layers per entry."""
    items = [(p, x) for p, x in items if not isinstance(x, _JSAE_MARKERS)]
    groups, i = [], 0
    for types, quant in pattern:
        got = []
        while i < len(items) and isinstance(items[i][1], types) and (quant == "*" or not got):
            got.append(items[i][1])
            i += 1
        if quant == "1" and not got:
            raise _unexpected(what, items, i, pattern)
        groups.append(got)
    if i < len(items):
        raise _unexpected(what, items, i, pattern)
    return groups


def _take_edits(items, what: str, layer: int | None, edits: list[_Edit] | None):
    """``items`` without their :class:`ReplaceHeads` edits, each recorded in ``edits`` (None: refuse them)."""
    out, last_hook = [], None
    for path, x in items:
        if not isinstance(x, ReplaceHeads):
            out.append((path, x))
            last_hook = x if isinstance(x, HookPoint) else None
            continue
        where = f"a ReplaceHeads edit at {path} in {what}"
        if edits is None or layer is None:
            raise UnsupportedArchitectureError(
                f"{where}: from_penzai converts an unedited model and would drop it; use "
                "jsae.models.from_penzai_edited(pz_model), which returns (model, hooks) with the edit "
                "as jsae hooks, or remove the edit"
                + (" (edits inside a LayerStack apply to every layer and are not converted)" if layer is None else "")
            )
        if not (isinstance(last_hook, HookPoint) and last_hook.point in ("z", "result")):
            raise UnsupportedArchitectureError(
                f"{where} does not follow a HookPoint 'z' or 'result'; jsae converts head edits only at those "
                "points (insert them with select_hooks(pz_model, 'result', layer).apply(...))"
            )
        edits.append(_Edit(last_hook.point, layer, x))
    return out


def _np(named: pz.nx.NamedArray, *names: str, stack: str | None) -> np.ndarray:
    """The named array as numpy with axes ``names`` (``head`` groups merged), prefixed by ``stack``."""
    pre = [stack] if stack and stack in named.named_shape else []
    missing = set(named.named_shape) - set(names) - set(pre) - set(_HEAD_AXES)
    if missing:
        raise _unsupported("a parameter has unexpected axes", dict(named.named_shape))
    out = []
    for n in names:
        if n == "H":  # all head axes present, flat (head_groups major)
            out += [a for a in _HEAD_AXES if a in named.named_shape]
        else:
            out.append(n)
    a = np.asarray(named.unwrap(*pre, *out), np.float32)
    if "H" in names:  # merge the head axes into one (or add a size-1 axis for MQA keys/values)
        k = len(pre) + names.index("H")
        nh = len(out) - len(names) + 1
        a = a.reshape(a.shape[:k] + (-1,) + a.shape[k + nh :]) if nh else np.expand_dims(a, k)
    return a


def _norm_params(norm, stack, path: str):
    if isinstance(norm, pz.nn.RMSLayerNorm):
        std, lin = (g[0] for g in _match(_flat(norm, path), [(pz.nn.RMSStandardize, "1"), (pz.nn.Linear, "1")], path))
        return "rms", _np(lin.weights.value, "embedding", stack=stack), None, float(std.epsilon)
    if isinstance(norm, pz.nn.LayerNorm):
        pattern: Pattern = [(pz.nn.Standardize, "1"), (pz.nn.Linear, "1"), (pz.nn.AddBias, "1")]
        std, lin, bias = (g[0] for g in _match(_flat(norm, path), pattern, path))
        w = _np(lin.weights.value, "embedding", stack=stack)
        return "ln", w, _np(bias.bias.value, "embedding", stack=stack), float(std.epsilon)
    raise _unsupported(f"a normalisation layer at {path}", type(norm).__name__)


def _act_name(fn) -> str:
    if fn is jax.nn.silu:
        return "silu"
    if fn is jax.nn.relu:
        return "relu"
    if fn is jax.nn.gelu:
        return "gelu_tanh"
    if isinstance(fn, functools.partial) and fn.func is jax.nn.gelu and not fn.args:
        return "gelu_tanh" if fn.keywords.get("approximate", True) else "gelu"
    raise _unsupported("an MLP activation", fn)


def _wb(lin, bias, stack, ins, outs):
    """(weight [ins..., outs...], bias [outs...] or None) of a matched Linear and optional AddBias."""
    w = _np(lin[0].weights.value, *ins, *outs, stack=stack)
    return w, (_np(bias[0].bias.value, *outs, stack=stack) if bias else None)


def _projection(layer, path: str, stack, ins, outs, extra: Pattern | None = None):
    """A Linear (+ AddBias) projection followed by ``extra``: (weight, bias, the extra layers matched)."""
    pattern: Pattern = [(pz.nn.Linear, "1"), (pz.nn.AddBias, "?"), *(extra or [])]
    lin, bias, *rest = _match(_flat(layer, path), pattern, path)
    return (*_wb(lin, bias, stack, ins, outs), rest)


def _attention(attn: pz.nn.Attention, stack, path: str, d: dict, info: dict, layer, edits) -> None:
    q_extra: Pattern = [(pz.nn.ConstantRescale, "*"), (_ROPE, "?"), (pz.nn.ConstantRescale, "*")]
    wq, bq, (s1, q_rope, s2) = _projection(
        attn.input_to_query, path + ".input_to_query", stack, ["embedding"], ["H", "projection"], q_extra
    )
    wk, bk, (k_rope,) = _projection(
        attn.input_to_key, path + ".input_to_key", stack, ["embedding"], ["H", "projection"], [(_ROPE, "?")]
    )
    wv, bv, _ = _projection(attn.input_to_value, path + ".input_to_value", stack, ["embedding"], ["H", "projection"])
    out_path = path + ".attn_value_to_output"
    out_items = _take_edits(_flat(attn.attn_value_to_output, out_path), out_path, layer, edits)
    _, lin, bias = _match(
        out_items, [(pz.nn.NamedEinsum, "1"), (pz.nn.Linear, "1"), (pz.nn.AddBias, "?")], "the attention output"
    )
    wo, bo = _wb(lin, bias, stack, ["H", "projection"], ["embedding"])
    d.update(W_Q=wq, W_K=wk, W_V=wv, W_O=wo, b_Q=bq, b_K=bk, b_V=bv, b_O=bo)
    if len(q_rope) != len(k_rope) or (q_rope and type(q_rope[0]) is not type(k_rope[0])):
        raise _unsupported(f"rotary layers on queries and keys at {path}", f"{q_rope} and {k_rope}")
    if q_rope:
        r = q_rope[0]
        info["rope"] = (float(r.max_wavelength), getattr(r, "rope_subset_size", None))
    scales = s1 + s2
    info["query_scale"] = float(np.prod([float(s.by) for s in scales])) if scales else 1.0
    qk_path = path + ".query_key_to_attn"
    _, caps, masks, _ = _match(
        _flat(attn.query_key_to_attn, qk_path),
        [(pz.nn.NamedEinsum, "1"), (pz.nn.TanhSoftCap, "?"), (_MASKS, "1"), (pz.nn.Softmax, "1")],
        qk_path,
    )
    info["attn_softcap"] = float(caps[0].soft_cap) if caps else None
    window = masks[0] if isinstance(masks[0], pz.nn.ApplyCausalSlidingWindowAttentionMask) else None
    info["window"] = int(np.asarray(window.sliding_window_size)) if window is not None else 0


def _mlp(ff, stack, path: str, d: dict, info: dict) -> None:
    items = _flat(ff, path)
    if any(isinstance(x, pz.nn.BranchAndMultiplyTogether) for _, x in items):  # gated (SwiGLU / GeGLU)
        (gv,), (out,) = _match(items, [(pz.nn.BranchAndMultiplyTogether, "1"), (pz.nn.Linear, "1")], path)
        if len(gv.branches) != 2:
            raise _unsupported(f"a gated MLP at {path}", f"{len(gv.branches)} branches (jsae: gate and value)")
        gate, value = gv.branches
        (lin_g,), (act,) = _match(
            _flat(gate, path + ".branches[0]"), [(pz.nn.Linear, "1"), (pz.nn.Elementwise, "1")], "the MLP gate"
        )
        ((lin_v,),) = _match(_flat(value, path + ".branches[1]"), [(pz.nn.Linear, "1")], "the MLP value")
        d["W_gate"], _ = _wb([lin_g], [], stack, ["embedding"], ["neurons"])
        d["W_in"], _ = _wb([lin_v], [], stack, ["embedding"], ["neurons"])
        d["W_out"], _ = _wb([out], [], stack, ["neurons"], ["embedding"])
        info["gated"], info["act"] = True, _act_name(act.fn)
    else:
        pattern: Pattern = [
            (pz.nn.Linear, "1"),
            (pz.nn.AddBias, "?"),
            (pz.nn.Elementwise, "1"),
            (pz.nn.Linear, "1"),
            (pz.nn.AddBias, "?"),
        ]
        lin1, b1, (act,), lin2, b2 = _match(items, pattern, path)
        d["W_in"], d["b_in"] = _wb(lin1, b1, stack, ["embedding"], ["neurons"])
        d["W_out"], d["b_out"] = _wb(lin2, b2, stack, ["neurons"], ["embedding"])
        info["gated"], info["act"] = False, _act_name(act.fn)


_BRANCH_KEEP = (pz.nn.RMSLayerNorm, pz.nn.LayerNorm, model_parts.TransformerFeedForward)


def _branch(seq, path: str, what: str, layer, edits) -> list[tuple[str, Any]]:
    """The [norm, Attention or MLP, optional norm] of a block's branch, markers and edits removed."""
    items = _take_edits(_flat(seq, path, keep=_BRANCH_KEEP), path, layer, edits)
    items = [(p, x) for p, x in items if not isinstance(x, _JSAE_MARKERS)]
    if not 2 <= len(items) <= 3:
        raise _unsupported(f"{what} at {path}", [type(x).__name__ for _, x in items])
    return items


def _block(block, stack, path: str, layer: int | None = None, edits: list[_Edit] | None = None) -> tuple[dict, dict]:
    d, info = {}, {}
    subs = [(f"{path}.sublayers[{i}]", s) for i, s in enumerate(block.sublayers) if not isinstance(s, _JSAE_MARKERS)]
    if len(subs) == 2 and all(isinstance(s, pz.nn.Residual) for _, s in subs):
        info["parallel"] = False
        attn_items, mlp_items = (
            _branch(s.delta, p + ".delta", w, layer, edits)
            for (p, s), w in zip(subs, ("an attention branch", "an MLP branch"))
        )
    elif (
        len(subs) == 1
        and isinstance(subs[0][1], pz.nn.BranchAndAddTogether)
        and len(subs[0][1].branches) == 3
        and isinstance(subs[0][1].branches[0], pz.nn.Identity)
    ):
        info["parallel"] = True
        p0, par = subs[0]
        attn_items, mlp_items = (
            _branch(par.branches[i], f"{p0}.branches[{i}]", w, layer, edits)
            for i, w in ((1, "an attention branch"), (2, "an MLP branch"))
        )
    else:
        raise _unsupported(f"a transformer block at {path}", [type(s).__name__ for _, s in subs])
    (apath, attn), (mpath, mlp) = attn_items[1], mlp_items[1]
    if not isinstance(attn, pz.nn.Attention):
        raise _unsupported(f"an attention branch [norm, Attention, optional norm] at {apath}", type(attn).__name__)
    if not isinstance(mlp, model_parts.TransformerFeedForward | pz.nn.Sequential):
        raise _unsupported(
            f"an MLP branch [norm, TransformerFeedForward, optional norm] at {mpath}", type(mlp).__name__
        )
    norm1, norm2 = (
        _norm_params(attn_items[0][1], stack, attn_items[0][0]),
        _norm_params(mlp_items[0][1], stack, mlp_items[0][0]),
    )
    info["norm"], info["eps"] = norm1[0], norm1[3]
    d.update(ln1_w=norm1[1], ln1_b=norm1[2], ln2_w=norm2[1], ln2_b=norm2[2])
    post = [len(attn_items) == 3, len(mlp_items) == 3]
    if any(post):
        if not all(post):
            raise _unsupported(f"post-norms in {path}", "a post-norm after only one of attention and MLP")
        d["ln1_post_w"] = _norm_params(attn_items[2][1], stack, attn_items[2][0])[1]
        d["ln2_post_w"] = _norm_params(mlp_items[2][1], stack, mlp_items[2][0])[1]
    info["post_norms"] = all(post)
    _attention(attn, stack, apath, d, info, layer, edits)
    _mlp(mlp, stack, mpath, d, info)
    return d, info


def from_penzai(pz_model, n_ctx: int = 8192, name: str = "") -> Transformer:
    """A jsae :class:`Transformer` from a penzai transformer (weights copied to float32).

    Supported: penzai's llamalike models (``llama``/``mistral`` variants, ``build_llamalike_transformer``),
    Gemma 1 and 2 (``gemma`` variant), GPT-NeoX (``gpt_neox`` variant), unrolled or in a ``LayerStack``,
    and models made by :func:`to_penzai`. ``n_ctx``: the context length jsae enforces for RoPE models
    (penzai models have none); learned-position models use their table's size.

    Every layer on the paths it walks (embedding, blocks, attention, MLP, norms, unembedding) must be
    one jsae maps; any other layer raises :class:`UnsupportedArchitectureError` naming it and its path,
    including a :class:`ReplaceHeads` edit (convert edited models with :func:`from_penzai_edited`).
    """
    return _from_penzai(pz_model, n_ctx, name, None)


def from_penzai_edited(pz_model, n_ctx: int = 8192, name: str = "") -> tuple[Transformer, HookSpec]:
    """:func:`from_penzai` of a model carrying :class:`ReplaceHeads` edits: ``(model, hooks)``.

    ``model`` is the unedited jsae model and ``hooks`` holds one :class:`~jsae.models.hooks.Replace` per
    edit (at the ``z`` or ``result`` hook point it follows, in the same order), so
    ``forward(model, tokens, hooks=hooks)`` gives penzai's logits of the edited model. A patch value
    with ``batch``/``seq`` axes keeps them: run the hooks on tokens of that shape.
    """
    edits: list[_Edit] = []
    model = _from_penzai(pz_model, n_ctx, name, edits)
    return model, _edits_as_hooks(model.cfg, edits)


def _edits_as_hooks(cfg: ModelConfig, edits: list[_Edit]) -> HookSpec:
    """Each penzai ReplaceHeads as a jsae Replace edit that acts on its own layer only."""
    by_point: dict[str, list[Replace]] = {}
    for e in edits:
        mask, value = e.replace.mask, e.replace.value
        if not isinstance(mask, pz.nx.NamedArray) or dict(mask.named_shape) != {"heads": cfg.n_heads}:
            raise UnsupportedArchitectureError(
                f"the ReplaceHeads after hook point {e.point!r} of block {e.layer} has a mask of axes "
                f"{getattr(mask, 'named_shape', type(mask).__name__)}; jsae converts a mask of axes "
                f"{{'heads': {cfg.n_heads}}} (make it with jsae.models.penzai_head_mask)"
            )
        width = "projection" if e.point == "z" else "embedding"
        axes = ("batch", "seq", "heads", width)
        value = value if isinstance(value, pz.nx.NamedArray) else pz.nx.wrap(jnp.asarray(value))
        if set(value.named_shape) - set(axes) or value.positional_shape:
            raise UnsupportedArchitectureError(
                f"the ReplaceHeads value after hook point {e.point!r} of block {e.layer} has axes "
                f"{dict(value.named_shape)} and positional shape {value.positional_shape}; jsae converts named "
                f"axes among {axes}"
            )
        present = [a for a in axes if a in value.named_shape]
        v = value.unwrap(*present).astype(jnp.float32)
        v = v.reshape(tuple(value.named_shape[a] if a in present else 1 for a in axes)) if present else v
        layer_mask = np.zeros((cfg.n_layers, cfg.n_heads), np.float32)
        layer_mask[e.layer] = 1.0
        m = jnp.asarray(layer_mask) * mask.unwrap("heads").astype(jnp.float32)[None]
        values = jnp.zeros((cfg.n_layers, *v.shape), jnp.float32).at[e.layer].set(v)
        by_point.setdefault(e.point, []).append(Replace(m, values))
    return HookSpec(edits={p: tuple(rs) for p, rs in by_point.items()})


def _from_penzai(pz_model, n_ctx: int, name: str, edits: list[_Edit] | None) -> Transformer:
    if not isinstance(pz_model, model_parts.TransformerLM):
        raise _unsupported("the model", type(pz_model).__name__)
    body = [(p, s) for p, s in _flat(pz_model.body, "body", keep=(model_parts.TransformerBlock, *_BRANCH_KEEP))]
    body = [(p, s) for p, s in body if not isinstance(s, pz.nn.CastToDType)]
    if not body or not isinstance(body[0][1], pz.nn.EmbeddingLookup):
        raise _unsupported("the first layer (an EmbeddingLookup)", type(body[0][1]).__name__ if body else "nothing")
    table = body[0][1].table
    embed = _np(table.embeddings.value, "vocabulary", "embedding", stack=None)
    embed_scale, pos_embed, layers, infos = 1.0, None, [], []
    rest = body[1:]
    while rest and isinstance(rest[0][1], pz.nn.ConstantRescale | LearnedPositions):
        _, s = rest.pop(0)
        if isinstance(s, LearnedPositions):
            pos_embed = _np(s.table.value, "position", "embedding", stack=None)
        elif isinstance(s, pz.nn.ConstantRescale):  # (the loop admits only these two)
            embed_scale *= float(s.by)
    while rest and isinstance(rest[0][1], model_parts.TransformerBlock | pz.nn.LayerStack):
        path, s = rest.pop(0)
        if isinstance(s, pz.nn.LayerStack):
            d, info = _block(s.stacked_sublayers, s.stack_axis, path + ".stacked_sublayers")
            layers += [{k: (None if v is None else v[i]) for k, v in d.items()} for i in range(s.stack_axis_size)]
            infos += [info] * s.stack_axis_size
        else:
            d, info = _block(s, None, path, len(layers), edits)
            layers.append(d)
            infos.append(info)
    if not layers:
        raise _unsupported(
            "transformer blocks after the embedding", [f"{type(s).__name__} at {p}" for p, s in rest[:3]]
        )
    if len(rest) < 2:
        raise _unsupported("a final norm and an unembedding after the blocks", [type(s).__name__ for _, s in rest])
    kind, ln_f_w, ln_f_b, _ = _norm_params(rest[0][1], None, rest[0][0])
    head, final_softcap = rest[1][1], None
    if isinstance(head, pz.nn.EmbeddingDecode):
        tied = head.table.embeddings is table.embeddings or np.array_equal(
            _np(head.table.embeddings.value, "vocabulary", "embedding", stack=None), embed
        )
        W_U = None if tied else _np(head.table.embeddings.value, "embedding", "vocabulary", stack=None)
    elif isinstance(head, pz.nn.Linear):
        tied, W_U = False, _np(head.weights.value, "embedding", "vocabulary", stack=None)
    else:
        raise _unsupported(f"the unembedding (EmbeddingDecode or Linear) at {rest[1][0]}", type(head).__name__)
    for p, s in rest[2:]:
        if not isinstance(s, pz.nn.TanhSoftCap) or final_softcap is not None:
            raise _unsupported(f"layers after the unembedding (a TanhSoftCap at most) at {p}", type(s).__name__)
        final_softcap = float(s.soft_cap)
    cfg = _config(infos, layers[0], embed, pos_embed, kind, n_ctx, name, tied, embed_scale, final_softcap)
    return make_transformer(cfg, embed, layers, ln_f_w, ln_f_b, W_U=W_U, pos_embed=pos_embed)


def _config(infos, lay0, embed, pos_embed, kind, n_ctx, name, tied, embed_scale, final_softcap) -> ModelConfig:
    i0 = infos[0]
    for key in ("norm", "gated", "act", "parallel", "post_norms", "rope", "query_scale", "attn_softcap"):
        if any(info.get(key) != i0.get(key) for info in infos):
            raise _unsupported(f"blocks that differ in {key!r}", sorted({str(info.get(key)) for info in infos}))
    if (i0["norm"] == "rms") != i0["gated"]:
        raise _unsupported(
            "norm and MLP",
            f"{i0['norm']} norms with a {'gated' if i0['gated'] else 'plain'} MLP "
            "(jsae pairs RMSNorm with gated MLPs and LayerNorm with plain ones)",
        )
    rope = i0.get("rope")
    if (rope is None) == (pos_embed is None):
        raise _unsupported(
            "position information",
            "both rotary and learned positions" if rope else "neither rotary nor learned positions",
        )
    _, H, dh = lay0["W_Q"].shape
    K = lay0["W_K"].shape[1]
    default_scale = 1.0 / math.sqrt(dh)
    qs = i0["query_scale"]
    windows = tuple(info["window"] for info in infos)
    n = len(windows)  # the shortest repeating pattern of per-layer windows
    period = next(p for p in range(1, n + 1) if windows == (windows[:p] * n)[:n])
    return ModelConfig(
        arch="llama" if i0["norm"] == "rms" else "gpt2",
        n_layers=len(infos),
        d_model=embed.shape[1],
        n_heads=H,
        n_kv_heads=K,
        d_head=dh,
        d_mlp=lay0["W_in"].shape[1],
        vocab_size=embed.shape[0],
        n_ctx=pos_embed.shape[0] if pos_embed is not None else n_ctx,
        norm_eps=i0["eps"],
        rope_theta=rope[0] if rope else 10000.0,
        tied_embeddings=tied,
        name=name,
        mlp_act=None if i0["act"] == ("silu" if i0["gated"] else "gelu_tanh") else i0["act"],
        embed_scale=embed_scale,
        query_scale=None if abs(qs - default_scale) < 1e-7 * default_scale else qs,
        attn_softcap=i0["attn_softcap"],
        final_softcap=final_softcap,
        attn_window=windows[:period] if any(windows) else (),
        post_norms=i0["post_norms"],
        parallel_block=i0["parallel"],
        rotary_dim=rope[1] if rope and rope[1] not in (None, dh) else None,
    )
