"""jsae.models.flax on small flax transformers written here (linen and nnx), against per-head outputs
computed by hand in numpy from their weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

flax = pytest.importorskip("flax")
import flax.linen as nn
from flax import nnx

from jsae.models import HookError
from jsae.models.flax import AttentionHeads, harvest, patcher, runner

L, H, DH, D, V, T = 2, 3, 4, 12, 17, 6


class LinenAttn(nn.Module):
    @nn.compact
    def __call__(self, x):
        B, T_, _ = x.shape
        q, k, v = (nn.Dense(H * DH, name=n)(x).reshape(B, T_, H, DH) for n in ("q", "k", "v"))
        s = jnp.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(DH)
        s = jnp.where(jnp.tril(jnp.ones((T_, T_), bool)), s, -1e30)
        z = jnp.einsum("bhqk,bkhe->bqhe", jax.nn.softmax(s, -1), v).reshape(B, T_, H * DH)
        return nn.Dense(D, name="out")(z)


class LinenLM(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(V, D, name="embed")(tokens)
        for i in range(L):
            x = x + LinenAttn(name=f"block_{i}")(nn.LayerNorm(name=f"ln_{i}")(x))
            x = x + nn.Dense(D, name=f"mlp_{i}")(jax.nn.gelu(x))
        return nn.Dense(V, name="unembed")(x)


class NnxAttn(nnx.Module):
    def __init__(self, rngs):
        self.q, self.k, self.v = (nnx.Linear(D, H * DH, rngs=rngs) for _ in range(3))
        self.out = nnx.Linear(H * DH, D, rngs=rngs)

    def __call__(self, x):
        B, T_, _ = x.shape
        q, k, v = (f(x).reshape(B, T_, H, DH) for f in (self.q, self.k, self.v))
        s = jnp.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(DH)
        s = jnp.where(jnp.tril(jnp.ones((T_, T_), bool)), s, -1e30)
        return self.out(jnp.einsum("bhqk,bkhe->bqhe", jax.nn.softmax(s, -1), v).reshape(B, T_, H * DH))


class NnxLM(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(V, D, rngs=rngs)
        self.blocks = (
            nnx.List([NnxAttn(rngs) for _ in range(L)]) if hasattr(nnx, "List") else [NnxAttn(rngs) for _ in range(L)]
        )
        self.unembed = nnx.Linear(D, V, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        for b in self.blocks:
            x = x + b(x)
        return self.unembed(x)


def _np_attn_heads(x, p):
    """numpy oracle: per-head outputs [B, T, H, D] of one attention from its weight dict."""
    B = x.shape[0]
    q, k, v = ((x @ np.asarray(p[n]["kernel"]) + np.asarray(p[n]["bias"])).reshape(B, T, H, DH) for n in "qkv")
    s = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(DH)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -1e30)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    z = np.einsum("bhqk,bkhe->bqhe", a, v)
    return np.einsum("bqhe,hed->bqhd", z, np.asarray(p["out"]["kernel"]).reshape(H, DH, D)), np.asarray(
        p["out"]["bias"]
    )


def _np_layernorm(x, p, eps=1e-6):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _np_linen(params, tokens, edit=None):
    """numpy forward of LinenLM; per-head outputs [L, B, T, H, D]; ``edit`` = (layer, head, value [B, T, D])
    replaces that head's output."""
    x = np.asarray(params["embed"]["embedding"])[tokens]
    results = []
    for i in range(L):
        r, b_o = _np_attn_heads(_np_layernorm(x, params[f"ln_{i}"]), params[f"block_{i}"])
        results.append(r.copy())
        if edit is not None and edit[0] == i:
            r[:, :, edit[1]] = edit[2]
        x = x + r.sum(2) + b_o
        h = np.asarray(jax.nn.gelu(jnp.asarray(x)))
        x = x + h @ np.asarray(params[f"mlp_{i}"]["kernel"]) + np.asarray(params[f"mlp_{i}"]["bias"])
    return x @ np.asarray(params["unembed"]["kernel"]) + np.asarray(params["unembed"]["bias"]), np.stack(results)


@pytest.fixture(scope="module")
def linen_lm():
    model = LinenLM()
    tokens = np.random.default_rng(0).integers(0, V, (4, T)).astype(np.int32)
    variables = model.init(jax.random.key(0), tokens)
    heads = AttentionHeads.from_template("block_{layer}/out", L, H)
    return model, variables, heads, tokens


def test_linen_per_head_outputs_match_hand_computed(linen_lm):
    model, variables, heads, tokens = linen_lm
    out, result = runner(model, heads, variables)(tokens)
    ref_out, ref_result = _np_linen(variables["params"], tokens)
    np.testing.assert_allclose(np.asarray(result), ref_result, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out), ref_out, atol=1e-4)


def test_linen_harvest_is_trainer_shaped(linen_lm):
    model, variables, heads, tokens = linen_lm
    lengths = np.array([6, 3, 5, 1])
    acts = harvest(model, heads, tokens, lengths, variables=variables, positions="mean", batch_size=3)
    _, ref = _np_linen(variables["params"], tokens)  # [L, B, T, H, D]
    assert acts.shape == (L * H, 4, D)
    for layer, head, row in [(0, 0, 0), (1, 2, 3), (1, 1, 1)]:
        np.testing.assert_allclose(
            acts[layer * H + head, row], ref[layer, row, : lengths[row], head].mean(0), atol=1e-5
        )
    every = harvest(model, heads, tokens, lengths, variables=variables, positions="all")
    assert every.shape == (L * H, lengths.sum(), D)
    np.testing.assert_allclose(every[1 * H + 2, 6:9], ref[1, 1, :3, 2], atol=1e-5)  # row 1 follows row 0's 6 tokens


def test_linen_zero_ablate_and_patch_vmap_grad(linen_lm):
    model, variables, heads, tokens = linen_lm
    patch = patcher(model, heads, variables)
    mask = np.zeros((L, H), np.float32)
    mask[0, 1] = 1
    ref_out, _ = _np_linen(variables["params"], tokens, edit=(0, 1, 0.0))
    np.testing.assert_allclose(np.asarray(patch(tokens, mask)), ref_out, atol=1e-4)

    # patch head (0, 1) with its output on other tokens
    other = (tokens + 5) % V
    _, other_result = runner(model, heads, variables)(other)
    ref_out, _ = _np_linen(variables["params"], tokens, edit=(0, 1, np.asarray(other_result[0, :, :, 1])))
    np.testing.assert_allclose(np.asarray(patch(tokens, mask, other_result)), ref_out, atol=1e-4)

    # vmap over one-head masks (activation patching) equals patching each head by itself
    masks = jnp.eye(L * H).reshape(L * H, L, H)
    metric = lambda o: o[:, -1, 0].sum()
    each = jax.vmap(lambda m: metric(patch(tokens, m, other_result)))(masks)
    for i in (0, 4):
        np.testing.assert_allclose(each[i], metric(patch(tokens, masks[i], other_result)), rtol=1e-5)
    # grad w.r.t. the mask at 0 (attribution patching) matches a finite difference
    g = jax.grad(lambda m: metric(patch(tokens, m, other_result)))(jnp.zeros((L, H)))
    eps = 1e-3
    fd = (metric(patch(tokens, masks[4] * eps, other_result)) - metric(patch(tokens, masks[4] * 0, other_result))) / eps
    np.testing.assert_allclose(g.reshape(-1)[4], fd, rtol=2e-2, atol=1e-3)


def test_nnx_per_head_outputs_and_ablation():
    model = NnxLM(nnx.Rngs(0))
    tokens = np.random.default_rng(1).integers(0, V, (2, T)).astype(np.int32)
    heads = AttentionHeads.from_template("blocks/{layer}/out", L, H)
    before = np.asarray(model(tokens))
    out, result = runner(model, heads)(tokens)
    np.testing.assert_allclose(np.asarray(out), before, atol=1e-5)
    # hand computation from the nnx weights
    x = np.asarray(model.embed.embedding[...])[tokens]
    for i, blk in enumerate(model.blocks):
        p = {
            n: {"kernel": getattr(blk, n).kernel[...], "bias": getattr(blk, n).bias[...]}
            for n in ("q", "k", "v", "out")
        }
        r, b_o = _np_attn_heads(x, p)
        np.testing.assert_allclose(np.asarray(result[i]), r, atol=1e-5)
        x = x + r.sum(2) + b_o
    mask = np.zeros((L, H), np.float32)
    mask[1, 2] = 1
    ablated = jax.jit(lambda t, m: patcher(model, heads)(t, m))(tokens, mask)
    expect = before - np.asarray(result[1, :, :, 2]) @ np.asarray(model.unembed.kernel[...])
    np.testing.assert_allclose(np.asarray(ablated), expect, atol=1e-4)
    np.testing.assert_allclose(np.asarray(model(tokens)), before, atol=1e-6)  # the model itself is unchanged


def test_errors_name_the_paths(linen_lm):
    model, variables, _, tokens = linen_lm
    with pytest.raises(HookError, match=r"\['block_0/attn/out'\] did not run.*block_0/out"):
        runner(model, AttentionHeads(("block_0/attn/out",), H), variables)(tokens)
    with pytest.raises(HookError, match="has no 'attn'"):
        runner(NnxLM(nnx.Rngs(0)), AttentionHeads(("blocks/0/attn/out",), H))(tokens)
    with pytest.raises(HookError, match="mask must have shape"):
        patcher(model, AttentionHeads.from_template("block_{layer}/out", L, H), variables)(tokens, np.ones((3, 3)))


# ---------------------------------------------------------------------------------------------------
# shapes checked against the parameters: flax's own MultiHeadDotProductAttention (kernel [H, dh, D])


class LinenMHA(nn.Module):
    """One flax ``MultiHeadDotProductAttention`` (4 heads of size 4, no mask) on embedded tokens."""

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(V, D, name="embed")(tokens)
        return nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=16, out_features=D, name="attn")(x)


def test_flax_mha_heads_match_hand_computed_and_wrong_n_heads_raises():
    model = LinenMHA()
    tokens = np.random.default_rng(2).integers(0, V, (2, T)).astype(np.int32)
    variables = model.init(jax.random.key(1), tokens)
    p = jax.tree.map(np.asarray, variables["params"])
    x = p["embed"]["embedding"][tokens]
    q, k, v = (
        np.einsum("btd,dhe->bthe", x, p["attn"][n]["kernel"]) + p["attn"][n]["bias"] for n in ("query", "key", "value")
    )
    s = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(4)
    a = np.exp(s - s.max(-1, keepdims=True))
    z = np.einsum("bhqk,bkhe->bqhe", a / a.sum(-1, keepdims=True), v)
    ref = np.einsum("bqhe,hed->bqhd", z, p["attn"]["out"]["kernel"])  # [B, T, 4, D]
    _, result = runner(model, AttentionHeads(("attn/out",), 4), variables)(tokens)
    np.testing.assert_allclose(np.asarray(result[0]), ref, atol=1e-5)
    # n_heads=2 would merge heads (0, 1) and (2, 3): refused, naming the module and the kernel's shape
    with pytest.raises(HookError, match=r"'attn/out'.*'kernel' has shape \[4, 4, 12\].*4 heads, but n_heads=2"):
        runner(model, AttentionHeads(("attn/out",), 2), variables)(tokens)


class LinenRawWO(nn.Module):
    """Attention whose output weight is a raw ``[H, dh, D]`` parameter of the attention module itself
    (values from a ``Dense`` submodule, or from a raw parameter too when ``dh`` is given)."""

    dh: int | None = None

    @nn.compact
    def __call__(self, x):
        B, T_, _ = x.shape
        dh = self.dh or DH
        if self.dh is None:
            v = nn.Dense(H * DH, name="v")(x).reshape(B, T_, H, DH)
        else:
            v = jnp.einsum("btd,dhe->bthe", x, self.param("w_v", nn.initializers.normal(0.1), (D, H, dh)))
        w_o = self.param("w_o", nn.initializers.normal(0.1), (H, dh, D))
        return jnp.einsum("bthe,hed->btd", v, w_o)


def test_raw_head_weight_named_with_kernel_gets_a_clear_error():
    model = LinenRawWO()
    x = np.random.default_rng(3).normal(size=(2, T, D)).astype(np.float32)
    variables = model.init(jax.random.key(2), x)
    # the named module's input is x [B, T, D], not the heads' values [B, T, H, dh] (here D = H * dh)
    with pytest.raises(HookError, match=r"module '' \(parameter 'w_o' of shape \[3, 4, 12\]\) has submodules \['v'\]"):
        runner(model, AttentionHeads(("",), H, kernel="w_o"), variables)(x)
    # all raw parameters (no submodules), heads of size 2: its input [B, T, 12] is not z [B, T, 3, 2] or [B, T, 6]
    raw = LinenRawWO(dh=2)
    with pytest.raises(
        HookError,
        match=r"module '': parameter 'w_o' has shape \[3, 2, 12\].*\[\.\.\., 3, 2\] or \[\.\.\., 6\].*\[2, 6, 12\]",
    ):
        runner(raw, AttentionHeads(("",), H, kernel="w_o"), raw.init(jax.random.key(2), x))(x)
    bad = LinenMHA()
    tokens = np.zeros((1, T), np.int32)
    with pytest.raises(HookError, match=r"'attn/out': parameter 'bias' has shape \[12\]; jsae reads .*\[H, dh, D\]"):
        runner(bad, AttentionHeads(("attn/out",), 4, kernel="bias"), bad.init(jax.random.key(0), tokens))(tokens)
