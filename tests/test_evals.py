"""SAE evaluations: activation metrics against a numpy brute force; spliced CE/KL on SmolLM2 against
hand-built identity (score 1) and zero (score 0) SAEs, and against a plain full-model splice (one
forward per SAE, CE in numpy) for random SAEs and per-head ablations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.analysis import activation_metrics, density_histogram, spliced_losses
from jsae.models import forward, zero_ablate
from jsae.models.hooks import edit
from jsae.sae import ReLUSAE, concat, index, topk


def relu_sae(W_enc: np.ndarray, W_dec: np.ndarray, b_enc=None, b_dec=None, apply_b_dec_to_input=False) -> ReLUSAE:
    d_in, d_sae = W_enc.shape
    return ReLUSAE(
        W_enc=jnp.asarray(W_enc, jnp.float32),
        b_enc=jnp.zeros(d_sae) if b_enc is None else jnp.asarray(b_enc, jnp.float32),
        W_dec=jnp.asarray(W_dec, jnp.float32),
        b_dec=jnp.zeros(d_in) if b_dec is None else jnp.asarray(b_dec, jnp.float32),
        apply_b_dec_to_input=apply_b_dec_to_input,
        unit_norm_decoder=False,
    )


def identity_sae(d: int) -> ReLUSAE:
    """relu(x) - relu(-x) = x: encode/decode reproduce x exactly."""
    eye = np.eye(d)
    return relu_sae(np.concatenate([eye, -eye], 1), np.concatenate([eye, -eye], 0))


def zero_sae(d: int) -> ReLUSAE:
    eye = np.eye(d)
    return relu_sae(np.concatenate([eye, -eye], 1), np.zeros((2 * d, d)))


def numpy_metrics(W_enc, b_enc, W_dec, b_dec, x, dense_threshold):
    x = x.astype(np.float64)
    f = np.maximum((x - b_dec) @ W_enc + b_enc, 0.0)
    xh = f @ W_dec + b_dec
    n, d = x.shape
    err = ((x - xh) ** 2).sum()
    freq = (f > 0).mean(0)
    return {
        "l0": (f > 0).sum(1).mean(),
        "mse": err / (n * d),
        "explained_variance": 1 - err / ((x - x.mean(0)) ** 2).sum(),
        "cosine_similarity": np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(x, xh)]),
        "l2_ratio": np.mean(np.linalg.norm(xh, axis=1) / np.linalg.norm(x, axis=1)),
        "dead_fraction": np.mean(freq == 0),
        "dense_fraction": np.mean(freq > dense_threshold),
    }, freq


@pytest.mark.parametrize("shared", [True, False])
def test_activation_metrics_match_numpy(shared):
    r = np.random.default_rng(0)
    n_sae, d, m, n = 3, 5, 8, 37
    params = [
        dict(
            W_enc=r.normal(size=(d, m)),
            b_enc=r.normal(size=m) - np.array([9, 0, 0, 0, 0, 0, 0, 0]),
            W_dec=r.normal(size=(m, d)) * 0.5,
            b_dec=0.1 * r.normal(size=d),
        )
        for _ in range(n_sae)
    ]
    params[1]["b_enc"][2] = 9.0  # a dense latent
    stack = concat([relu_sae(apply_b_dec_to_input=True, **p) for p in params])
    x = r.normal(size=(n, d)) if shared else r.normal(size=(n_sae, n, d))
    got = activation_metrics(stack, x, batch_size=10, dense_threshold=0.5)  # 37 tokens: 4 chunks, one padded
    for i, p in enumerate(params):
        want, freq = numpy_metrics(**p, x=x if shared else x[i], dense_threshold=0.5)
        for k, v in want.items():
            np.testing.assert_allclose(got[k][i], v, rtol=2e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(got["firing_frequency"][i], freq, atol=1e-7)
    assert got["dense_fraction"][1] >= 1 / 8 and got["dead_fraction"][0] >= 1 / 8


def test_density_histogram_counts_by_hand():
    freq = np.array([[0.0, 1e-3, 0.5, 1.0], [1e-9, 1e-3, 1e-3, 0.02]])
    counts, edges = density_histogram(freq, bins=4, log10_min=-8.0)  # bins [-8,-6) [-6,-4) [-4,-2) [-2,0]
    np.testing.assert_array_equal(edges, [-8, -6, -4, -2, 0])
    np.testing.assert_array_equal(counts, [[1, 0, 1, 2], [1, 0, 2, 1]])


def test_activation_metrics_bad_shapes():
    sae = concat([identity_sae(4)])
    with pytest.raises(ValueError, match=r"expected \[n, 4\]"):
        activation_metrics(sae, np.zeros((10, 5)))
    with pytest.raises(ValueError, match="at least one token"):
        activation_metrics(sae, np.zeros((0, 4)))


# --- spliced into SmolLM2 ---------------------------------------------------------------------------

TEXTS = [
    "The quick brown fox jumps over the lazy dog because it wanted to.",
    "When Mary and John went to the store, John gave a drink to Mary",
    "1, 2, 3, 4, 5, 6, 7",
]


@pytest.fixture(scope="module")
def batch(smollm2):
    _, tok, _ = smollm2
    return tok.encode_batch(TEXTS)


def numpy_ce(model, tokens, lengths, hooks=None) -> float:
    """Mean next-token cross-entropy over real positions, from one full forward, in float64 numpy."""
    logits, _ = forward(model, jnp.asarray(tokens), hooks=hooks)
    z = np.asarray(logits, np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(np.mean([-logp[b, t, tokens[b, t + 1]] for b in range(len(lengths)) for t in range(lengths[b] - 1)]))


def test_identity_sae_scores_one_and_zero_sae_scores_zero(smollm2, batch):
    model, _, _ = smollm2
    d = model.cfg.d_model
    stack = concat([identity_sae(d), zero_sae(d), identity_sae(d)])
    out = spliced_losses(model, stack, batch.ids, batch.lengths, layer=[6, 6, 20], point="resid_post", batch_size=2)
    np.testing.assert_allclose(out["ce_loss_score"], [1.0, 0.0, 1.0], atol=1e-4)
    np.testing.assert_allclose(out["kl_div_score"], [1.0, 0.0, 1.0], atol=1e-4)
    np.testing.assert_allclose(out["kl_sae"][[0, 2]], 0.0, atol=1e-5)
    # zero-ablating the whole residual stream of a bias-free Llama leaves uniform logits: CE = log V
    np.testing.assert_allclose(out["ce_ablated"], np.log(model.cfg.vocab_size), rtol=1e-5)
    np.testing.assert_allclose(out["ce_clean"], numpy_ce(model, batch.ids, batch.lengths), rtol=1e-4)
    assert out["tokens"][0] == sum(batch.lengths - 1)


def test_random_sae_matches_a_full_forward_splice(smollm2, batch):
    """Tail trick + vmap == splicing each SAE with a plain full-model forward, CE by numpy."""
    model, _, _ = smollm2
    d = model.cfg.d_model
    stack = topk.init(jax.random.key(1), d, 64, k=8)
    stack = concat([stack, topk.init(jax.random.key(2), d, 64, k=8)])
    stack = jax.tree.map(lambda a: a * 3.0 if a.ndim == 3 else a, stack)  # a visible, imperfect splice
    tokens, lengths = batch
    layers = [3, 10]
    out = spliced_losses(model, stack, tokens, lengths, layer=layers, point="mlp_out")
    for i, layer in enumerate(layers):
        sae = index(stack, i)
        spec = edit("mlp_out", lambda x, at, _, s, layer=layer: jnp.where(at == layer, s(x), x), shared=sae)
        np.testing.assert_allclose(out["ce_sae"][i], numpy_ce(model, tokens, lengths, spec), rtol=2e-4)
    assert np.all(out["ce_sae"] > out["ce_clean"])


def test_per_head_z_splice(smollm2, batch):
    model, _, _ = smollm2
    dh = model.cfg.d_head
    stack = concat([identity_sae(dh), zero_sae(dh)])
    out = spliced_losses(model, stack, batch.ids, batch.lengths, layer=4, point="z", head=[2, 5])
    # identity splice: CE unchanged up to float32 noise; zero splice: CE of the ablated head. The scores
    # divide by ce_ablated - ce_clean, which is only ~3e-3 nats for one head, so compare CEs, not scores.
    np.testing.assert_allclose(out["ce_sae"][0], out["ce_clean"][0], atol=1e-5)
    np.testing.assert_allclose(out["ce_sae"][1], out["ce_ablated"][1], atol=1e-5)
    gap = np.abs(out["ce_ablated"] - out["ce_clean"])
    np.testing.assert_allclose(out["ce_loss_score"], [1.0, 0.0], atol=float(2e-5 / gap.min()))
    for i, head in enumerate([2, 5]):  # the ablation baseline = jsae.models' own zero-ablation of that head
        want = numpy_ce(model, batch.ids, batch.lengths, zero_ablate(model, [(4, head)], point="z"))
        np.testing.assert_allclose(out["ce_ablated"][i], want, rtol=2e-4)


def test_spliced_losses_bad_inputs(smollm2, batch):
    model, _, _ = smollm2
    sae = identity_sae(model.cfg.d_model)
    with pytest.raises(ValueError, match="layer 30 is out of range"):
        spliced_losses(model, sae, batch.ids, batch.lengths, layer=30)
    with pytest.raises(ValueError, match="cannot splice an SAE at 'pattern'"):
        spliced_losses(model, sae, batch.ids, batch.lengths, layer=1, point="pattern")
    with pytest.raises(ValueError, match="d_in=576 but 'z' of one head has width 64"):
        spliced_losses(model, sae, batch.ids, batch.lengths, layer=1, point="z", head=0)
    with pytest.raises(ValueError, match="2 entries for 1 SAEs"):
        spliced_losses(model, sae, batch.ids, batch.lengths, layer=[1, 2])


def test_cli_eval_on_saelens_folders(smollm2, tmp_path, capsys):
    """``jsae eval`` end to end: an identity and a zero SAE saved in the SAELens format."""
    import json

    from jsae.cli import main
    from jsae.io import hook_name, save_saelens_stack

    d = smollm2[0].cfg.d_model
    save_saelens_stack(concat([identity_sae(d), zero_sae(d)]), tmp_path / "saes", hook_names=hook_name(8, "resid_post"))
    assert (
        main(
            [
                "eval",
                "--sae",
                str(tmp_path / "saes"),
                "--out",
                str(tmp_path / "runs"),
                "--context",
                "24",
                "--max-sequences",
                "3",
                "--max-activating",
                "0",
            ]
        )
        == 0
    )
    run_dir = next((tmp_path / "runs").iterdir())
    per_sae = json.loads((run_dir / "results.json").read_text())["per_sae"]
    np.testing.assert_allclose(per_sae["ce_loss_score"], [1.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(per_sae["explained_variance"][0], 1.0, atol=1e-5)
    np.testing.assert_allclose(per_sae["l2_ratio"], [1.0, 0.0], atol=1e-5)  # the zero SAE reconstructs 0
    assert (run_dir / "feature_density.png").is_file() and "latent 0:" in capsys.readouterr().out
    assert main(["eval", "--sae", str(tmp_path / "nothing"), "--out", str(tmp_path / "runs")]) == 2
