"""jsae.viz's numbers against independent numpy oracles: top-k contexts against a brute-force argsort over all
positions, firing counts / histograms / explained variance against numpy over every activation, logit effects
against a direct matmul, and source attributions against the pre-activation of the captured ``z``."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.models import capture, forward, load_hf_dir
from jsae.sae.registry import init_stack
from jsae.viz import HIST_EDGES, feature_data, log_histogram, merge_top_k

S, T, K = 10, 12, 3  # contexts, positions, top contexts per latent


@pytest.fixture(scope="module")
def setup(tiny_llama_dir):
    model, _, _ = load_hf_dir(tiny_llama_dir[0])
    cfg = model.cfg
    inputs = [{"layer": l, "point": "z", "head": h} for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    sae = init_stack("relu", jax.random.key(0), len(inputs), cfg.d_head, 24)
    rng = np.random.default_rng(0)
    # random biases (b_dec is subtracted from the input: the decomposition must handle it exactly)
    sae = eqx.tree_at(
        lambda s: (s.b_dec, s.b_enc),
        sae,
        (
            jnp.asarray(rng.normal(size=sae.b_dec.shape) * 0.3, jnp.float32),
            jnp.asarray(rng.normal(size=sae.b_enc.shape) * 0.1, jnp.float32),
        ),
    )
    tokens = rng.integers(0, cfg.vocab_size, size=(S, T)).astype(np.int32)
    lengths = np.full(S, T, np.int32)
    lengths[-1] = 7  # a short last row
    latents = np.array([0, 3, 5, 11])
    # batch_size 4: three batches, the last partial (its padding rows repeat a real row, counted once)
    data = feature_data(model, sae, inputs, tokens, lengths, latents=latents, k=K, skip=1, batch_size=4)
    return model, sae, inputs, tokens, lengths, latents, data


def _all_z(model, tokens):
    _, cache = forward(model, tokens, hooks=capture("z"), logits=False)
    return np.asarray(cache["z"], np.float64)  # [L, S, T, H, dh]


def _pre(sae, m, x):
    W, b, bd = (np.asarray(a[m], np.float64) for a in (sae.W_enc, sae.b_enc, sae.b_dec))
    return (x - bd) @ W + b


def test_top_k_matches_a_brute_force_argsort_over_all_positions(setup):
    model, sae, inputs, tokens, lengths, latents, data = setup
    z = _all_z(model, tokens)
    valid = (np.arange(T)[None] < lengths[:, None]) & (np.arange(T)[None] >= 1)
    for m, inp in enumerate(inputs):
        acts = np.maximum(_pre(sae, m, z[inp["layer"], :, :, inp["head"]]), 0)[..., latents]  # [S, T, J]
        for j in range(len(latents)):
            a = np.where(valid, acts[..., j], -np.inf).reshape(-1)
            order = np.argsort(-a, kind="stable")[:K]
            want = [(int(i // T), int(i % T)) for i in order if a[i] > 0]
            got = [(int(s), int(t)) for s, t, v in zip(data.top_seq[m, j], data.top_pos[m, j], data.top_value[m, j])]
            got = [g for g, v in zip(got, data.top_value[m, j]) if v > 0]
            assert got == want, (m, j)
            np.testing.assert_allclose(data.top_value[m, j][: len(want)], a[order][: len(want)], rtol=1e-4, atol=1e-5)
            for c, (s, _) in enumerate(got):  # the activation along the whole row (0 at the skipped BOS)
                np.testing.assert_allclose(
                    data.top_acts[m, j, c, 1 : lengths[s]], acts[s, 1 : lengths[s], j], rtol=1e-4, atol=1e-5
                )
                assert data.top_acts[m, j, c, 0] == 0


def test_counts_histograms_and_explained_variance_match_numpy(setup):
    model, sae, inputs, tokens, lengths, latents, data = setup
    z = _all_z(model, tokens)
    valid = (np.arange(T)[None] < lengths[:, None]) & (np.arange(T)[None] >= 1)
    assert data.n_tokens == valid.sum()
    for m, inp in enumerate(inputs):
        x = z[inp["layer"], :, :, inp["head"]][valid]  # [n, dh]
        f = np.maximum(_pre(sae, m, x), 0)
        a = f[:, latents]
        np.testing.assert_array_equal(data.fires[m], (a > 0).sum(0))
        for j in range(len(latents)):
            pos = a[:, j][a[:, j] > 0]
            want = np.histogram(np.clip(pos, HIST_EDGES[0], HIST_EDGES[-1] * 0.999), HIST_EDGES)[0]
            np.testing.assert_array_equal(data.hist[m, j], want)
        x_hat = f @ np.asarray(sae.W_dec[m], np.float64) + np.asarray(sae.b_dec[m], np.float64)
        ev = 1 - ((x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert data.explained_variance[m] == pytest.approx(ev, abs=1e-4)
        assert data.l0[m] == pytest.approx((f > 0).sum(1).mean(), rel=1e-5)


def test_source_contributions_sum_to_the_pre_activation_of_the_captured_z(setup):
    model, sae, inputs, tokens, lengths, latents, data = setup
    assert data.top_sources is not None and data.source_constant is not None
    z = _all_z(model, tokens)
    checked = 0
    for m, inp in enumerate(inputs):
        for j, lat in enumerate(latents):
            # the constant term, from the SAE's weights: b_enc - b_dec . w
            w = np.asarray(sae.W_enc[m][:, lat], np.float64)
            const = float(sae.b_enc[m][lat]) - np.asarray(sae.b_dec[m], np.float64) @ w
            assert data.source_constant[m, j] == pytest.approx(const, abs=1e-5)
            for c in range(K):
                s, t = int(data.top_seq[m, j, c]), int(data.top_pos[m, j, c])
                if s < 0 or data.top_value[m, j, c] <= 0:
                    continue
                pre = _pre(sae, m, z[inp["layer"], s, t, inp["head"]])[lat]
                contrib = data.top_sources[m, j, c].astype(np.float64)
                assert contrib.sum() == pytest.approx(pre - const, abs=1e-4 * max(1, abs(pre)))
                assert np.all(contrib[t + 1 :] == 0)  # causal: nothing from later positions
                checked += 1
    assert checked > 20


def test_logit_effects_match_a_direct_matmul(setup):
    model, sae, inputs, tokens, lengths, latents, data = setup
    W_U = np.asarray(model.unembed_matrix(), np.float64)
    ln = np.asarray(model.ln_f_w, np.float64)
    for m, inp in enumerate(inputs):
        W_O = np.asarray(model.blocks.W_O[inp["layer"], inp["head"]], np.float64)  # [dh, D]
        logits = ((np.asarray(sae.W_dec[m], np.float64)[latents] @ W_O) * ln) @ W_U  # [J, V]
        n = data.logit_up.shape[-1]
        np.testing.assert_array_equal(data.logit_up_ids[m], np.argsort(-logits, axis=1, kind="stable")[:, :n])
        np.testing.assert_array_equal(data.logit_down_ids[m], np.argsort(logits, axis=1, kind="stable")[:, :n])
        np.testing.assert_allclose(data.logit_up[m], np.sort(logits, axis=1)[:, ::-1][:, :n], rtol=1e-4, atol=1e-5)


def test_merge_top_k_and_log_histogram_on_small_arrays():
    top = {"value": jnp.array([5.0, 3.0, -jnp.inf]), "id": jnp.array([0, 1, -1])}
    cand = {"value": jnp.array([4.0, 9.0]), "id": jnp.array([7, 8])}
    out = merge_top_k(top, cand, 3)
    assert out["value"].tolist() == [9.0, 5.0, 4.0] and out["id"].tolist() == [8, 0, 7]
    acts = jnp.array([[0.0, 2e-3], [1.0, 5e3], [0.5, 0.0]])
    counts = np.asarray(log_histogram(acts, jnp.array([True, True, False]), jnp.asarray(HIST_EDGES)))
    assert counts[0].sum() == 1 and counts[1].sum() == 2 and counts[1, -1] == 1  # 5e3 clipped to the last bin
    assert counts[0, np.searchsorted(HIST_EDGES, 1.0, side="right") - 1] == 1


def test_residual_saes_top_k_and_logits_without_heads(setup):
    model, _, _, tokens, lengths, _, _ = setup
    cfg = model.cfg
    inputs = [  # three SAEs: over two CPU devices the stack is padded to four, the copy dropped again
        {"layer": 0, "point": "resid_post", "head": None},
        {"layer": 1, "point": "mlp_out", "head": None},
        {"layer": 1, "point": "resid_pre", "head": None},
    ]
    sae = init_stack("relu", jax.random.key(1), 3, cfg.d_model, 16)
    data = feature_data(model, sae, inputs, tokens, lengths, latents=[1, 2], k=2, batch_size=4)
    assert data.top_sources is None
    _, cache = forward(model, tokens, hooks=capture("resid_post", "mlp_out", "resid_pre"), logits=False)
    W_U, ln = np.asarray(model.unembed_matrix(), np.float64), np.asarray(model.ln_f_w, np.float64)
    valid = np.arange(T)[None] < lengths[:, None]
    for m, inp in enumerate(inputs):
        x = np.asarray(cache[inp["point"]][inp["layer"]], np.float64)
        a = np.where(valid, np.maximum(_pre(sae, m, x), 0)[..., 1], -np.inf).reshape(-1)
        best = int(np.argmax(a))
        assert (data.top_seq[m, 0, 0], data.top_pos[m, 0, 0]) == (best // T, best % T)
        logits = (np.asarray(sae.W_dec[m], np.float64)[[1, 2]] * ln) @ W_U
        np.testing.assert_array_equal(data.logit_up_ids[m, :, 0], logits.argmax(1))


def test_gpt2_sources_with_layernorm_and_value_biases_and_centred_logits(tiny_gpt2_dir):
    model, _, _ = load_hf_dir(tiny_gpt2_dir[0])
    cfg = model.cfg
    inputs = [{"layer": 1, "point": "z", "head": 2}, {"layer": 0, "point": "z", "head": 1}]
    sae = init_stack("relu", jax.random.key(3), 2, cfg.d_head, 16)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(4, 10)).astype(np.int32)
    data = feature_data(model, sae, inputs, tokens, latents=[0, 1, 2], k=2, batch_size=4)
    assert data.top_sources is not None and data.source_constant is not None
    z = _all_z(model, tokens)
    W_U, ln = np.asarray(model.unembed_matrix(), np.float64), np.asarray(model.ln_f_w, np.float64)
    checked = 0
    for m, inp in enumerate(inputs):
        for j, lat in enumerate([0, 1, 2]):
            for c in range(2):
                s, t = int(data.top_seq[m, j, c]), int(data.top_pos[m, j, c])
                if s < 0 or data.top_value[m, j, c] <= 0:
                    continue
                pre = _pre(sae, m, z[inp["layer"], s, t, inp["head"]])[lat]
                total = data.top_sources[m, j, c].sum() + data.source_constant[m, j]
                assert total == pytest.approx(pre, abs=1e-4 * max(1, abs(pre)))
                checked += 1
        d = np.asarray(sae.W_dec[m], np.float64)[[0, 1, 2]] @ np.asarray(
            model.blocks.W_O[inp["layer"], inp["head"]], np.float64
        )
        logits = ((d - d.mean(1, keepdims=True)) * ln) @ W_U  # LayerNorm: centred, then the weight
        np.testing.assert_array_equal(data.logit_up_ids[m, :, 0], logits.argmax(1))
        np.testing.assert_allclose(data.logit_down[m, :, 0], logits.min(1), rtol=1e-4, atol=1e-5)
    assert checked >= 6


def test_all_heads_z_sae_reads_every_head_of_its_layer_flattened(setup):
    model, _, _, tokens, lengths, _, _ = setup
    cfg = model.cfg
    sae = init_stack("relu", jax.random.key(4), 1, cfg.n_heads * cfg.d_head, 16)
    data = feature_data(model, sae, [{"layer": 1, "point": "z", "head": None}], tokens, lengths, latents=[3], k=2)
    assert data.top_sources is None
    z = _all_z(model, tokens)[1].reshape(S, T, -1)  # [S, T, H * dh], head-major as SAELens hook_z
    a = np.where(np.arange(T)[None] < lengths[:, None], np.maximum(_pre(sae, 0, z), 0)[..., 3], -np.inf).reshape(-1)
    best = int(np.argmax(a))
    assert (data.top_seq[0, 0, 0], data.top_pos[0, 0, 0]) == (best // T, best % T)
    assert data.top_value[0, 0, 0] == pytest.approx(a[best], rel=1e-4)
