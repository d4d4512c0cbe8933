"""SAELens-format load/save: round trips, a numpy oracle reading the raw files, the real sae_lens package
(when installed) and one clear error per bad input."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jsae.io import (
    SAELensFormatError,
    hook_name,
    load_saelens,
    load_saelens_stack,
    parse_hook_name,
    save_saelens,
    save_saelens_stack,
)
from jsae.sae import GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE, batchtopk, concat, index

D_IN, D_SAE, K = 6, 10, 3
ARCHS = ("standard", "topk", "jumprelu", "gated")


def random_sae(arch: str, seed: int, apply_b_dec_to_input: bool = True):
    """A jsae SAE of the given SAELens architecture with random (untied) weights."""
    r = np.random.default_rng(seed)
    w = {
        "W_enc": r.normal(size=(D_IN, D_SAE)),
        "b_enc": 0.3 * r.normal(size=D_SAE),
        "W_dec": r.normal(size=(D_SAE, D_IN)),
        "b_dec": 0.2 * r.normal(size=D_IN),
    }
    w = {k: jnp.asarray(v, jnp.float32) for k, v in w.items()}
    common = dict(apply_b_dec_to_input=apply_b_dec_to_input, **w)
    if arch == "standard":
        return ReLUSAE(unit_norm_decoder=False, **common)
    if arch == "topk":
        return TopKSAE(k=K, k_aux=2, **common)
    if arch == "jumprelu":
        return JumpReLUSAE(
            threshold=jnp.asarray(np.abs(r.normal(size=D_SAE)) * 0.5, jnp.float32),
            bandwidth=0.001,
            unit_norm_decoder=False,
            l0_grad_to_pre=True,
            **common,
        )
    return GatedSAE(
        r_mag=jnp.asarray(0.3 * r.normal(size=D_SAE), jnp.float32),
        b_mag=jnp.asarray(0.3 * r.normal(size=D_SAE), jnp.float32),
        unit_norm_decoder=False,
        **common,
    )


def numpy_encode(directory, x: np.ndarray) -> np.ndarray:
    """SAELens' encode formulas (saes/*_sae.py), written in numpy from the raw cfg.json + safetensors."""
    cfg = json.loads((directory / "cfg.json").read_text())
    t = {k: v.astype(np.float64) for k, v in load_file(str(directory / "sae_weights.safetensors")).items()}
    xc = x - t["b_dec"] if cfg["apply_b_dec_to_input"] else x
    relu = lambda a: np.maximum(a, 0.0)
    arch = cfg["architecture"]
    if arch == "gated":
        gate = (xc @ t["W_enc"] + t["b_gate"]) > 0
        return gate * relu(xc @ (t["W_enc"] * np.exp(t["r_mag"])) + t["b_mag"])
    pre = xc @ t["W_enc"] + t["b_enc"]
    if arch == "standard":
        return relu(pre)
    if arch == "jumprelu":
        return relu(pre) * (pre > t["threshold"])
    assert arch == "topk"
    out = np.zeros_like(pre)
    top = np.argsort(-pre, axis=-1)[:, : cfg["k"]]
    np.put_along_axis(out, top, relu(np.take_along_axis(pre, top, axis=-1)), axis=-1)
    return out


def inputs(seed: int = 7, n: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D_IN)).astype(np.float32)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("b_in", [True, False])
def test_round_trip_matches_numpy_oracle(tmp_path, arch, b_in):
    sae = random_sae(arch, seed=ARCHS.index(arch), apply_b_dec_to_input=b_in)
    d = save_saelens(sae, tmp_path / arch, hook_name="blocks.4.hook_resid_post", model_name="smollm2-135m")
    cfg = json.loads((d / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"]) == (arch, D_IN, D_SAE)
    assert cfg["metadata"]["hook_name"] == "blocks.4.hook_resid_post"
    x = inputs()
    loaded, info = load_saelens(d)
    assert type(loaded) is type(sae) and info["hook_name"] == "blocks.4.hook_resid_post"
    np.testing.assert_allclose(np.asarray(loaded.encode(x)), numpy_encode(d, x.astype(np.float64)), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(loaded.encode(x)), np.asarray(sae.encode(x)))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(sae(x)))


def test_stack_saves_as_directories_and_loads_back(tmp_path):
    saes = [random_sae("topk", seed=s) for s in range(3)]
    stack = concat(saes)
    dirs = save_saelens_stack(stack, tmp_path / "stack", hook_names=[hook_name(i, "resid_post") for i in range(3)])
    assert [p.name for p in dirs] == ["sae_000", "sae_001", "sae_002"]
    loaded, cfgs = load_saelens_stack(tmp_path / "stack")
    assert loaded.W_enc.shape == (3, D_IN, D_SAE) and [c["hook_name"] for c in cfgs] == [
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_post",
        "blocks.2.hook_resid_post",
    ]
    x = inputs()
    for i, d in enumerate(dirs):
        np.testing.assert_allclose(
            np.asarray(index(loaded, i).encode(x)), numpy_encode(d, x.astype(np.float64)), atol=1e-5
        )
    # an explicit list in another order gives that order
    loaded2, _ = load_saelens_stack([dirs[2], dirs[0]])
    np.testing.assert_array_equal(np.asarray(loaded2.W_enc), np.asarray(stack.W_enc[jnp.array([2, 0])]))


def test_batchtopk_saves_as_jumprelu_with_its_inference_encoding(tmp_path):
    sae = batchtopk.init(jax.random.key(0), D_IN, D_SAE, k=K)
    sae = sae.update_buffers(jnp.asarray(np.abs(inputs(3, n=4)[:, :1]) + 0.1) * jnp.ones((1, D_SAE)))
    d = save_saelens(sae, tmp_path / "btk")
    loaded, cfg = load_saelens(d)
    assert cfg["architecture"] == "jumprelu" and isinstance(loaded, JumpReLUSAE)
    x = inputs()
    np.testing.assert_allclose(np.asarray(loaded.encode(x)), np.asarray(sae.encode(x)), atol=1e-6)


def test_hook_names_parse_both_ways():
    assert parse_hook_name("blocks.12.hook_resid_post") == (12, "resid_post")
    assert parse_hook_name("blocks.3.attn.hook_z") == (3, "z")
    assert hook_name(3, "result") == "blocks.3.attn.hook_result"
    with pytest.raises(SAELensFormatError, match="not one jsae can splice"):
        parse_hook_name("blocks.3.mlp.hook_post")


# --- bad inputs: one clear error each -------------------------------------------------------------


def _saved(tmp_path, arch="jumprelu"):
    return save_saelens(random_sae(arch, 0), tmp_path / arch)


def _rewrite_tensors(d, edit):
    t = load_file(str(d / "sae_weights.safetensors"))
    edit(t)
    save_file(t, str(d / "sae_weights.safetensors"))


def _rewrite_cfg(d, edit):
    cfg = json.loads((d / "cfg.json").read_text())
    edit(cfg)
    (d / "cfg.json").write_text(json.dumps(cfg))


def test_missing_tensor(tmp_path):
    d = _saved(tmp_path)
    _rewrite_tensors(d, lambda t: t.pop("threshold"))
    with pytest.raises(SAELensFormatError, match="lacks threshold"):
        load_saelens(d)


def test_mismatched_shape(tmp_path):
    d = _saved(tmp_path)
    _rewrite_tensors(d, lambda t: t.update(b_dec=np.zeros(D_IN + 1, np.float32)))
    with pytest.raises(SAELensFormatError, match=r"b_dec has shape \(7,\)"):
        load_saelens(d)


def test_unknown_architecture(tmp_path):
    d = _saved(tmp_path)
    _rewrite_cfg(d, lambda c: c.update(architecture="matching_pursuit"))
    with pytest.raises(SAELensFormatError, match="'matching_pursuit' is not supported"):
        load_saelens(d)


def test_cfg_disagrees_with_weights(tmp_path):
    d = _saved(tmp_path, "standard")
    _rewrite_cfg(d, lambda c: c.update(d_sae=D_SAE * 2))
    with pytest.raises(SAELensFormatError, match=r"W_enc has shape \(6, 10\) but cfg.json \(d_in=6, d_sae=20\)"):
        load_saelens(d)


def test_architecture_disagrees_with_tensors(tmp_path):
    d = _saved(tmp_path, "jumprelu")
    _rewrite_cfg(d, lambda c: c.update(architecture="standard"))
    with pytest.raises(SAELensFormatError, match="threshold that a 'standard' SAE does not use"):
        load_saelens(d)


def test_topk_without_k_and_missing_files(tmp_path):
    d = _saved(tmp_path, "topk")
    _rewrite_cfg(d, lambda c: c.pop("k"))
    with pytest.raises(SAELensFormatError, match="k must be a positive integer"):
        load_saelens(d)
    (d / "sae_weights.safetensors").unlink()
    _rewrite_cfg(d, lambda c: c.update(k=2))
    with pytest.raises(SAELensFormatError, match="has no sae_weights.safetensors"):
        load_saelens(d)
    with pytest.raises(SAELensFormatError, match="has no cfg.json"):
        load_saelens(tmp_path)


def test_mixed_stack_is_refused(tmp_path):
    a = save_saelens(random_sae("topk", 0), tmp_path / "a")
    b = save_saelens(random_sae("standard", 1), tmp_path / "b")
    with pytest.raises(SAELensFormatError, match="cannot join a stack"):
        load_saelens_stack([a, b])


def test_save_refuses_a_stack(tmp_path):
    with pytest.raises(SAELensFormatError, match="use save_saelens_stack"):
        save_saelens(concat([random_sae("topk", 0)]), tmp_path / "x")


# --- the real SAELens package --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens")


def _saelens_sae(arch: str, seed: int, **cfg):
    import torch
    from sae_lens.saes.gated_sae import GatedSAE as SLGated
    from sae_lens.saes.gated_sae import GatedSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE as SLJump
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE as SLTopK
    from sae_lens.saes.topk_sae import TopKSAEConfig

    cls, cfg_cls = {
        "standard": (StandardSAE, StandardSAEConfig),
        "topk": (SLTopK, TopKSAEConfig),
        "jumprelu": (SLJump, JumpReLUSAEConfig),
        "gated": (SLGated, GatedSAEConfig),
    }[arch]
    sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else 1.0))
            if name == "threshold":
                p.abs_()
    return sae


@pytest.mark.parametrize(
    "arch,cfg",
    [
        ("standard", {}),
        ("topk", {"k": K}),
        ("topk", {"k": K, "rescale_acts_by_decoder_norm": True}),
        ("jumprelu", {}),
        ("gated", {}),
        ("standard", {"apply_b_dec_to_input": False}),
    ],
)
def test_files_written_by_saelens_load_with_the_same_encodings(tmp_path, sae_lens, arch, cfg):
    import torch

    sl = _saelens_sae(arch, seed=len(cfg), **cfg)
    sl.save_model(tmp_path / "sl")
    sae, info = load_saelens(tmp_path / "sl")
    x = inputs()
    with torch.no_grad():
        want_f = sl.encode(torch.from_numpy(x)).numpy()
        want_x = sl.decode(sl.encode(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(np.asarray(sae.encode(x)), want_f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae(x)), want_x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_files_written_by_jsae_load_in_saelens(tmp_path, sae_lens, arch):
    import torch
    from sae_lens import SAE as SLSAE

    sae = random_sae(arch, seed=5)
    d = save_saelens(sae, tmp_path / arch, hook_name="blocks.1.hook_resid_post")
    sl = SLSAE.load_from_disk(d)
    x = inputs()
    with torch.no_grad():
        want = sl.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(sae.encode(x)), want, rtol=1e-5, atol=1e-5)
    assert sl.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
