"""Every supported HF family against transformers itself (the oracle), with tiny random models and no download.

Each family's model is built by ``AutoModelForCausalLM.from_config`` (2 layers, GQA where the family has
it, sliding windows shorter than the prompt, soft-caps on for Gemma 2), its norms and biases randomised,
saved with ``save_pretrained`` (Qwen2 sharded, Llama in bfloat16) and loaded by ``jsae.models.load``.
Checked: logits (and their argmax), per-head ``z`` against the input of the output projection, head
ablations (``result`` and ``z``) against zeroing those slices in torch, and a right-padded batch with
``lengths`` against each row run alone. Errors are ~1e-7 of logits ~0.5; the tolerance (2e-5) is well
below the effect of each family feature on these models (llama3 RoPE scaling, the smallest, moves the
logits by 4e-4; sliding windows, Gemma 3's local RoPE base, partial rotary and parallel blocks by 5e-3 to 0.5).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jsae.models import forward, load  # noqa: E402
from jsae.models import hooks as H  # noqa: E402

V, T, W = 128, 16, 5  # vocabulary, prompt length, sliding window (< T)
LLAMA_SHAPE = dict(
    vocab_size=V,
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)
FAMILIES = {
    "gpt2": dict(vocab_size=V, n_embd=48, n_layer=2, n_head=4, n_positions=64),
    "llama": dict(
        LLAMA_SHAPE,
        attention_bias=True,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=500.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    "mistral": dict(LLAMA_SHAPE, head_dim=16, sliding_window=W),
    "qwen2": dict(LLAMA_SHAPE, use_sliding_window=True, sliding_window=W, max_window_layers=1),
    "qwen3": dict(LLAMA_SHAPE, head_dim=16, attention_bias=True),
    "gemma": dict(LLAMA_SHAPE, head_dim=16, num_key_value_heads=1, tie_word_embeddings=True),
    "gemma2": dict(
        LLAMA_SHAPE,
        head_dim=16,
        sliding_window=W,
        query_pre_attn_scalar=20,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0,
        tie_word_embeddings=True,
    ),
    "gemma3_text": dict(
        LLAMA_SHAPE,
        head_dim=16,
        sliding_window=W,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=24,
        rope_parameters=dict(
            sliding_attention=dict(rope_type="default", rope_theta=100.0),
            full_attention=dict(rope_type="linear", factor=4.0, rope_theta=10000.0),
        ),
    ),
    "gemma3": dict(  # multimodal Gemma 3 (4B and larger): jsae loads its text model
        text_config=dict(
            LLAMA_SHAPE,
            head_dim=16,
            sliding_window=W,
            layer_types=["sliding_attention", "full_attention"],
            query_pre_attn_scalar=20,
        ),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        vision_image=dict(image_size=28, patch_size=14),
        mm_tokens_per_image=4,
        boi_token_index=V - 3,
        eoi_token_index=V - 2,
        image_token_index=V - 1,
    ),
    "gpt_neox": dict(
        vocab_size=V,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        rope_parameters=dict(rope_type="default", rope_theta=1000.0, partial_rotary_factor=0.5),
    ),
    "phi3": dict(
        LLAMA_SHAPE,
        sliding_window=7,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5),
    ),
    "olmo2": dict(LLAMA_SHAPE, attention_bias=True),
}
_saved: dict = {}  # model_type -> checkpoint folder
SAVE = {"qwen2": dict(max_shard_size="20KB"), "llama": dict(dtype="bfloat16")}


def _out_proj(hf, mt: str, layer: int):
    """The output projection of ``layer``: its input is the concatenated per-head ``z``."""
    if mt == "gpt2":
        return hf.transformer.h[layer].attn.c_proj
    if mt == "gpt_neox":
        return hf.gpt_neox.layers[layer].attention.dense
    if mt == "gemma3":
        return hf.model.language_model.layers[layer].self_attn.o_proj
    return hf.model.layers[layer].self_attn.o_proj


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(model_type, transformers model in float32, jsae model) for one family."""
    mt = request.param
    torch.manual_seed(0)
    kw = dict(FAMILIES[mt])
    if "vision_image" in kw:
        kw["vision_config"] = {**kw["vision_config"], **kw.pop("vision_image")}
    cfg = transformers.AutoConfig.for_model(mt, **kw)
    cfg._attn_implementation = "eager"
    auto = transformers.AutoModelForImageTextToText if mt == "gemma3" else transformers.AutoModelForCausalLM
    hf = auto.from_config(cfg, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            # norms near 1 (Gemma stores w of 1 + w: near 0), biases near 0, all non-trivial
            if p.ndim == 1 and "vision" not in name:
                base = 1.0 if ("norm" in name or "ln" in name) and not mt.startswith("gemma") else 0.0
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + base)
    path = tmp_path_factory.mktemp(mt)
    save = dict(SAVE.get(mt, {}))
    if save.pop("dtype", None) == "bfloat16":
        with torch.no_grad():
            for p in hf.parameters():
                p.copy_(p.bfloat16().float())  # the oracle computes in float32 with exactly the saved values
        copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(path)  # (casting hf itself would round its RoPE)
    else:
        hf.save_pretrained(path, **save)
    model, _, _ = load(path)
    _saved[mt] = path
    return mt, hf, model


def _torch(hf, mt: str, ids: np.ndarray, zero: dict[int, list[int]] | None = None):
    """Logits and each layer's output-projection input ``[L, B, T, H * dh]``; ``zero`` zeroes heads' slices."""
    seen, handles = [], []
    text_config = getattr(hf.config, "text_config", hf.config)
    n_layers, heads = text_config.num_hidden_layers, text_config.num_attention_heads
    for layer in range(n_layers):

        def pre(mod, args, layer=layer):
            x = args[0].clone()
            dh = x.shape[-1] // heads
            for h in (zero or {}).get(layer, []):
                x[..., h * dh : (h + 1) * dh] = 0
            seen.append(x.detach().numpy())
            return (x,)

        handles.append(_out_proj(hf, mt, layer).register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            logits = hf(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    finally:
        for h in handles:
            h.remove()
    return logits, np.stack(seen)


def test_logits_z_and_padding_match_transformers(family):
    mt, hf, model = family
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(2, T)).astype(np.int32)
    n2 = 9
    padded = ids.copy()
    padded[1, n2:] = 0  # any in-range id: ``lengths`` says what is real
    logits, cache = forward(model, padded, hooks=H.capture("z"), lengths=np.array([T, n2]))
    logits, z = np.asarray(logits), np.asarray(cache["z"])
    for row, n in ((0, T), (1, n2)):
        ref, ref_z = _torch(hf, mt, ids[row : row + 1, :n])
        np.testing.assert_allclose(logits[row, :n], ref[0], atol=2e-5, rtol=1e-5)
        assert (logits[row, :n].argmax(-1) == ref[0].argmax(-1)).all()
        np.testing.assert_allclose(z[:, row, :n].reshape(ref_z[:, 0].shape), ref_z[:, 0], atol=2e-5, rtol=1e-4)


def test_head_ablation_matches_zeroing_the_slice_in_torch(family):
    mt, hf, model = family
    ids = np.random.default_rng(1).integers(0, V, size=(1, T)).astype(np.int32)
    spec = H.zero_ablate(model, [(0, 1)], point="result") + H.zero_ablate(model, [(1, 2)], point="z")
    logits = np.asarray(forward(model, ids, hooks=spec)[0])
    ref, _ = _torch(hf, mt, ids, zero={0: [1], 1: [2]})
    plain, _ = _torch(hf, mt, ids)
    assert np.abs(ref - plain).max() > 1e-3  # the ablation changes the logits
    np.testing.assert_allclose(logits, ref, atol=2e-5, rtol=1e-5)


def test_bfloat16_weights_accumulate_in_float32(tiny_llama_dir):
    """``load(..., dtype=bf16)``: matrices in bf16, norms float32; logits near torch's float32 forward of the
    same bf16-rounded matrices (only the bf16 rounding of each matmul's input differs)."""
    import jax.numpy as jnp

    path, hf = tiny_llama_dir
    model, _, meta = load(path, dtype=jnp.bfloat16)
    assert meta["dtype"] == "bfloat16"
    assert model.blocks.W_Q.dtype == model.embed.dtype == model.W_U.dtype == jnp.bfloat16
    assert model.blocks.ln1_w.dtype == model.ln_f_w.dtype == jnp.float32
    rounded = copy.deepcopy(hf)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.ndim == 2:
                p.copy_(p.bfloat16().float())
    ids = np.random.default_rng(2).integers(0, hf.config.vocab_size, size=(2, T)).astype(np.int32)
    logits = forward(model, ids)[0]
    assert logits.dtype == jnp.float32
    ref, _ = _torch(rounded, "llama", ids)
    f32 = np.asarray(forward(load(path)[0], ids)[0])
    err, scale = np.abs(np.asarray(logits) - ref).max(), np.abs(ref).max()
    print(f"bf16 vs float32 oracle: max |dlogit| {err:.2e} of max |logit| {scale:.2f}")
    assert 1e-6 < err < 0.02 * scale  # bf16 products (not silently float32), float32 sums (small error)
    assert np.abs(np.asarray(logits) - f32).max() < 0.03 * scale
    with pytest.raises(ValueError, match="floating type"):
        load(path, dtype=jnp.int32)


def test_bfloat16_checkpoint_read_in_bfloat16(family):
    """A bf16 checkpoint read straight into bf16 (no float32 copy) holds exactly its values."""
    import jax
    import jax.numpy as jnp

    mt, _, model = family
    if mt != "llama":  # the family saved in bf16
        pytest.skip("one bf16 checkpoint suffices")
    low, _, _ = load(_saved[mt], dtype=jnp.bfloat16)
    same = jax.tree.map(lambda a, b: bool((np.asarray(a, np.float32) == np.asarray(b, np.float32)).all()), low, model)
    assert all(jax.tree.leaves(same)) and low.blocks.W_in.dtype == jnp.bfloat16
