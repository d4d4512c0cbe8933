"""Steering with an SAE decoder direction and generation, on SmolLM2."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.analysis import decoder_direction, generate, next_token_probs, steering_hooks
from jsae.models import capture, forward
from jsae.sae import ReLUSAE, concat

PROMPT = "The capital of France is"


def sae_with_direction(d: int, direction: np.ndarray, latent: int = 2, d_sae: int = 4) -> ReLUSAE:
    r = np.random.default_rng(0)
    W_dec = r.normal(size=(d_sae, d))
    W_dec[latent] = 3.0 * direction  # not unit: decoder_direction normalises
    return ReLUSAE(
        W_enc=jnp.asarray(W_dec.T, jnp.float32),
        b_enc=jnp.zeros(d_sae),
        W_dec=jnp.asarray(W_dec, jnp.float32),
        b_dec=jnp.zeros(d),
        apply_b_dec_to_input=True,
        unit_norm_decoder=False,
    )


@pytest.fixture(scope="module")
def prompt(smollm2):
    _, tok, _ = smollm2
    return tok.encode_batch([PROMPT])


def test_steering_toward_a_token_raises_its_probability(smollm2, prompt):
    model, tok, _ = smollm2
    target = tok.token_id(" banana")
    # the direction whose final-RMSNorm-weighted image is the token's unembedding
    u = np.asarray(model.unembed_matrix()[:, target]) / np.asarray(model.ln_f_w)
    sae = concat([sae_with_direction(model.cfg.d_model, u / np.linalg.norm(u))] * 2)
    direction = decoder_direction(sae, 2, sae_index=1)
    np.testing.assert_allclose(np.asarray(direction), u / np.linalg.norm(u), rtol=1e-5, atol=1e-7)
    layer = model.cfg.n_layers - 1
    probs = {
        a: float(
            next_token_probs(
                model, prompt.ids, prompt.lengths, hooks=steering_hooks(model.cfg, direction, a, layer=layer)
            )[0, target]
        )
        for a in (-30.0, 0.0, 30.0, 60.0)
    }
    clean = float(next_token_probs(model, prompt.ids, prompt.lengths)[0, target])
    assert probs[0.0] == pytest.approx(clean, rel=1e-5)
    assert probs[-30.0] < probs[0.0] < probs[30.0] < probs[60.0]
    assert probs[60.0] > 100 * probs[0.0]


def test_steering_adds_exactly_alpha_times_direction_at_its_layer(smollm2, prompt):
    model, _, _ = smollm2
    direction = jnp.asarray(np.random.default_rng(1).normal(size=model.cfg.d_model), jnp.float32)
    _, clean = forward(model, jnp.asarray(prompt.ids), hooks=capture("resid_mid", "resid_post"))
    _, steered = forward(
        model,
        jnp.asarray(prompt.ids),
        hooks=steering_hooks(model.cfg, direction, 2.5, layer=7) + capture("resid_mid", "resid_post"),
    )
    diff = np.asarray(steered["resid_post"][7] - clean["resid_post"][7])
    np.testing.assert_allclose(diff, np.broadcast_to(2.5 * np.asarray(direction), diff.shape), atol=2e-4)
    np.testing.assert_array_equal(np.asarray(steered["resid_post"][:7]), np.asarray(clean["resid_post"][:7]))
    np.testing.assert_array_equal(np.asarray(steered["resid_mid"][7]), np.asarray(clean["resid_mid"][7]))


def test_per_head_steering_touches_one_head(smollm2, prompt):
    model, _, _ = smollm2
    direction = jnp.ones(model.cfg.d_head)
    _, clean = forward(model, jnp.asarray(prompt.ids), hooks=capture("z"))
    _, steered = forward(
        model,
        jnp.asarray(prompt.ids),
        hooks=steering_hooks(model.cfg, direction, 1.5, layer=3, point="z", head=4) + capture("z"),
    )
    diff = np.asarray(steered["z"][3] - clean["z"][3])  # [B, T, H, dh]
    np.testing.assert_allclose(diff[:, :, 4], 1.5, atol=1e-5)
    np.testing.assert_array_equal(np.delete(diff, 4, axis=2), 0.0)


def test_greedy_generation_matches_step_by_step_argmax(smollm2):
    model, tok, _ = smollm2
    tokens, lengths = tok.encode_batch(["Once upon a time", "The capital of France is"])
    out, out_len = generate(model, tokens, lengths, max_new_tokens=4)
    np.testing.assert_array_equal(out_len, lengths + 4)
    for b in range(2):
        seq = list(tokens[b, : lengths[b]])
        for _ in range(4):  # oracle: unpadded single-row forwards, argmax of the last position
            logits, _ = forward(model, jnp.asarray([seq]))
            assert logits is not None
            seq.append(int(np.argmax(np.asarray(logits[0, -1]))))
        np.testing.assert_array_equal(out[b, : out_len[b]], seq)


def test_sampling_is_reproducible_with_an_explicit_key(smollm2, prompt):
    model, _, _ = smollm2
    a, _ = generate(model, prompt.ids, prompt.lengths, max_new_tokens=3, temperature=1.0, key=jax.random.key(3))
    b, _ = generate(model, prompt.ids, prompt.lengths, max_new_tokens=3, temperature=1.0, key=jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="needs an explicit PRNG key"):
        generate(model, prompt.ids, prompt.lengths, max_new_tokens=3, temperature=1.0)


def test_steering_bad_inputs(smollm2):
    model, _, _ = smollm2
    cfg = model.cfg
    with pytest.raises(ValueError, match=r"needs \[576\]"):
        steering_hooks(cfg, jnp.ones(64), 1.0, layer=2)
    with pytest.raises(ValueError, match="layer 30 is out of range"):
        steering_hooks(cfg, jnp.ones(576), 1.0, layer=30)
    with pytest.raises(ValueError, match="latent 9 is out of range"):
        decoder_direction(sae_with_direction(8, np.ones(8)), 9)
