"""The activation layer and the streaming trainer, against independent oracles: sorted multisets for the
buffer, ``harvest`` for the captured rows, the in-memory trainer for streamed training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.activations import capture_rows_jit, drain, exchange, exchange_key, parse_inputs
from jsae.models import HookError, harvest, load_hf_dir
from jsae.pipeline import ArrayContexts, check_fits, estimate, plan, train_on_model
from jsae.sae.registry import init_stack
from jsae.train import TrainConfig, train


def _sorted_rows(x: np.ndarray) -> np.ndarray:
    """Rows of [n, d] in lexicographic order: two arrays are equal multisets of rows iff these agree."""
    return x[np.lexsort(x.T[::-1])]


def test_buffer_output_is_a_permutation_of_its_input():
    rng = np.random.default_rng(0)
    n, k, r, d, rounds = 3, 48, 16, 5, 7
    stream = rng.normal(size=(rounds, n, r, d)).astype(np.float32)
    buffer = jnp.asarray(stream[: k // r].transpose(1, 0, 2, 3).reshape(n, k, d))  # filled by the first 3 rounds
    out = []
    key = jax.random.key(0)
    for i in range(k // r, rounds):
        buffer, o = exchange(buffer, jnp.asarray(stream[i]), exchange_key(key, i))
        out.append(np.asarray(o))
    out.append(np.asarray(drain(buffer, exchange_key(key, rounds))))
    got = np.concatenate(out, axis=1)  # [n, rounds * r, d]
    want = stream.transpose(1, 0, 2, 3).reshape(n, -1, d)
    for i in range(n):
        np.testing.assert_array_equal(_sorted_rows(got[i]), _sorted_rows(want[i]))
    # the same token permutation for every input: a token's rows travel together
    token_of = {tuple(want[0, j]): j for j in range(want.shape[1])}
    order = [token_of[tuple(row)] for row in got[0]]
    np.testing.assert_array_equal(got[1], want[1, order])
    assert order != sorted(order)  # and it did shuffle


def test_exchange_rejects_more_rows_than_slots():
    with pytest.raises(ValueError, match="buffer of at least"):
        exchange(jnp.zeros((1, 4, 2)), jnp.zeros((1, 8, 2)), jax.random.key(0))


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    model, _, _ = load_hf_dir(tiny_llama_dir[0])
    return model


def test_captured_rows_equal_harvest(tiny):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, tiny.cfg.vocab_size, (3, 9)).astype(np.int32)
    for points, heads, layers, d in (
        ("z", "all", "all", tiny.cfg.d_head),
        ("resid_post,mlp_out", "all", "1,0", 64),
        ("result", "1.2,0.3", "all", 64),
    ):
        inputs = parse_inputs(tiny.cfg, points, heads=heads, layers=layers)
        rows = np.asarray(capture_rows_jit(tiny, jnp.asarray(tokens), inputs, 1))  # position 0 left out
        assert rows.shape == (len(inputs), 3 * 8, d)
        for n, inp in enumerate(inputs):
            h = harvest(tiny, tokens, point=inp.point, positions="all", progress=False)  # [L*H or L, 3*9, d]
            per_head = inp.head is not None
            ref = h[inp.layer * tiny.cfg.n_heads + inp.head] if per_head else h[inp.layer]
            ref = ref.reshape(3, 9, d)[:, 1:].reshape(-1, d)
            np.testing.assert_allclose(rows[n], ref, rtol=1e-5, atol=1e-5)


def test_parse_inputs_errors(tiny):
    cfg = tiny.cfg
    with pytest.raises(HookError, match="unknown hook point 'q'"):
        parse_inputs(cfg, "q")
    with pytest.raises(HookError, match="out of range"):
        parse_inputs(cfg, "z", heads="5.0")
    with pytest.raises(HookError, match="different widths"):
        parse_inputs(cfg, "z,resid_post")
    with pytest.raises(HookError, match="L.H"):
        parse_inputs(cfg, "z", heads="zero")
    assert len(parse_inputs(cfg, "z", heads="1.*")) == cfg.n_heads


def test_plan_and_memory_errors(tiny):
    ctx = ArrayContexts(np.zeros((8, 17), np.int32), batch_contexts=4, bos_positions=1)
    with pytest.raises(ValueError, match="not a multiple of the SAE batch size 48"):
        plan(1000, ctx, 48, 0)
    p = plan(1000, ctx, 32, 128)  # 64 tokens per exchange, 2 fill exchanges, 16 exchanges
    assert (p.exchanges, p.fill_exchanges, p.steps_per_exchange, p.drain_steps, p.steps) == (16, 2, 2, 4, 32)
    est = estimate(
        tiny.cfg,
        n_params=10**6,
        n_saes=270,
        d_in=64,
        d_sae=512,
        batch_size=1024,
        buffer_tokens=1 << 20,
        batch_contexts=32,
        context_len=128,
    )
    assert est.buffer >= 270 * (1 << 20) * 64 * 4  # the buffer alone: 72 GB in float32
    with pytest.raises(MemoryError, match="lower --buffer-tokens"):
        check_fits(est, 24 << 30)
    check_fits(est, est.total * 2)  # fits: no error


def _stream_setup(tiny, n_ctx=32, positions=17, seed=2):
    tokens = np.random.default_rng(seed).integers(0, tiny.cfg.vocab_size, (n_ctx, positions)).astype(np.int32)
    inputs = parse_inputs(tiny.cfg, "z")
    sae = init_stack("topk", jax.random.key(3), len(inputs), tiny.cfg.d_head, 32, k=4)
    return tokens, inputs, sae


def decoder_overlap(W_dec):
    """Mean squared off-diagonal cosine between decoder rows: a research loss term of the user's own."""
    W = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
    G = W @ W.T
    return jnp.sum((G - jnp.eye(G.shape[0])) ** 2) / (G.shape[0] * (G.shape[0] - 1))


def overlap_loss(sae, x, hp, dead):
    total, (metrics, f) = sae.loss(x, hp, dead)
    overlap = decoder_overlap(sae.W_dec.astype(jnp.float32))
    return total + 0.3 * overlap, ({**metrics, "overlap": overlap}, f)


def custom_training(n: int) -> dict:
    """A custom optax chain (clipping, AdamW with each SAE's own rate injected) and a custom loss term."""
    import optax

    opt = optax.chain(optax.clip_by_global_norm(0.5), optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3))
    rates = np.linspace(1e-3, 4e-3, n).tolist()
    return dict(optimizer=opt, optimizer_hp={"learning_rate": rates, "weight_decay": 1e-2}, loss_fn=overlap_loss)


@pytest.mark.parametrize("fused, custom", [(False, True), (True, False)])
def test_streamed_training_equals_in_memory_training(tiny, fused, custom):
    """Shuffle off: the stream trains on the activations in stream order; the in-memory trainer gets the
    same activations (harvested independently) as batches in the same order. ``fused``: the accelerator
    layout (forward inside the training program, contexts split over the devices), here on CPU devices.
    ``custom``: both runs take the same custom optax chain, per-SAE rates and loss term."""
    tokens, inputs, sae = _stream_setup(tiny)
    how = custom_training(len(inputs)) if custom else {}
    cfg = TrainConfig(steps=1, batch_size=64, lr=3e-3, chunk_steps=1)
    streamed = train_on_model(
        tiny,
        ArrayContexts(tokens, 8, bos_positions=1),
        inputs,
        sae,
        cfg,
        tokens=32 * 16,
        buffer_tokens=0,
        progress=False,
        fused=fused,
        compute_dtype="float32",
        **how,
    )
    acts = harvest(tiny, tokens, point="z", positions="all", progress=False)  # [8, 32*17, dh]
    acts = acts.reshape(len(inputs), 32, 17, -1)[:, :, 1:].reshape(len(inputs), -1, tiny.cfg.d_head)
    batches = [acts[:, i * 64 : (i + 1) * 64] for i in range(acts.shape[1] // 64)]
    cfg_mem = TrainConfig(steps=len(batches), batch_size=64, lr=3e-3, chunk_steps=2)
    in_memory = train(sae, lambda: iter(batches), cfg_mem, progress=False, **how)
    assert streamed.steps == in_memory.steps == 8
    for a, b in zip(jax.tree.leaves(streamed.sae), jax.tree.leaves(in_memory.sae), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    if custom:  # the chain ran per SAE: AdamW with the given rates moved the SAEs by different amounts
        assert "overlap" in streamed.metrics
        moved = np.linalg.norm(np.asarray(in_memory.sae.W_enc - sae.W_enc).reshape(len(inputs), -1), axis=-1)
        assert moved[-1] > 2 * moved[0]


def test_shuffled_stream_trains_every_token_once(tiny):
    tokens, inputs, sae = _stream_setup(tiny)
    cfg = TrainConfig(steps=1, batch_size=64, lr=3e-3)
    r = train_on_model(
        tiny,
        ArrayContexts(tokens, 8, bos_positions=1),
        inputs,
        sae,
        cfg,
        tokens=32 * 16,
        buffer_tokens=256,
        progress=False,
    )
    assert r.steps == 32 * 16 // 64  # 2 exchanges fill, 2 train, the drain trains 4 steps
    assert r.history["step"].tolist() == [2, 4, 8]  # 2 steps per exchange, then the drain
    with pytest.raises(ValueError, match="text ran out after 4 batches"):
        train_on_model(
            tiny,
            ArrayContexts(tokens, 8, bos_positions=1),
            inputs,
            sae,
            cfg,
            tokens=32 * 16 * 2,
            buffer_tokens=256,
            progress=False,
        )


def test_sigkilled_stream_resumes_bit_identical(tiny_llama_tok, word_text, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("stream_script.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    text = word_text(tmp_path / "text.txt", 3000)

    def run(out, ckpt, *extra):
        return subprocess.run(
            [sys.executable, str(script), str(tiny_llama_tok[0]), str(text), str(out), str(ckpt), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    ref = run(tmp_path / "ref.npz", tmp_path / "ref_ckpt")
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = run(tmp_path / "killed.npz", tmp_path / "ckpt", "7")
    assert killed.returncode == -9 and not (tmp_path / "killed.npz").exists()
    resumed = run(tmp_path / "resumed.npz", tmp_path / "ckpt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "resumed.npz")
    # killed after exchange 7 (step 10); checkpoints at steps 4 and 8 (8 may still be in flight: orbax saves
    # asynchronously, and a half-written step is never taken)
    assert int(b["resumed_from"]) in (4, 8) and int(a["resumed_from"]) == 0
    assert int(a["steps"]) == int(b["steps"]) == 96 * 16 // 64
    arrays = [k for k in a.files if k.startswith("arr_")]
    assert len(arrays) > 5
    for k in arrays:
        np.testing.assert_array_equal(a[k], b[k])


def test_training_from_a_bf16_cache_equals_scaling_the_batches_yourself(tmp_path):
    """train_from_cache (bf16 batches to the device, scales applied by the step, folded back) equals the
    definition: widen the same batches on the host, multiply by the per-input scale from chunk 0, train
    without normalisation, then fold the scale into the SAEs."""
    import equinox as eqx
    import ml_dtypes

    from jsae.activations import create
    from jsae.pipeline import train_from_cache
    from jsae.sae import normalisation_scale
    from jsae.train import train

    rng = np.random.default_rng(0)
    writer = create(tmp_path / "c", n_rows=3, d=8, chunk_tokens=64, n_chunks=4, dtype="bfloat16", config={})
    for i in range(4):
        writer.write_chunk(
            i, (rng.standard_normal((3, 64, 8)) * [[[1.0]], [[5.0]], [[0.2]]]).astype(ml_dtypes.bfloat16)
        )
    cache = writer.finish()
    sae = init_stack("topk", jax.random.key(1), 3, 8, 16, k=2)
    cfg = TrainConfig(steps=20, batch_size=32, lr=3e-3, chunk_steps=5, normalise_activations=True)
    got = train_from_cache(cache, sae, cfg, progress=False)

    first = cache.read_chunk(0)  # float32 widening of chunk 0
    scales = np.stack([float(normalisation_scale(jnp.asarray(first[i]))) for i in range(3)]).astype(np.float32)

    def scaled():
        for b in cache.batches(32, seed=cfg.seed):
            yield np.asarray(b, np.float32) * scales[:, None, None]

    ref = train(sae, scaled, TrainConfig(steps=20, batch_size=32, lr=3e-3, chunk_steps=5), progress=False)
    ref_sae = eqx.filter_vmap(lambda s, c: s.fold_scale(c))(ref.sae, jnp.asarray(scales))
    for a, b in zip(jax.tree.leaves(got.sae), jax.tree.leaves(ref_sae)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    assert not np.allclose(scales, 1.0)
