"""First-letter task on SmolLM2's tokenizer; the model-side pieces on a tiny random Llama (HF oracle-free
identities: truncation = full forward, integrated-gradients completeness)."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.tasks.first_letter import (
    LETTERS,
    alphabetic_vocabulary,
    answer_token_ids,
    build_prompts,
    icl_prompt,
    train_test_split,
)


@pytest.fixture(scope="module")
def vocab(smollm2):
    return alphabetic_vocabulary(smollm2[1])


def test_vocabulary_is_alphabetic_single_tokens(smollm2, vocab):
    tok = smollm2[1]
    assert len(vocab) > 10_000
    rng = np.random.default_rng(0)
    for i in rng.choice(len(vocab), 200, replace=False):
        w = vocab.words[i]
        assert re.fullmatch(r" ?[A-Za-z]+", w)
        assert tok.encode(w) == [int(vocab.ids[i])]
        assert LETTERS[vocab.letters[i]] == w.strip()[0].upper()
    assert any(w.startswith(" ") for w in vocab.words) and any(not w.startswith(" ") for w in vocab.words)


def test_split_is_80_20_and_disjoint(vocab):
    train, test = train_test_split(vocab, seed=0)
    assert len(train) + len(test) == len(vocab)
    assert len(train) / len(vocab) == pytest.approx(0.8, abs=1e-3)
    assert not set(train.ids.tolist()) & set(test.ids.tolist())


def test_prompts_locate_the_target_token(smollm2, vocab):
    tok = smollm2[1]
    train, test = train_test_split(vocab, seed=0)
    targets = test.subset(np.arange(40))
    p = build_prompts(tok, targets, train, n_examples=10, seed=3)
    assert len(p.letters) >= 38  # almost every word is found
    for r in range(len(p.letters)):
        lines = p.texts[r].split("\n")
        assert len(lines) == 11
        target = lines[-1][: -len(" has the first letter:")]
        assert lines[-1].endswith(" has the first letter:")
        assert all(line.endswith(f": {LETTERS[LETTERS.index(line.strip()[0].upper())]}") for line in lines[:-1])
        assert target not in [line.split(" has the first")[0] for line in lines[:-1]]
        assert p.tokens[r, p.word_pos[r]] == p.word_ids[r] == tok.token_id(target)
        assert tok.decode(p.tokens[r, : p.lengths[r]]) == p.texts[r]
    assert (
        icl_prompt(" cat", [" dog", "Eel"])
        == " dog has the first letter: D\nEel has the first letter: E\n cat has the first letter:"
    )
    ids = answer_token_ids(tok)
    assert [tok.decode([i]) for i in ids] == [" " + c for c in LETTERS]


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    from jsae.models import load

    return load(str(tiny_llama_dir[0]))[0]


@pytest.mark.parametrize("model_dir", ["tiny_llama_dir", "tiny_gpt2_dir"])  # RoPE; learned positions
def test_forward_from_a_layer_continues_the_full_forward(request, model_dir):
    """``forward(layer_range(model, l), tokens, resid=resid_pre[l])`` (what the absorption IG runs after
    its splice) gives the full forward's logits and later residuals, on right-padded rows."""
    from jsae.models import ModelError, capture, forward, layer_range, load

    model = load(str(request.getfixturevalue(model_dir)[0]))[0]
    rng = np.random.default_rng(5)
    tokens = jnp.asarray(rng.integers(0, 90, (3, 11)), jnp.int32)
    lengths = jnp.asarray([11, 7, 9], jnp.int32)
    logits, cache = forward(model, tokens, hooks=capture("resid_pre", "resid_post"), lengths=lengths)
    for layer in range(model.cfg.n_layers):
        tail = layer_range(model, layer)
        got, c = forward(tail, tokens, hooks=capture("resid_post"), lengths=lengths, resid=cache["resid_pre"][layer])
        scale = float(jnp.abs(logits).max())
        np.testing.assert_allclose(np.asarray(got), np.asarray(logits), rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(
            np.asarray(c["resid_post"]), np.asarray(cache["resid_post"][layer:]), rtol=1e-5, atol=1e-5
        )
    with pytest.raises(ModelError, match="resid must be"):
        forward(model, tokens, resid=cache["resid_pre"][0][:, :5])


def test_truncated_residual_equals_full_forward(tiny_llama):
    from jsae.analysis._absorption_run import residual_at_positions
    from jsae.models import capture, forward

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 101, (5, 12)).astype(np.int32)
    pos = np.array([3, 11, 0, 7, 5], np.int32)
    _, cache = forward(tiny_llama, jnp.asarray(tokens), hooks=capture("resid_post"))
    full = np.asarray(cache["resid_post"][0])[np.arange(5), pos]  # layer 0 of 2
    got = residual_at_positions(tiny_llama, tokens, pos, 0, batch_size=4)
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)


def test_integrated_gradients_are_complete(tiny_llama):
    """IG completeness: sum_j IG_j = metric(x) - metric(x with the latents removed, error kept), which
    the test measures directly with two patched forwards (no gradients)."""
    from absorption_reference import integrated_gradient_effects

    from jsae.analysis._absorption_run import residual_at_positions
    from jsae.models import add, forward
    from jsae.sae import relu

    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 101, (3, 10)).astype(np.int32)
    lengths = np.array([10, 8, 9], np.int32)
    pos = np.array([4, 6, 2], np.int32)
    letters = np.array([0, 5, 25], np.int32)
    answer_ids = np.arange(40, 66, dtype=np.int32)
    layer = 0
    resid = residual_at_positions(tiny_llama, tokens, pos, layer)
    sae = relu.init(jax.random.key(0), 64, 32, decoder_norm=1.0)
    sae = eqx.tree_at(lambda s: s.W_dec, sae, sae.W_dec * 30.0)  # latents that move the logits visibly
    effects = integrated_gradient_effects(
        tiny_llama, sae, tokens, lengths, pos, letters, resid, layer, answer_ids, steps=64, rows_per_call=64
    )
    v = np.asarray(sae.encode(jnp.asarray(resid))) @ np.asarray(sae.W_dec)

    def metric(delta_scale):
        delta = np.zeros((2, 3, 10, 64), np.float32)
        delta[layer, np.arange(3), pos] = delta_scale * v
        logits, _ = forward(tiny_llama, jnp.asarray(tokens), hooks=add("resid_post", jnp.asarray(delta)))
        last = np.asarray(logits)[np.arange(3), lengths - 1][:, answer_ids]
        right = last[np.arange(3), letters]
        return right - (last.sum(axis=1) - right) / 25

    expected = metric(0.0) - metric(-1.0)
    assert np.abs(expected).min() > 1e-2  # the latents matter
    np.testing.assert_allclose(-effects.sum(axis=1), expected, rtol=5e-3, atol=1e-4)


@pytest.mark.parametrize("layer", [0, 1])
def test_ig_gradients_equal_the_full_spliced_forward(tiny_llama, layer):
    """ig_gradients (clean run to the splice, then the model's forward from the next layer) against the
    full-model splice with an ``add`` hook (the oracle, tests/absorption_reference.py)."""
    from absorption_reference import integrated_gradient_effects

    from jsae.analysis._absorption import ablation_effects, ig_alphas, ig_gradients
    from jsae.analysis._absorption_run import residual_at_positions
    from jsae.sae import relu

    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 101, (4, 12)).astype(np.int32)
    lengths = np.array([12, 9, 10, 7], np.int32)
    pos = np.array([8, 6, 5, 6], np.int32)  # suffixes of 4, 3, 5, 1 positions
    letters = np.array([0, 5, 25, 3], np.int32)
    answer_ids = np.arange(40, 66, dtype=np.int32)
    resid = residual_at_positions(tiny_llama, tokens, pos, layer)
    sae = relu.init(jax.random.key(0), 64, 32, decoder_norm=1.0)
    sae = eqx.tree_at(lambda s: s.W_dec, sae, sae.W_dec * 30.0)
    want = integrated_gradient_effects(tiny_llama, sae, tokens, lengths, pos, letters, resid, layer, answer_ids)
    f = sae.encode(jnp.asarray(resid))
    deltas = (ig_alphas(4)[None, :, None] - 1.0) * (f @ sae.W_dec)[:, None, :]
    g = ig_gradients(tiny_llama, tokens, lengths, pos, letters, deltas, jnp.asarray(answer_ids), layer)
    got = np.asarray(ablation_effects(f, sae.W_dec, g))
    assert np.abs(want).max() > 1e-2
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
