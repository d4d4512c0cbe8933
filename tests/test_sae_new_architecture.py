"""The recipe of docs/ARCHITECTURE.md ("Adding an architecture"), followed in this file alone.

``ScaledReLUSAE`` is an architecture jsae does not have: a ReLU SAE whose latents carry a learnt gain,
``f = exp(log_gain) * ReLU((x - b_dec) W_enc + b_enc)``, trained with a decoder-norm-weighted L1 term
plus a penalty ``gain_coef * mean(log_gain^2)`` that keeps the gains near 1. Its record declares a
sparsity coefficient with no default (a run must give it) and a hyperparameter of its own
(``gain_coef``, default 0.1), and a SAELens architecture of its own ("scaled_relu", with the extra
tensor ``log_gain``). Nothing outside this file changes: once registered, jsae's trainer, SAELens
save/load and run directories handle it.
"""

from __future__ import annotations

from typing import ClassVar, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from jsae.io import load_run, load_saelens_stack, save_run, save_saelens_stack
from jsae.sae import (
    BASE_TENSORS,
    SAE,
    Architecture,
    BDecInit,
    Hyper,
    SAELensForm,
    base_tensors,
    decoder_norms,
    init_tied_weights,
    initial_b_dec,
    reconstruction_metrics,
    registry,
    saelens_b_dec_to_input,
    squared_error,
)
from jsae.train import TrainConfig, train

# --- the architecture: what a new file jsae/sae/scaled_relu.py would hold ---------------------------


@final
class ScaledReLUSAE(SAE):
    W_enc: Float[Array, "d_in d_sae"]
    b_enc: Float[Array, " d_sae"]
    W_dec: Float[Array, "d_sae d_in"]
    b_dec: Float[Array, " d_in"]
    apply_b_dec_to_input: bool = eqx.field(static=True)
    log_gain: Float[Array, " d_sae"]
    uses_dead_latents: ClassVar[bool] = False
    buffers: ClassVar[tuple[str, ...]] = ()

    def encode(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        return jnp.exp(self.log_gain) * jax.nn.relu(self.pre_acts(x))

    def loss(self, x: Float[Array, "B d_in"], hp: Hyper, dead: Bool[Array, " d_sae"] | None):
        f = self.encode(x)
        x_hat = self.decode(f)
        recon = squared_error(x, x_hat)
        l1 = jnp.mean(f @ decoder_norms(self.W_dec))
        gain = jnp.mean(self.log_gain**2)
        total = recon + hp["sparsity_coef"] * l1 + hp["gain_coef"] * gain
        metrics = {"loss": total, "recon": recon, "l1": l1, "gain": gain, **reconstruction_metrics(x, x_hat, f)}
        return total, (metrics, f)

    def update_buffers(self, f: Float[Array, "B d_sae"]) -> ScaledReLUSAE:
        return self

    def constrain(self) -> ScaledReLUSAE:
        return self


def init(
    key: PRNGKeyArray,
    d_in: int,
    d_sae: int,
    *,
    data: Float[Array, "n d_in"] | None = None,
    b_dec_init: BDecInit = "zeros",
    decoder_norm: float = 0.1,
    apply_b_dec_to_input: bool = True,
) -> ScaledReLUSAE:
    W_enc, W_dec = init_tied_weights(key, d_in, d_sae, decoder_norm)
    return ScaledReLUSAE(
        W_enc=W_enc,
        b_enc=jnp.zeros((d_sae,)),
        W_dec=W_dec,
        b_dec=initial_b_dec(data, d_in, b_dec_init),
        apply_b_dec_to_input=apply_b_dec_to_input,
        log_gain=jnp.zeros((d_sae,)),
    )


def to_saelens(sae: ScaledReLUSAE) -> SAELensForm:
    return SAELensForm("scaled_relu", {**base_tensors(sae), "log_gain": sae.log_gain}, {})


def from_saelens(architecture: str, t: dict[str, Array], cfg: dict) -> ScaledReLUSAE:
    return ScaledReLUSAE(
        W_enc=t["W_enc"],
        b_enc=t["b_enc"],
        W_dec=t["W_dec"],
        b_dec=t["b_dec"],
        apply_b_dec_to_input=saelens_b_dec_to_input(cfg),
        log_gain=t["log_gain"],
    )


ARCHITECTURE = Architecture(
    name="scaled_relu",
    cls=ScaledReLUSAE,
    init=init,
    uses_k=False,
    hyperparams={"sparsity_coef": None, "gain_coef": 0.1},
    sparsity="L1 coefficient (activations weighted by decoder row norms)",
    saelens_reads={"scaled_relu": {**BASE_TENSORS, "log_gain": ("d_sae",)}},
    to_saelens=to_saelens,
    from_saelens=from_saelens,
)

registry.register(ARCHITECTURE)  # a jsae/sae file is found by the registry; code elsewhere registers


# --- its tests -------------------------------------------------------------------------------------

D_IN, D_SAE = 8, 16


def _data(n: int = 4096, seed: int = 0) -> np.ndarray:
    """Sparse non-negative combinations of 12 random unit directions (an SAE can reconstruct them)."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(12, D_IN))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    coef = rng.exponential(size=(n, 12)) * (rng.random((n, 12)) < 0.15)
    return (coef @ dirs).astype(np.float32)


def test_loss_matches_a_numpy_reference():
    sae = registry.init_stack("scaled_relu", jax.random.key(1), 1, D_IN, D_SAE)
    sae = jax.tree.map(lambda a: a[0], sae)
    sae = eqx.tree_at(lambda s: (s.log_gain, s.b_enc), sae, (jnp.linspace(-0.5, 0.5, D_SAE), jnp.full(D_SAE, 0.01)))
    x = _data(32)
    W_enc, b_enc, W_dec, b_dec, g = (
        np.asarray(a, np.float64) for a in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.log_gain)
    )
    f = np.exp(g) * np.maximum((x - b_dec) @ W_enc + b_enc, 0.0)
    x_hat = f @ W_dec + b_dec
    want = (
        np.mean(np.sum((x - x_hat) ** 2, axis=1))
        + 0.3 * np.mean(f @ np.linalg.norm(W_dec, axis=1))
        + 0.1 * np.mean(g**2)
    )
    got, _ = sae.loss(jnp.asarray(x), {"sparsity_coef": jnp.float32(0.3), "gain_coef": jnp.float32(0.1)}, None)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_a_hyperparameter_without_default_must_be_given():
    sae = registry.init_stack("scaled_relu", jax.random.key(0), 2, D_IN, D_SAE)
    with pytest.raises(ValueError, match="'scaled_relu' architecture needs .*'sparsity_coef'.*no default"):
        train(sae, _data(), TrainConfig(steps=10, batch_size=64, chunk_steps=10))


def test_trains_saves_to_saelens_and_loads_back(tmp_path):
    data = _data()
    sae = registry.init_stack("scaled_relu", jax.random.key(0), 2, D_IN, D_SAE)
    cfg = TrainConfig(
        steps=300, batch_size=128, chunk_steps=100, lr=3e-3, sparsity_coef=[1e-3, 3e-2], normalise_activations=True
    )
    assert cfg.hyperparams(registry.of(sae))["gain_coef"] == 0.1  # the record's default fills the run
    res = train(sae, data, cfg)
    assert isinstance(res.sae, ScaledReLUSAE)
    first, last = res.history["recon"][0], res.history["recon"][-1]
    assert np.all(last < 0.5 * first), (first, last)  # it learns
    assert res.metrics["l0"][1] < res.metrics["l0"][0]  # the larger L1 coefficient gives the sparser code
    assert float(jnp.max(jnp.abs(res.sae.log_gain))) > 0  # the gains were trained

    dirs = save_saelens_stack(res.sae, tmp_path / "saelens", hook_names="blocks.0.hook_resid_post")
    cfg_json = (dirs[0] / "cfg.json").read_text()
    assert '"architecture": "scaled_relu"' in cfg_json
    back, cfgs = load_saelens_stack(tmp_path / "saelens")
    assert isinstance(back, ScaledReLUSAE) and [c["architecture"] for c in cfgs] == ["scaled_relu"] * 2
    for a, b in zip(jax.tree.leaves(res.sae), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = jnp.asarray(data[:64])
    np.testing.assert_array_equal(
        np.asarray(jax.vmap(lambda s: s(x))(back)), np.asarray(jax.vmap(lambda s: s(x))(res.sae))
    )

    run = save_run(tmp_path / "run", res.sae, inputs={"layer": 0, "point": "resid_post", "head": None}, config=cfg)
    again, _, meta = load_run(run)
    assert meta["architecture"] == "scaled_relu" and isinstance(again, ScaledReLUSAE)
    np.testing.assert_array_equal(np.asarray(again.log_gain), np.asarray(res.sae.log_gain))
