"""Max-activating examples: numpy brute force over captured activations, hand-checked helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.analysis._max_activating import (
    contexts_from_stream,
    format_context,
    latent_activations,
    max_activating_examples,
    top_positions,
)
from jsae.models import capture, forward
from jsae.sae import relu

TEXT = (
    "The cat sat on the mat. The dog chased the cat around the garden, and then the cat climbed a tree. "
    "Numbers: 1 2 3 4 5. The end of the story is near, said the old man to the sea."
)


def test_contexts_from_stream_by_hand():
    tokens, lengths = contexts_from_stream(np.arange(1, 8), context=3)
    np.testing.assert_array_equal(tokens, [[1, 2, 3], [4, 5, 6], [7, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 3, 1])


def test_top_positions_ignores_padding_and_sorts():
    acts = np.array([[0.5, 2.0, 9.0], [3.0, 0.0, 0.0]])
    assert top_positions(acts, np.array([2, 3]), k=3) == [(1, 0, 3.0), (0, 1, 2.0), (0, 0, 0.5)]
    assert top_positions(np.zeros((2, 3)), np.array([3, 3]), k=2) == []


def test_examples_match_numpy_brute_force(smollm2):
    model, tok, _ = smollm2
    tokens, lengths = contexts_from_stream(tok.encode(TEXT), context=16)
    sae = relu.init(jax.random.key(0), model.cfg.d_model, 32, decoder_norm=1.0)
    latents, layer, k = [3, 17], 5, 4
    examples = max_activating_examples(
        model, tok, sae, tokens, lengths, latents=latents, layer=layer, k=k, batch_size=3, left=3, right=1
    )
    _, cache = forward(model, jnp.asarray(tokens), hooks=capture("resid_post"))
    x = np.asarray(cache["resid_post"][layer], np.float64)  # [S, T, D]
    f = np.maximum((x - np.asarray(sae.b_dec)) @ np.asarray(sae.W_enc, np.float64) + np.asarray(sae.b_enc), 0)
    for lat in latents:
        a = np.where(np.arange(tokens.shape[1])[None] < lengths[:, None], f[..., lat], -np.inf)
        order = np.argsort(-a, axis=None)[:k]
        got = examples[lat]
        assert [(e.sequence, e.position) for e in got] == [divmod(int(o), tokens.shape[1]) for o in order]
        np.testing.assert_allclose([e.activation for e in got], a.reshape(-1)[order], rtol=1e-4)
        for e in got:
            word = tok.decode(tokens[e.sequence, e.position : e.position + 1])
            assert f"«{word}»" in e.text and e.latent == lat


def test_format_context_marks_the_token(smollm2):
    _, tok, _ = smollm2
    row = np.asarray(tok.encode(" one two three four five"))
    text = format_context(tok, row, 2, len(row), left=1, right=1)
    assert text == " two« three» four"


def test_bad_inputs(smollm2):
    model, tok, _ = smollm2
    tokens, lengths = contexts_from_stream(tok.encode(TEXT), context=16)
    sae = relu.init(jax.random.key(0), model.cfg.d_model, 8)
    with pytest.raises(ValueError, match="latents must be in 0..7"):
        latent_activations(model, sae, tokens, lengths, latents=[8], layer=1)
    with pytest.raises(ValueError, match="d_in=576 but 'z' has width 64"):
        latent_activations(model, sae, tokens, lengths, latents=[1], layer=1, point="z", head=0)
    with pytest.raises(ValueError, match="empty stream"):
        contexts_from_stream([], 4)
