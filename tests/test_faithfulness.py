"""Faithfulness curves: closed form on a model with planted heads, and the batched program against a loop."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.analysis._faithfulness import ablation_masks, faithfulness_curve, log_grid
from jsae.analysis.circuits import metrics_with_heads_replaced, patching_effects, single_head_masks
from jsae.models import capture, edit, forward, load_hf_dir, patch
from jsae.tasks import task_metric

B, T = 6, 7


@pytest.fixture(scope="module")
def planted(tiny_llama_dir):
    """The tiny 2-layer, 4-head Llama with W_O zeroed on every head but (1, 2): only that head can carry
    the task, so every circuit that keeps it recovers exactly 1 and every circuit without it exactly 0."""
    model, _, _ = load_hf_dir(tiny_llama_dir[0])
    keep = np.zeros((2, 4, 1, 1), np.float32)
    keep[1, 2] = 1.0
    model = eqx.tree_at(lambda m: m.blocks.W_O, model, model.blocks.W_O * jnp.asarray(keep))
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 101, size=(B, T)).astype(np.int32)
    corrupted = rng.integers(0, 101, size=(B, T)).astype(np.int32)
    lengths = np.full(B, T, np.int32)
    correct = rng.integers(0, 101, size=(B, 1)).astype(np.int32)
    incorrect = rng.integers(0, 101, size=(B, 1)).astype(np.int32)
    _, cache = forward(model, corrupted, hooks=capture("result"), logits=False)
    return model, clean, lengths, correct, incorrect, np.asarray(cache["result"])


def test_planted_head_gives_a_step_at_its_rank(planted):
    model, clean, lengths, correct, incorrect, source = planted
    n = 8
    for rank in (0, 3, 7):  # put head (1, 2) = row 6 at this position of the ranking
        scores = np.zeros(n)
        order = [h for h in range(n) if h != 6]
        order.insert(rank, 6)
        scores[order] = np.arange(n, 0, -1)
        ks = np.arange(n + 1)
        c = faithfulness_curve(model, clean, lengths, correct, incorrect, "logit_diff", scores, source, ks)
        np.testing.assert_allclose(c.recovered, (ks > rank).astype(float), atol=1e-5)
        # trapezoids over k/n of a step from 0 to 1 between k = rank and rank + 1
        assert c.area == pytest.approx((n - rank - 1) / n + 0.5 / n, abs=1e-5)
        assert c.smallest_k(0.8) == rank + 1


def test_batched_metrics_equal_one_forward_per_mask(planted):
    model, clean, lengths, correct, incorrect, source = planted
    rng = np.random.default_rng(1)
    masks = (rng.random((5, 2, 4)) < 0.5).astype(np.float32)
    got = metrics_with_heads_replaced(model, clean, lengths, correct, incorrect, masks, source, "logit_diff", 2).mean(1)
    for i, m in enumerate(masks):  # the ablation written out: cached result, per-head select, no Replace

        def fn(x, layer, _per_layer, shared):
            mask, src = shared
            return jnp.where(mask[layer][None, None, :, None] > 0, src[layer], x)

        logits, _ = forward(
            model,
            clean,
            hooks=edit("result", fn, shared=(jnp.asarray(m), jnp.asarray(source))),
            lengths=lengths,
            logits="last",
        )
        want = float(task_metric(logits, correct, incorrect, "logit_diff").mean())
        assert float(got[i]) == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_grid_masks_and_errors():
    ks = log_grid(270)
    assert ks[0] == 0 and ks[-1] == 270 and np.all(np.diff(ks) > 0) and len(ks) <= 17
    m = ablation_masks(np.array([0.1, 0.9, 0.5, 0.5]), np.array([0, 1, 2, 4]), n_layers=2)
    np.testing.assert_array_equal(m.reshape(4, 4), [[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="circuit sizes"):
        ablation_masks(np.zeros(4), np.array([5]), n_layers=2)
    with pytest.raises(ValueError, match="finite"):
        ablation_masks(np.array([0.0, np.nan, 1, 2]), np.array([1]), n_layers=2)


def test_many_prompt_reference_equals_the_per_head_loop(tiny_llama_dir):
    """Patching effects from the batched program, split over two calls of prompts, against a plain loop:
    one forward per (head, prompt) with jsae.models.patch, effect and standard error in Python floats."""
    model, _, _ = load_hf_dir(tiny_llama_dir[0])
    rng = np.random.default_rng(2)
    n, L, H = 8, 2, 4
    clean = rng.integers(0, 101, size=(n, T)).astype(np.int32)
    corrupted = rng.integers(0, 101, size=(n, T)).astype(np.int32)
    lengths = np.full(n, T, np.int32)
    correct = rng.integers(0, 101, size=(n, 2)).astype(np.int32)
    incorrect = rng.integers(0, 101, size=(n, 1)).astype(np.int32)
    src = np.asarray(forward(model, corrupted, hooks=capture("result"), logits=False)[1]["result"])

    def metric(tokens, hooks=None):
        logits, _ = forward(model, tokens, hooks=hooks, logits="last")
        return np.asarray(task_metric(logits, correct[: len(tokens)], incorrect[: len(tokens)], "logit_diff"))

    masks = single_head_masks(L, H)
    parts = [
        np.asarray(
            metrics_with_heads_replaced(
                model, clean[s], lengths[s], correct[s], incorrect[s], masks, src[:, s], "logit_diff", 3
            )
        ).T
        for s in (slice(0, 5), slice(5, n))
    ]
    eff = patching_effects(metric(clean), metric(corrupted), np.concatenate(parts))

    m_clean, m_corr = metric(clean), metric(corrupted)
    gap = float(np.mean(m_clean) - np.mean(m_corr))
    for head in range(L * H):
        spec = patch(model, src, heads=[(head // H, head % H)])
        drops = [(float(m_clean[i]) - float(metric(clean, spec)[i])) / gap for i in range(n)]
        mean = sum(drops) / n
        sd = (sum((d - mean) ** 2 for d in drops) / (n - 1)) ** 0.5
        assert eff.effect[head] == pytest.approx(mean, abs=2e-5)
        assert eff.stderr[head] == pytest.approx(sd / n**0.5, abs=2e-5)
    assert eff.top_fraction(0.25).sum() == 2
    np.testing.assert_array_equal(eff.certain(2.0), np.abs(eff.effect) >= 2 * eff.stderr)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        patching_effects(m_clean[:1], m_corr[:1], np.zeros((1, 8)))
