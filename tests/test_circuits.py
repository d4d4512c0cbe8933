"""ROC evaluation, planted-signal discovery, and the patching baselines against brute-force loops."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.analysis import _codes as K
from jsae.analysis import circuits as C
from jsae.tasks import Task, pad_answers


def _brute_auc(scores, ref):
    pos, neg = scores[ref], scores[~ref]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    ref = rng.random(40) < 0.3
    ref[0], ref[1] = True, False
    assert C.roc_auc(scores, ref) == pytest.approx(_brute_auc(scores, ref))


def test_roc_auc_errors():
    with pytest.raises(ValueError, match="at least one head"):
        C.roc_auc(np.arange(3.0), np.zeros(3, bool))
    with pytest.raises(ValueError, match="same shape"):
        C.roc_auc(np.arange(3.0), np.zeros(4, bool))


def test_evaluate_hand_computed():
    # heads 0..5, reference {0, 1, 2}; ranking 0 > 3 > 1 > 4 > 2 > 5
    scores = np.array([6.0, 4, 2, 5, 3, 1])
    ref = np.array([1, 1, 1, 0, 0, 0], bool)
    ev = C.evaluate(scores, ref)
    assert ev["auc"] == pytest.approx(6 / 9)  # pairs won: 0 beats 3 heads, 1 beats 2, 2 beats 1
    assert ev["at_k"]["precision"] == pytest.approx(2 / 3)  # top 3 = {0, 3, 1}
    assert ev["at_k"]["recall"] == pytest.approx(2 / 3)
    assert ev["at_k"]["tnr"] == pytest.approx(2 / 3)
    assert ev["at_k"]["authors_f1_tpr_tnr"] == pytest.approx(2 / 3)
    # best F1: top 1 -> P 1, R 1/3, F1 .5; top 3 -> 2/3; top 5 -> P 3/5 R 1 F1 .75; top 6 -> .667
    assert ev["best"]["f1"] == pytest.approx(0.75)
    assert ev["best"]["n_selected"] == 5
    fpr, tpr = C.roc_curve(scores, ref)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)


def test_reference_lists_have_published_sizes():
    assert len(set(C.GPT2_IOI_HEADS)) == 26
    assert len(set(C.GPT2_GREATER_THAN_HEADS)) == 9
    assert len(set(C.ATTN_ONLY_4L_DOCSTRING_HEADS)) == 6
    m = C.head_mask_from_list(C.GPT2_IOI_HEADS, 12, 12)
    assert m.sum() == 26 and m[9 * 12 + 9] and m[11 * 12 + 10]
    with pytest.raises(ValueError, match="outside"):
        C.head_mask_from_list([(12, 0)], 12, 12)


def _planted(seed, H=12, n=120, d=16, planted=(2, 7, 9)):
    """Every head shows one of 3 background directions on every prompt; the planted heads show one of 4
    other, larger directions instead, only on positive prompts."""
    rng = np.random.default_rng(seed)
    positive = np.arange(n) < n // 2
    acts = 0.05 * rng.normal(size=(H, n, d))
    for h in range(H):
        background = rng.normal(size=(3, d))
        signal = 3 * rng.normal(size=(4, d))
        for i in range(n):
            acts[h, i] += signal[rng.integers(4)] if (h in planted and positive[i]) else background[rng.integers(3)]
    ref = np.zeros(H, bool)
    ref[list(planted)] = True
    return acts.astype(np.float32), positive, ref


@pytest.mark.parametrize("method", ["sae_shared", "sae_per_head", "sae_edges"])
def test_planted_heads_rank_first(method):
    acts, positive, ref = _planted(0)
    cfg = C.SAECodeConfig(d_sae=32, per_head_d_sae=16, l1=0.001, epochs=300, n_train=40)
    found = C.sae_code_scores(jax.random.key(0), acts, positive, method, cfg)
    assert C.roc_auc(found.scores, ref) >= 0.95


def _planted_paired(seed, H=12, n_pairs=60, d=16, planted=(2, 7, 9)):
    """Pairs of prompts (positive row i, negative row n_pairs + i) that agree on every head except the
    planted ones, where the positive shows one of 4 signal directions instead of the background."""
    rng = np.random.default_rng(seed)
    base = np.zeros((H, n_pairs, d))
    signal = np.zeros((H, n_pairs, d))
    for h in range(H):
        background = rng.normal(size=(3, d))
        directions = 3 * rng.normal(size=(4, d))
        base[h] = background[rng.integers(3, size=n_pairs)]
        signal[h] = directions[rng.integers(4, size=n_pairs)] if h in planted else base[h]
    acts = np.concatenate([signal, base], axis=1) + 0.05 * rng.normal(size=(H, 2 * n_pairs, d))
    positive = np.arange(2 * n_pairs) < n_pairs
    ref = np.zeros(H, bool)
    ref[list(planted)] = True
    return acts.astype(np.float32), positive, n_pairs + np.arange(n_pairs), ref


@pytest.mark.parametrize("method", ["sae_shared_paired", "sae_per_head_paired"])
def test_paired_methods_rank_planted_heads_first(method):
    acts, positive, pair, ref = _planted_paired(0)
    cfg = C.SAECodeConfig(d_sae=32, per_head_d_sae=16, l1=0.001, epochs=300, n_train=40)
    found = C.sae_code_scores(jax.random.key(0), acts, positive, method, cfg, pair=pair)
    assert C.roc_auc(found.scores, ref) >= 0.95
    with pytest.raises(ValueError, match="needs pair"):
        C.sae_code_scores(jax.random.key(0), acts, positive, method, cfg)


@pytest.mark.parametrize(
    "cfg",
    [
        C.SAECodeConfig(),  # the default: seeds x top-k codes
        C.SAECodeConfig(per_head_seeds=1, per_head_code="argmax"),
        C.SAECodeConfig(per_head_seeds=2, per_head_code="active", per_head_weight="decoder"),
    ],
)
def test_stack_paired_ranks_planted_heads_first(cfg):
    """The default method, through ``discover``, on planted pairs (every row trains, right or wrong)."""
    acts, positive, pair, ref = _planted_paired(0, n_pairs=12, d=64)
    got = C.TaskActivations(acts, positive, 1.0, np.zeros(12), pair)
    found = C.discover(None, None, None, key=jax.random.key(0), sae_config=cfg, activations=got)  # pyright: ignore[reportArgumentType]
    assert found.method == "sae_stack_paired" and found.scores.shape == (12,)
    assert C.roc_auc(found.scores, ref) >= 0.95
    assert found.info["seeds"] == cfg.per_head_seeds
    with pytest.raises(ValueError, match="needs pair"):
        C.discover(None, None, None, sae_config=cfg, activations=C.TaskActivations(acts, positive, 1.0, np.zeros(12)))  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="top_k must be"):
        C.stack_variant(C.SAECodeConfig(per_head_top_k=99))


def test_activation_difference_matches_loop():
    rng = np.random.default_rng(3)
    acts = rng.normal(size=(4, 10, 5)) * np.array([1.0, 10.0, 0.1, 1.0])[:, None, None]
    acts[3] = 2.0  # a head that never varies scores 0
    positive = np.arange(10) < 4
    pair = np.array([7, 4, 9, 5])
    got = C.activation_difference_scores(acts, positive, pair).scores
    for h in range(3):
        change = np.mean([np.linalg.norm(acts[h, i] - acts[h, pair[i]]) for i in range(4)])
        centre = acts[h].mean(axis=0)
        spread = np.mean([np.linalg.norm(acts[h, j] - centre) for j in range(10)])
        assert got[h] == pytest.approx(change / spread, rel=1e-5)
    assert got[3] == 0.0
    with pytest.raises(ValueError, match="needs pair"):
        C.activation_difference_scores(acts, positive, pair[:2])


def test_standardise_heads_matches_loop():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(3, 9, 4)) * np.array([1.0, 100.0, 0.01])[:, None, None] + 50.0
    acts[2] = 7.0  # a head that never varies
    rows = np.array([1, 4, 5, 8])
    got = C.standardise_heads(acts, rows)
    for h in range(2):
        mu = acts[h, rows].mean(axis=0)
        spread = np.mean([np.linalg.norm(acts[h, r] - mu) for r in rows])
        np.testing.assert_allclose(got[h], (acts[h] - mu) * 2.0 / spread, rtol=1e-4, atol=1e-5)  # sqrt(4) = 2
    np.testing.assert_array_equal(got[2], 0.0)


@pytest.mark.parametrize("basis", [False, True])
def test_per_head_saes_reconstruct_offset_heads(basis):
    """Head outputs averaged over positions are a large per-head offset plus small prompt-to-prompt
    variation, with norms differing 100x between heads: the per-head SAEs (as trained for
    ``sae_per_head``, at full width or in the rows' basis) must still reconstruct their training rows
    (explained variance computed here in numpy from the returned weights, on the rows or on their
    coordinates in the basis) with a few active latents, and the returned codes are the argmax latents
    of those weights."""
    rng = np.random.default_rng(1)
    H, n, d = 6, 10, 32
    scale = np.array([0.01, 0.1, 1.0, 3.0, 10.0, 30.0])[:, None, None]
    offset = 20 * rng.normal(size=(H, 1, d))
    variation = rng.normal(size=(H, 3, d))[:, rng.integers(3, size=n)] + 0.1 * rng.normal(size=(H, n, d))
    acts = (scale * (offset + variation)).astype(np.float32)
    rows = np.arange(n)
    cfg = C.SAECodeConfig()
    standard = C.standardise_heads(acts, rows)
    sae, inputs, codes, _ = C.fit_per_head(
        jax.random.key(0),
        jnp.asarray(standard),
        jnp.asarray(rows),
        cfg.per_head_l1 * d,
        cfg.per_head_lr,
        d_sae=cfg.per_head_d_sae,
        epochs=cfg.per_head_epochs,
        basis=basis,
    )
    s = jax.tree.map(np.asarray, sae)
    assert s.W_enc.shape == (H, n if basis else d, cfg.per_head_d_sae)
    q = np.asarray(C.row_basis(jnp.asarray(standard)))
    for h in range(H):
        x = standard[h] @ q[h] if basis else standard[h]
        np.testing.assert_allclose(np.asarray(inputs)[h], x, rtol=1e-4, atol=1e-4)
        f = np.maximum((x - s.b_dec[h]) @ s.W_enc[h] + s.b_enc[h], 0)
        x_hat = f @ s.W_dec[h] + s.b_dec[h]
        ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()  # the rows' own EV (an isometry)
        assert ev > 0.5, (h, ev)
        assert 0.5 <= (f > 0).sum(-1).mean() <= 8, h
        top2 = np.sort(f, axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-4  # rows whose argmax is not a float tie
        np.testing.assert_array_equal(np.asarray(codes)[clear, h], f.argmax(-1)[clear])


def test_row_basis_is_an_isometry_of_the_rows():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5, 12)).astype(np.float32)
    x[2, 4] = x[2, 0] + x[2, 1]  # rank-deficient rows are still held exactly
    x[1] *= 1e4  # the scale of a head's rows does not matter
    q = np.asarray(C.row_basis(jnp.asarray(x)))
    assert q.shape == (3, 12, 5)
    assert np.linalg.norm(q[2, :, 4]) == 0  # the dependent row adds no column
    for h in range(3):
        gram = np.eye(5) if h < 2 else np.diag([1.0, 1, 1, 1, 0])
        np.testing.assert_allclose(q[h].T @ q[h], gram, atol=1e-5)
        np.testing.assert_allclose(x[h] @ q[h] @ q[h].T, x[h], rtol=1e-5, atol=1e-5 * np.abs(x[h]).max())
        coords = x[h] @ q[h]
        dist = np.linalg.norm(x[h][:, None] - x[h][None], axis=-1)
        got = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
        np.testing.assert_allclose(got, dist, atol=1e-4 * dist.max())


def test_one_program_fit_equals_the_trainer():
    """The per-head fit runs the trainer's own step in one program: at full width it gives the
    ``train()`` run's codes and metrics (the same unit-norm ReLU stack and full-batch run through the
    trainer's host loop, then ``discretise``)."""
    from jsae.sae.registry import init_stack
    from jsae.train import TrainConfig, train

    rng = np.random.default_rng(4)
    H, n, d = 5, 12, 8
    standard = C.standardise_heads(rng.normal(size=(H, n, d)).astype(np.float32), np.arange(0, n, 2))
    rows = np.arange(0, n, 2)
    key = jax.random.key(3)
    sae, _, codes, metrics = C.fit_per_head(
        key, jnp.asarray(standard), jnp.asarray(rows), 0.08, 5e-3, d_sae=6, epochs=40, basis=False
    )
    m = len(rows)
    tc = TrainConfig(
        steps=40,
        batch_size=m,
        lr=5e-3,
        sparsity_coef=0.08,
        grad_clip=None,
        chunk_steps=40,
        dead_after_tokens=m * 40 + 1,
    )
    result = train(init_stack("relu", key, H, d, 6, unit_norm_decoder=True), standard[:, rows], tc, progress=False)
    np.testing.assert_allclose(np.asarray(sae.W_enc), np.asarray(result.sae.W_enc), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(K.discretise(result.sae, standard, per_head=True)))
    for k in ("l0", "explained_variance", "loss"):
        np.testing.assert_allclose(np.asarray(metrics[k]), result.metrics[k], rtol=1e-4, atol=1e-6)


def test_paired_codes_in_the_row_basis_rank_planted_heads_first():
    """Few prompts of wide heads (24 rows, width 64): the per-head SAEs train in the rows' basis."""
    acts, positive, pair, ref = _planted_paired(0, n_pairs=12, d=64)
    cfg = C.SAECodeConfig(per_head_d_sae=16, n_train=12)
    found = C.sae_code_scores(jax.random.key(0), acts, positive, "sae_per_head_paired", cfg, pair=pair)
    assert C.roc_auc(found.scores, ref) >= 0.95
    assert found.info["explained_variance"] > 0.5


def test_per_head_method_is_its_pieces_composed():
    """``sae_code_scores`` runs the per-head method in few programs (the key split inside the row draw);
    its scores and info are exactly those of the public pieces called one by one: the key split, the
    rows drawn eagerly, the standardised rows, :func:`fit_per_head` and the paired code change."""
    acts, positive, pair, _ = _planted_paired(1, n_pairs=12, d=64)
    cfg = C.SAECodeConfig(per_head_d_sae=16, n_train=10)
    key = jax.random.key(4)
    found = C.sae_code_scores(key, acts, positive, "sae_per_head_paired", cfg, pair=pair)
    k_rows, k_sae = jax.random.split(key)
    k1, k2, k3 = jax.random.split(k_rows, 3)
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    drawn = np.concatenate(
        [jax.random.choice(k1, pos, (5,), replace=False), jax.random.choice(k2, neg, (5,), replace=False)]
    )
    rows = drawn[np.asarray(jax.random.permutation(k3, 10))]
    d = acts.shape[2]
    _, _, codes, metrics = C.fit_per_head(
        k_sae,
        jnp.asarray(C.standardise_heads(acts, rows)),
        jnp.asarray(rows),
        cfg.per_head_l1 * d,
        cfg.per_head_lr,
        d_sae=cfg.per_head_d_sae,
        epochs=cfg.per_head_epochs,
        basis=True,
    )
    np.testing.assert_array_equal(found.scores, np.asarray(K.paired_code_changes(codes, pos, pair), np.float64))
    assert found.info == {
        "n_train": 10,
        **{k: float(np.mean(metrics[k])) for k in ("l0", "explained_variance", "dead_fraction")},
    }


def test_family_program_is_its_pieces_composed():
    """``family_scores`` trains the stack and reads every variant's scores in one program; the numbers
    are exactly those of the public pieces called one by one (:func:`fit_stack` on ``fold_in`` keys,
    every SAE's latents, :func:`decoder_norms`, :func:`code_change_scores`, :func:`combine_seeds`)."""
    acts, positive, pair, _ = _planted_paired(2, n_pairs=10, d=48)
    rows = C.PairedRows(acts, np.flatnonzero(positive), pair)
    variants = [
        C.CodeVariant(epochs=30, seeds=3, code="topk", top_k=2),
        C.CodeVariant(epochs=30, seeds=2, code="argmax", weight="decoder", l1=0.03),
        C.CodeVariant(epochs=30, seeds=3, code="active", combine="vote"),
    ]
    key = jax.random.key(7)
    got, info = C.family_scores(key, rows, variants)
    H, m, d = acts.shape
    standard, scale = C.standardise_with_scale(acts, np.arange(m))
    l1s = (0.01, 0.03)
    sae, x, q, _ = C.fit_stack(
        jnp.stack([jax.random.fold_in(key, s) for s in range(3)]),
        jnp.asarray(standard),
        jnp.arange(m),
        tuple(c * d for c in l1s),
        5e-3,
        d_sae=16,
        epochs=30,
        basis=True,
    )
    latents = np.asarray(jax.vmap(lambda e, v: e.encode(v))(sae, jnp.tile(x, (6, 1, 1)))).reshape(3, 2, H, m, 16)
    w_dec = np.asarray(sae.W_dec).reshape(3, 2, H, 16, -1)
    assert q is not None and info["basis"] and info["l1"] == list(l1s)
    for v, scores in zip(variants, got):
        p = l1s.index(v.l1)
        norms = np.stack([C.decoder_norms(w_dec[s, p], np.asarray(q), scale, None) for s in range(v.seeds)])
        per_seed = C.code_change_scores(latents[: v.seeds, p], rows.clean, rows.corrupted, v, norms)
        np.testing.assert_array_equal(scores, C.combine_seeds(per_seed, v.combine, v.vote_fraction))


# ---------------------------------------------------------------------------------------------------
# Patching baselines on a tiny random Llama, against one-head-at-a-time loops


class CharTokenizer:
    """Characters -> ids < 101 (the tiny model's vocabulary)."""

    pad_id = 0

    def encode(self, text):
        return [1 + (ord(c) % 100) for c in text]


@pytest.fixture(scope="module")
def tiny_task(tiny_llama_dir):
    from jsae.models import load

    model, _, _ = load(tiny_llama_dir[0])
    clean = ["abcdefgh", "hgfedcba", "aabbccdd", "qrstuvwx"]
    corrupted = ["abcdzzgh", "hgfezzba", "aabbzzdd", "qrstzzwx"]
    task = Task("toy", clean, corrupted, pad_answers([[5], [6], [7], [8]]), pad_answers([[9, 10]] * 4), "logit_diff")
    return model, task


def _metric_np(logits, task):
    last = np.asarray(logits)[:, -1]
    return np.mean(
        [
            last[i, task.correct[i][task.correct[i] >= 0]].mean()
            - last[i, task.incorrect[i][task.incorrect[i] >= 0]].mean()
            for i in range(len(task))
        ]
    )


def test_activation_patching_matches_loop(tiny_task):
    from jsae.models import capture, forward, patch

    model, task = tiny_task
    tok = CharTokenizer()
    found = C.activation_patching(model, tok, task, heads_per_batch=3)
    clean = jnp.asarray([tok.encode(p) for p in task.clean])
    corrupted = jnp.asarray([tok.encode(p) for p in task.corrupted])
    m_clean = _metric_np(forward(model, clean)[0], task)
    m_corr = _metric_np(forward(model, corrupted)[0], task)
    source = forward(model, corrupted, hooks=capture("result"))[1]["result"]
    cfg = model.cfg
    for layer, head in itertools.product(range(cfg.n_layers), range(cfg.n_heads)):
        patched = _metric_np(forward(model, clean, hooks=patch(model, source, [(layer, head)]))[0], task)
        expected = (m_clean - patched) / (m_clean - m_corr)
        assert found.scores[layer * cfg.n_heads + head] == pytest.approx(expected, rel=1e-3, abs=1e-4)


def test_attribution_patching_is_the_gradient(tiny_task):
    from jsae.models import HookSpec, Replace, capture, forward

    model, task = tiny_task
    tok = CharTokenizer()
    found = C.attribution_patching(model, tok, task)
    clean = jnp.array([tok.encode(p) for p in task.clean])
    corrupted = jnp.array([tok.encode(p) for p in task.corrupted])
    source = forward(model, corrupted, hooks=capture("result"))[1]["result"]
    m_clean = _metric_np(forward(model, clean)[0], task)
    m_corr = _metric_np(forward(model, corrupted)[0], task)
    cfg = model.cfg
    eps = 1e-2
    for layer, head in [(0, 1), (1, 3)]:
        mask = np.zeros((cfg.n_layers, cfg.n_heads), np.float32)
        mask[layer, head] = 1.0
        m = [
            _metric_np(
                forward(model, clean, hooks=HookSpec(edits={"result": Replace(jnp.asarray(s * eps * mask), source)}))[
                    0
                ],
                task,
            )
            for s in (1, -1)
        ]
        expected = -((m[0] - m[1]) / (2 * eps)) / (m_clean - m_corr)
        assert found.scores[layer * cfg.n_heads + head] == pytest.approx(expected, rel=2e-2, abs=1e-3)


def test_harvest_task_matches_models_harvest(smollm2):
    """Per-head position-mean results and labels on SmolLM2, against jsae.models.harvest."""
    from jsae.models import harvest
    from jsae.tasks import ioi

    model, tok, _ = smollm2
    task = ioi(tok, 6, seed=5)
    got = C.harvest_task(model, tok, task, batch_size=8)
    assert got.accuracy >= 0.5  # SmolLM2 does IOI
    right = got.positive.sum()
    assert got.acts.shape == (270, right + 6, 576) and (~got.positive).sum() == 6
    oracle = harvest(
        model, task.clean + task.corrupted, tokenizer=tok, point="result", positions="mean", progress=False
    )
    np.testing.assert_allclose(got.acts[:, right:], oracle[:, 6:], rtol=1e-3, atol=1e-4)
    clean_index = got.pair - right  # the clean prompt of each positive row, and its own corruption
    np.testing.assert_allclose(got.acts[:, :right], oracle[:, clean_index], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got.acts[:, got.pair], oracle[:, 6 + clean_index], rtol=1e-3, atol=1e-4)
