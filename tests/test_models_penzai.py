"""penzai <-> jsae: logits against penzai's own forward and jsae's, hook layers against jsae's hooks."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import IOI_CLEAN, IOI_CORRUPT
from penzai import pz
from penzai.models.transformer.variants import gpt_neox
from penzai.models.transformer.variants import llamalike_common as llc
from penzai.toolshed.save_intermediates import SaveIntermediate

from jsae.models import (
    ModelError,
    UnsupportedArchitectureError,
    capture,
    forward,
    from_penzai,
    load,
    patch,
    to_penzai,
    zero_ablate,
)
from jsae.models._penzai import (
    HookPoint,
    ReplaceHeads,
    add_hook_points,
    from_penzai_edited,
    head_mask,
    penzai_logits,
    select_hooks,
)


def _randomised(pz_model, seed):
    """Every penzai parameter (norm scales too) moved off its initial value, so a swapped one shows."""
    for i, p in enumerate(pz.select(pz_model).at_instances_of(pz.Parameter).get_sequence()):
        k = jax.random.key(seed * 1000 + i)
        p.value = pz.nx.nmap(lambda a, k=k: a + 0.3 * jax.random.normal(k, a.shape, a.dtype))(p.value)
    return pz_model


def _penzai_run(pz_model, tokens):
    return np.asarray(penzai_logits(pz.freeze_params(pz_model), tokens))


# ---------------------------------------------------------------------------------------------------
# SmolLM2 (one short batch, one converted model per module)


@pytest.fixture(scope="module")
def smol_batch(smollm2):
    model, tok, _ = smollm2
    tokens, lengths = tok.encode_batch([IOI_CLEAN, "The capital of France is"])
    return np.asarray(tokens), np.asarray(lengths), np.asarray(forward(model, tokens)[0])


@pytest.fixture(scope="module")
def smol_pz(smollm2):
    return to_penzai(smollm2[0])


def _jitted(pz_model, tokens):
    return np.asarray(jax.jit(penzai_logits)(pz.freeze_params(pz_model), jnp.asarray(tokens)))


def test_smollm2_to_penzai_logits_match_jsae(smollm2, smol_pz, smol_batch):
    tokens, lengths, ref = smol_batch
    assert smol_pz.metadata.common_head_axes == {"head_groups": 3}
    assert smol_pz.metadata.query_only_head_axes == {"query_heads": 3}
    assert select_hooks(smol_pz, "result").count() == 30
    out = _jitted(smol_pz, tokens)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(out[i, :n], ref[i, :n], atol=2e-3, rtol=1e-4)


def test_penzai_llamalike_from_smollm2_weights_matches_jsae(smollm2, hf_smollm2, smol_batch):
    """penzai's own HF converter (not jsae's) builds SmolLM2; from_penzai of it gives jsae's logits."""
    hf, _ = hf_smollm2
    if not hasattr(hf.config, "rope_theta"):  # transformers 5 moved it; penzai 0.2.5 reads the old name
        hf.config.rope_theta = hf.config.rope_parameters["rope_theta"]
    pz_model = llc.llamalike_from_huggingface_model(hf)
    model = from_penzai(pz_model, n_ctx=smollm2[0].cfg.n_ctx)
    ref_cfg = smollm2[0].cfg
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_kv_heads, model.cfg.d_model) == (30, 9, 3, 576)
    assert model.cfg.rope_theta == ref_cfg.rope_theta and model.cfg.arch == "llama"
    tokens, lengths, ref = smol_batch
    out = np.asarray(forward(model, tokens)[0])
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(out[i, :n], ref[i, :n], atol=2e-3, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# tiny models


@pytest.fixture(scope="module")
def tiny_models(tiny_gpt2_dir, tiny_llama_dir):
    return {"gpt2": load(tiny_gpt2_dir[0])[0], "llama": load(tiny_llama_dir[0])[0]}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tiny_to_penzai_and_back(arch, tiny_models, rng):
    model = tiny_models[arch]
    tokens = rng.integers(0, model.cfg.vocab_size, (2, 13)).astype(np.int32)
    ref = np.asarray(forward(model, tokens)[0])
    pz_model = to_penzai(model)
    np.testing.assert_allclose(_penzai_run(pz_model, tokens), ref, atol=1e-4, rtol=1e-4)
    back = from_penzai(pz_model, n_ctx=model.cfg.n_ctx, name=model.cfg.name)
    assert back.cfg.norm_eps == pytest.approx(model.cfg.norm_eps, rel=1e-6)  # penzai keeps it as float32
    assert dataclasses.replace(back.cfg, norm_eps=model.cfg.norm_eps) == model.cfg
    np.testing.assert_allclose(np.asarray(forward(back, tokens)[0]), ref, atol=1e-4, rtol=1e-4)


GEMMA_VARIANTS = {
    # Gemma 1 shape: multi-query attention, GeGLU, tied embeddings scaled by sqrt(d_model)
    "gemma1_mqa": dict(num_kv_heads=1, query_head_multiplier=4),
    # Gemma 2 shape: GQA, alternating sliding/global layers, soft-caps, post-norms, custom query scale
    "gemma2_gqa": dict(
        num_kv_heads=2,
        query_head_multiplier=2,
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        final_logit_softcap=3.0,
        attn_logits_soft_cap=2.0,
        query_scaling_factor=0.3,
        attention_type=(llc.AttentionTypeSlidingWindowCausal(3), llc.AttentionTypeGlobalCausal()),
    ),
    # full multi-head attention in a LayerStack
    "gemma_mha_stack": dict(num_kv_heads=4, query_head_multiplier=1, use_layer_stack=True),
}


@pytest.mark.parametrize("variant", list(GEMMA_VARIANTS))
def test_gemma_variant_from_penzai_matches_penzai(variant, rng):
    cfg = llc.LlamalikeTransformerConfig(
        embedding_dim=32,
        projection_dim=8,
        mlp_hidden_dim=48,
        num_decoder_blocks=4,
        vocab_size=41,
        mlp_variant="geglu_approx",
        tie_embedder_and_logits=True,
        rope_wavelength=10_000,
        **GEMMA_VARIANTS[variant],
    )
    pz_model = _randomised(llc.build_llamalike_transformer(cfg, init_base_rng=jax.random.key(0)), 1)
    tokens = rng.integers(0, 41, (2, 11)).astype(np.int32)
    ref = _penzai_run(pz_model, tokens)
    model = from_penzai(pz_model)
    assert model.cfg.embed_scale == pytest.approx(np.sqrt(32)) and model.cfg.mlp_act == "gelu_tanh"
    # post-norms rescale small random attention/MLP outputs to unit RMS, amplifying float32 rounding
    # (different op order in penzai and jsae) to ~1e-3 at a few positions; a wrong weight gives O(1).
    tol = 3e-3 if cfg.use_post_attn_norm else 1e-4
    np.testing.assert_allclose(np.asarray(forward(model, tokens)[0]), ref, atol=tol, rtol=tol)
    if not cfg.use_layer_stack:  # and jsae -> penzai again keeps the logits
        np.testing.assert_allclose(_penzai_run(to_penzai(model), tokens), ref, atol=tol, rtol=tol)


def test_gpt_neox_from_penzai_matches_penzai(rng):
    cfg = gpt_neox.GPTNeoXTransformerConfig(
        num_attention_heads=4,
        embedding_dim=32,
        projection_dim=8,
        mlp_hidden_dim=48,
        num_decoder_blocks=2,
        vocab_size=41,
        activation_fn="gelu_exact",
        rope_subset_size=4,
        rope_wavelength=10_000.0,
        layernorm_epsilon=1e-6,
        parameter_dtype=jnp.float32,
        activation_dtype=jnp.float32,
    )
    pz_model = _randomised(gpt_neox.build_gpt_neox_transformer(cfg, init_base_rng=jax.random.key(0)), 2)
    tokens = rng.integers(0, 41, (2, 11)).astype(np.int32)
    model = from_penzai(pz_model)
    assert model.cfg.parallel_block and model.cfg.rotary_dim == 4 and model.cfg.mlp_act == "gelu"
    np.testing.assert_allclose(
        np.asarray(forward(model, tokens)[0]), _penzai_run(pz_model, tokens), atol=1e-4, rtol=1e-4
    )
    hooked = add_hook_points(pz_model)  # parallel blocks get hook points too, logits unchanged
    assert select_hooks(hooked, "result").count() == 2
    np.testing.assert_allclose(_penzai_run(hooked, tokens), _penzai_run(pz_model, tokens), rtol=2e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# hook layers found with pz.select, against jsae's own hooks


def _at(pz_model, point, layer):
    return pz.select(pz_model).at_instances_of(HookPoint).where(lambda h: h.point == point and h.layer == layer)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_penzai_capture_zero_ablate_patch_match_jsae_hooks(arch, tiny_models, rng):
    model = tiny_models[arch]
    cfg = model.cfg
    clean = rng.integers(0, cfg.vocab_size, (2, 9)).astype(np.int32)
    corrupt = clean.copy()
    corrupt[:, 2] = (corrupt[:, 2] + 1) % cfg.vocab_size
    pz_model = to_penzai(model)
    layer, head = 1, cfg.n_heads - 1

    # capture: a SaveIntermediate after the result hook of every layer
    saving = (
        pz.select(pz_model)
        .at_instances_of(HookPoint)
        .where(lambda h: h.point == "result")
        .apply(lambda h: pz.nn.Sequential([h, SaveIntermediate()]))
    )
    penzai_logits(saving, clean)
    saved = [
        s.saved.value.unwrap("batch", "seq", "heads", "embedding")
        for s in pz.select(saving).at_instances_of(SaveIntermediate).get_sequence()
    ]
    _, cache = forward(model, clean, hooks=capture("result"))
    np.testing.assert_allclose(np.stack(saved), np.asarray(cache["result"]), atol=1e-5)

    # zero-ablate one head
    ablated = _at(pz_model, "result", layer).apply(
        lambda h: pz.nn.Sequential([h, ReplaceHeads.zero(cfg.n_heads, [head])])
    )
    ref = np.asarray(forward(model, clean, hooks=zero_ablate(model, [(layer, head)]))[0])
    np.testing.assert_allclose(_penzai_run(ablated, clean), ref, atol=1e-4, rtol=1e-4)
    assert np.abs(ref - np.asarray(forward(model, clean)[0])).max() > 1e-3  # the ablation did something

    # patch one head of the corrupt run with its clean activation
    value = pz.select(saving).at_instances_of(SaveIntermediate).get_sequence()[layer].saved.value
    patched = _at(pz_model, "result", layer).apply(
        lambda h: pz.nn.Sequential([h, ReplaceHeads(head_mask(cfg.n_heads, [head]), value)])
    )
    ref = np.asarray(forward(model, corrupt, hooks=patch(model, cache["result"], [(layer, head)]))[0])
    np.testing.assert_allclose(_penzai_run(patched, corrupt), ref, atol=1e-4, rtol=1e-4)


def test_smollm2_penzai_zero_ablation_matches_jsae(smollm2, smol_pz):
    model = smollm2[0]
    tokens, _ = smollm2[1].encode_batch([IOI_CORRUPT])
    ablated = select_hooks(smol_pz, "result", 9).apply(lambda h: pz.nn.Sequential([h, ReplaceHeads.zero(9, [6])]))
    ref = np.asarray(forward(model, tokens, hooks=zero_ablate(model, [(9, 6)]))[0])
    np.testing.assert_allclose(_jitted(ablated, tokens)[0, -1], ref[0, -1], atol=2e-3, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# errors


def test_errors_name_what_was_found(tiny_models):
    with pytest.raises(UnsupportedArchitectureError, match="found Linear.*supports"):
        from_penzai(
            pz.nn.Linear(
                weights=pz.Parameter(value=pz.nx.wrap(jnp.ones(2)).tag("a"), label="w"),
                in_axis_names=(),
                out_axis_names=(),
            )
        )
    pz_model = to_penzai(tiny_models["llama"])
    odd = pz.select(pz_model).at_instances_of(pz.nn.Elementwise).apply(lambda e: pz.nn.Elementwise(jnp.tanh))
    with pytest.raises(UnsupportedArchitectureError, match="MLP activation: found .*tanh"):
        from_penzai(odd)
    with pytest.raises(ModelError, match="no HookPoint with point='resid'"):
        select_hooks(pz_model, "resid")
    cfg = llc.LlamalikeTransformerConfig(
        num_kv_heads=2,
        query_head_multiplier=1,
        embedding_dim=8,
        projection_dim=4,
        mlp_hidden_dim=8,
        num_decoder_blocks=2,
        vocab_size=5,
        mlp_variant="swiglu",
        tie_embedder_and_logits=False,
        use_layer_stack=True,
    )
    with pytest.raises(UnsupportedArchitectureError, match="LayerStack"):
        add_hook_points(llc.build_llamalike_transformer(cfg, init_base_rng=jax.random.key(0)))
    neox_like = dataclasses.replace(
        tiny_models["gpt2"], cfg=dataclasses.replace(tiny_models["gpt2"].cfg, parallel_block=True)
    )
    with pytest.raises(UnsupportedArchitectureError, match="GPT-NeoX"):
        to_penzai(neox_like)


# ---------------------------------------------------------------------------------------------------
# layers jsae has no counterpart for: refused with their path, never dropped; ReplaceHeads edits as hooks


@pytest.fixture(scope="module")
def tiny_llamalike():
    """A random penzai llamalike (GQA 2 x 2 heads, 2 unrolled blocks), hook points added."""
    cfg = llc.LlamalikeTransformerConfig(
        num_kv_heads=2,
        query_head_multiplier=2,
        embedding_dim=16,
        projection_dim=4,
        mlp_hidden_dim=24,
        num_decoder_blocks=2,
        vocab_size=23,
        mlp_variant="swiglu",
        tie_embedder_and_logits=False,
    )
    return _randomised(llc.build_llamalike_transformer(cfg, init_base_rng=jax.random.key(3)), 3)


def _append(layer):
    return pz.nn.Sequential([layer, pz.nn.ConstantRescale(by=0.5)])


EXTRA_LAYER_SITES = {
    # where a ConstantRescale(0.5) is appended, and the path that the error must name
    "attention output": (lambda m: _at_attn(m, "attn_value_to_output"), r"ConstantRescale at .*attn_value_to_output"),
    "values": (lambda m: _at_attn(m, "input_to_value"), r"ConstantRescale at .*input_to_value"),
    "MLP": (
        lambda m: (
            pz.select(m).at_instances_of(pz.nn.BranchAndMultiplyTogether).at(lambda b: b.branches[1]).apply(_append)
        ),
        r"ConstantRescale at .*branches\[1\]",
    ),
    "norm": (
        lambda m: pz.select(m).at_instances_of(pz.nn.RMSLayerNorm).at(lambda n: n.sublayers[1]).apply(_append),
        r"ConstantRescale at body.*sublayers\[1\]",
    ),
    "unembedding": (
        lambda m: pz.select(m).at(lambda m: m.body.sublayers[-1]).apply(_append),
        r"after the unembedding.* at body\.sublayers\[4\]\.sublayers\[1\]: found ConstantRescale",
    ),
}


def _at_attn(m, field):
    return pz.select(m).at_instances_of(pz.nn.Attention).at(lambda a: getattr(a, field)).apply(_append)


@pytest.mark.parametrize("site", list(EXTRA_LAYER_SITES))
def test_from_penzai_refuses_a_layer_it_cannot_map(site, tiny_llamalike, rng):
    edit, path = EXTRA_LAYER_SITES[site]
    edited = edit(tiny_llamalike)
    tokens = rng.integers(0, 23, (1, 7)).astype(np.int32)
    # the extra layer changes penzai's own forward, so a conversion that dropped it would be wrong
    assert np.abs(_penzai_run(edited, tokens) - _penzai_run(tiny_llamalike, tokens)).max() > 1e-2
    with pytest.raises(UnsupportedArchitectureError, match=path):
        from_penzai(edited)
    with pytest.raises(UnsupportedArchitectureError, match=path):
        from_penzai(add_hook_points(edited))


def test_from_penzai_converts_a_rescaled_embedding(tiny_llamalike, rng):
    """A ConstantRescale after the embedding is a jsae embed_scale: converted, logits as penzai's."""
    edited = pz.select(tiny_llamalike).at(lambda m: m.body.sublayers[0]).apply(_append)
    tokens = rng.integers(0, 23, (1, 7)).astype(np.int32)
    ref = _penzai_run(edited, tokens)
    assert np.abs(ref - _penzai_run(tiny_llamalike, tokens)).max() > 1e-2
    model = from_penzai(edited)
    assert model.cfg.embed_scale == 0.5
    np.testing.assert_allclose(np.asarray(forward(model, tokens)[0]), ref, atol=1e-4, rtol=1e-4)


def test_replace_heads_edits_convert_to_jsae_hooks(tiny_llamalike, rng):
    """Two heads zeroed at ``result`` of block 1 and one head patched at ``z`` of block 0 (penzai layers)."""
    tokens = rng.integers(0, 23, (2, 9)).astype(np.int32)
    hooked = add_hook_points(tiny_llamalike)
    saving = select_hooks(hooked, "z", 0).apply(lambda h: pz.nn.Sequential([h, SaveIntermediate()]))
    penzai_logits(saving, tokens[::-1])  # z of block 0 on another input, the patch value
    z_other = pz.select(saving).at_instances_of(SaveIntermediate).get_sequence()[0].saved.value
    edited = select_hooks(hooked, "result", 1).apply(lambda h: pz.nn.Sequential([h, ReplaceHeads.zero(4, [0, 3])]))
    edited = select_hooks(edited, "z", 0).apply(
        lambda h: pz.nn.Sequential([h, ReplaceHeads(head_mask(4, [2]), z_other)])
    )
    with pytest.raises(UnsupportedArchitectureError, match="ReplaceHeads edit at .*from_penzai_edited"):
        from_penzai(edited)
    model, hooks = from_penzai_edited(edited)
    ref = _penzai_run(edited, tokens)
    assert np.abs(ref - _penzai_run(hooked, tokens)).max() > 1e-2  # the edits change the logits
    np.testing.assert_allclose(np.asarray(forward(model, tokens, hooks=hooks)[0]), ref, atol=1e-4, rtol=1e-4)
    unedited, no_hooks = from_penzai_edited(hooked)
    assert no_hooks.edits == {}
    np.testing.assert_allclose(
        np.asarray(forward(unedited, tokens)[0]), _penzai_run(hooked, tokens), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(qk_norm="head"), "q/k norms"),
        (dict(rope_type="llama3", rope_scaling=(8.0, 1.0, 4.0, 8192.0)), "RoPE scaling 'llama3'"),
        (dict(rope_local_theta=10000.0), "separate RoPE base"),
    ],
)
def test_to_penzai_refuses_what_the_llamalike_builder_lacks(tiny_models, change, named):
    """Qwen3/Gemma 3 q/k norms, Llama 3.1 RoPE scaling and Gemma 3's local RoPE base have no penzai
    llamalike equivalent: converting would give a different model, so to_penzai names the feature."""
    model = tiny_models["llama"]
    odd = dataclasses.replace(model, cfg=dataclasses.replace(model.cfg, **change))
    with pytest.raises(UnsupportedArchitectureError, match=named):
        to_penzai(odd)
    no_prenorm = dataclasses.replace(model, blocks=dataclasses.replace(model.blocks, ln1_w=None))
    with pytest.raises(UnsupportedArchitectureError, match="no pre-norms"):
        to_penzai(no_prenorm)
