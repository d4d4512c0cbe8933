"""Hooks (capture / ablate / patch / add / custom edits) checked against HF transformers with torch hooks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import IOI_CLEAN, IOI_CORRUPT

torch = pytest.importorskip("torch")

from jsae.models import (
    HookSpec,
    Replace,
    capture,
    edit,
    forward,
    head_mask,
    load,
    mean_ablate,
    patch,
    zero_ablate,
)
from jsae.models import hooks as H


def _attn_modules(hf):
    """(attention module, output projection) per layer, for HF GPT-2 or Llama."""
    if hasattr(hf, "transformer"):
        return [(b.attn, b.attn.c_proj) for b in hf.transformer.h]
    return [(lay.self_attn, lay.self_attn.o_proj) for lay in hf.model.layers]


def _layers(hf):
    return list(hf.transformer.h) if hasattr(hf, "transformer") else list(hf.model.layers)


def hf_run(hf, tokens, *, z_fn=None, layer_out_fn=None, grad_wrt_z=False, metric=None, attentions=False):
    """Run HF with optional edits of the per-head ``z`` (input of the output projection, [B, T, H, dh])
    and of each layer's output. Returns a dict with logits, z, attn_out, hidden, attentions, z_grad."""
    n_heads = hf.config.num_attention_heads if hasattr(hf.config, "num_attention_heads") else hf.config.n_head
    rec = {"z": [], "attn_out": [], "deltas": []}
    handles = []
    for layer, (_attn, proj) in enumerate(_attn_modules(hf)):

        def pre(mod, args, layer=layer):
            z = args[0]
            B, T, HD = z.shape
            z4 = z.reshape(B, T, n_heads, HD // n_heads)
            if z_fn is not None:
                z4 = z_fn(layer, z4)
            if grad_wrt_z:
                delta = torch.zeros_like(z4, requires_grad=True)
                rec["deltas"].append(delta)
                z4 = z4 + delta
            rec["z"].append(z4.detach().numpy().copy())
            return (z4.reshape(B, T, HD),) + tuple(args[1:])

        def post(mod, args, out):
            rec["attn_out"].append(out.detach().numpy().copy())

        handles += [proj.register_forward_pre_hook(pre), proj.register_forward_hook(post)]
        if layer_out_fn is not None:

            def lay_post(mod, args, out, layer=layer):
                if isinstance(out, tuple):
                    return (layer_out_fn(layer, out[0]),) + out[1:]
                return layer_out_fn(layer, out)

            handles.append(_layers(hf)[layer].register_forward_hook(lay_post))
    try:
        with torch.set_grad_enabled(grad_wrt_z):
            out = hf(
                torch.as_tensor(np.asarray(tokens), dtype=torch.long),
                output_hidden_states=True,
                output_attentions=attentions,
            )
            if grad_wrt_z:
                metric(out.logits).backward()
    finally:
        for h in handles:
            h.remove()
    rec["logits"] = out.logits.detach().numpy()
    rec["hidden"] = [h.detach().numpy() for h in out.hidden_states]
    if attentions:
        rec["attentions"] = [a.detach().numpy() for a in out.attentions]
    if grad_wrt_z:
        rec["z_grad"] = np.stack([d.grad.numpy() for d in rec["deltas"]])
    return rec


@pytest.fixture(scope="module", params=["tiny_gpt2_dir", "tiny_llama_dir"])
def tiny(request):
    path, hf = request.getfixturevalue(request.param)
    model, _, _ = load(path)
    return model, hf


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(1).integers(0, 90, size=(2, 9)).astype(np.int32)


def test_capture_all_points_matches_hf(tiny, tokens):
    model, hf = tiny
    ref = hf_run(hf, tokens, attentions=True)
    spec = HookSpec(capture=H.POINTS)
    logits, cache = forward(model, tokens, hooks=spec)
    plain, _ = forward(model, tokens)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(forward(model, tokens, hooks=capture("resid_pre"))[0]))
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4)
    L = model.cfg.n_layers
    for layer in range(L):
        np.testing.assert_allclose(cache["z"][layer], ref["z"][layer], atol=1e-5)
        np.testing.assert_allclose(cache["attn_out"][layer], ref["attn_out"][layer], atol=1e-5)
        b_O = 0 if model.blocks.b_O is None else model.blocks.b_O[layer]
        np.testing.assert_allclose(cache["result"][layer].sum(2) + b_O, ref["attn_out"][layer], atol=1e-5)
        np.testing.assert_allclose(cache["pattern"][layer], ref["attentions"][layer], atol=1e-5)
        np.testing.assert_allclose(cache["resid_pre"][layer], ref["hidden"][layer], atol=1e-5)
    np.testing.assert_allclose(cache["resid_post"][: L - 1], np.stack(ref["hidden"][1:L]), atol=1e-5)
    assert cache["result"].shape == (L, *tokens.shape, model.cfg.n_heads, model.cfg.d_model)


def test_zero_and_mean_ablation_match_hf(tiny, tokens):
    model, hf = tiny
    heads = [(0, 1), (1, 3)]
    logits, _ = forward(model, tokens, hooks=zero_ablate(model, heads))
    ref = hf_run(hf, tokens, z_fn=lambda l, z: _set_heads(z, l, heads, 0.0))
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4)

    means = np.random.default_rng(2).normal(size=(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head))
    logits, _ = forward(model, tokens, hooks=mean_ablate(model, means.astype(np.float32), heads, point="z"))
    ref = hf_run(hf, tokens, z_fn=lambda l, z: _set_heads(z, l, heads, torch.tensor(means, dtype=torch.float32)))
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4)


def _set_heads(z, layer, heads, value):
    z = z.clone()
    for lay, h in heads:
        if lay == layer:
            z[:, :, h] = value if not torch.is_tensor(value) or value.ndim == 0 else value[lay, h]
    return z


def test_vmap_patch_each_head_from_corrupted_run_matches_hf(tiny, tokens):
    """Activation patching of every single head, batched with vmap over the [L, H] mask."""
    model, hf = tiny
    corrupt = tokens.copy()
    corrupt[:, 2] = (corrupt[:, 2] + 7) % 90
    _, cache = forward(model, corrupt, hooks=capture("z"))
    ref_corrupt_z = hf_run(hf, corrupt)["z"]
    L, Hn = model.cfg.n_layers, model.cfg.n_heads
    masks = jnp.eye(L * Hn).reshape(L * Hn, L, Hn)

    @jax.jit
    def patched_logits(mask):
        spec = HookSpec(edits={"z": (Replace(mask, cache["z"]),)})
        return forward(model, tokens, hooks=spec)[0]

    out = np.asarray(jax.vmap(patched_logits)(masks))
    for i in range(L * Hn):
        lay, h = divmod(i, Hn)

        def z_fn(layer, z, lay=lay, h=h):
            if layer == lay:
                z = z.clone()
                z[:, :, h] = torch.as_tensor(ref_corrupt_z[lay][:, :, h])
            return z

        np.testing.assert_allclose(out[i], hf_run(hf, tokens, z_fn=z_fn)["logits"], atol=1e-4)


def test_grad_wrt_per_head_delta_matches_torch(tiny, tokens):
    """Attribution patching: d(metric)/d(per-head z) through the whole forward."""
    model, hf = tiny
    L, Hn, dh = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head

    def metric(delta):
        logits, _ = forward(model, tokens, hooks=H.add("z", delta))
        return logits[:, -1, 5].sum() - logits[:, -1, 7].sum()

    g = jax.grad(metric)(jnp.zeros((L, *tokens.shape, Hn, dh)))
    ref = hf_run(hf, tokens, grad_wrt_z=True, metric=lambda lo: lo[:, -1, 5].sum() - lo[:, -1, 7].sum())
    np.testing.assert_allclose(np.asarray(g), ref["z_grad"], atol=1e-5)


def test_steering_add_and_custom_edit_match_hf(tiny, tokens):
    model, hf = tiny
    L, D = model.cfg.n_layers, model.cfg.d_model
    v = np.random.default_rng(3).normal(size=D).astype(np.float32)
    delta = np.zeros((L, D), np.float32)
    delta[0] = v
    logits, _ = forward(model, tokens, hooks=H.add("resid_post", delta))
    ref = hf_run(hf, tokens, layer_out_fn=lambda l, x: x + torch.as_tensor(v) if l == 0 else x)
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4)

    # a custom edit (stand-in for SAE splicing): scale layer 0's output by 0.5
    spec = edit("resid_post", _halve_layer0)
    logits, _ = forward(model, tokens, hooks=spec)
    ref = hf_run(hf, tokens, layer_out_fn=lambda l, x: 0.5 * x if l == 0 else x)
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4)


def _halve_layer0(x, layer, per_layer, shared):
    return jnp.where(layer == 0, 0.5 * x, x)


# --------------------------------------------------------------------------------- SmolLM2 (GQA, 270 heads)


def test_smollm2_head_results_sum_to_attention_output(smollm2, hf_smollm2):
    model, tok, _ = smollm2
    hf, _ = hf_smollm2
    tokens, _ = tok.encode_batch([IOI_CLEAN])
    logits, cache = forward(model, tokens, hooks=capture("result", "z"))
    ref = hf_run(hf, tokens)
    assert cache["result"].shape == (30, 1, tokens.shape[1], 9, 576)
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-3)  # capturing changes nothing
    for layer in (0, 14, 29):
        np.testing.assert_allclose(cache["z"][layer], ref["z"][layer], atol=2e-4)
        np.testing.assert_allclose(cache["result"][layer].sum(2), ref["attn_out"][layer], atol=2e-4)


def test_smollm2_patching_own_and_corrupted_activations(smollm2, hf_smollm2):
    model, tok, _ = smollm2
    hf, _ = hf_smollm2
    tokens, _ = tok.encode_batch([IOI_CLEAN, IOI_CORRUPT])
    clean, corrupt = tokens[:1], tokens[1:]
    assert clean.shape == corrupt.shape
    ref_clean = hf_run(hf, clean)["logits"]
    ref_corrupt = hf_run(hf, corrupt)["logits"]

    _, own = forward(model, clean, hooks=capture("result"))
    logits, _ = forward(model, clean, hooks=patch(model, own["result"], heads=None))
    np.testing.assert_allclose(np.asarray(logits), ref_clean, atol=1e-3)

    _, cache_c = forward(model, corrupt, hooks=capture("result"))
    logits, _ = forward(model, clean, hooks=patch(model, cache_c["result"], heads=head_mask(model)))
    same = clean[0] == corrupt[0]  # positions whose token is the same in both prompts
    assert same[-1] and not same.all()
    np.testing.assert_allclose(np.asarray(logits)[0, same], ref_corrupt[0, same], atol=1e-3)
    assert not np.allclose(np.asarray(logits)[0, -1], ref_clean[0, -1], atol=1e-2)


def test_layer_range_and_unembed_match_hf(tiny, tokens):
    from jsae.models import ModelError, layer_range, unembed

    model, hf = tiny
    ref = hf_run(hf, tokens)
    L = model.cfg.n_layers
    _, cache = forward(layer_range(model, 0, 1), tokens, hooks=capture("resid_post"), logits=False)
    np.testing.assert_allclose(cache["resid_post"][0], ref["hidden"][1], rtol=1e-4, atol=1e-4)
    _, full = forward(model, tokens, hooks=capture("resid_post"), logits=False)
    np.testing.assert_allclose(unembed(model, full["resid_post"][L - 1]), ref["logits"], rtol=1e-4, atol=1e-4)
    lengths = np.array([tokens.shape[1], 4])  # causal: logits at position 3 ignore the tokens after it
    last, _ = forward(model, tokens, lengths=lengths, logits="last")
    np.testing.assert_allclose(last, ref["logits"][np.arange(2), lengths - 1], rtol=1e-4, atol=1e-4)
    assert layer_range(model, 1).cfg.n_layers == L - 1
    with pytest.raises(ModelError, match="out of range"):
        layer_range(model, 0, L + 1)
