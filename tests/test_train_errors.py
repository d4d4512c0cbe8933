"""Bad input gets one clear error; a diverging run stops naming the SAE and step; nothing is lost."""

import jax
import numpy as np
import pytest

from jsae.sae import index, relu, stack
from jsae.train import CheckpointError, TrainConfig, TrainingDiverged, train
from jsae.train._checkpoint import Checkpointer

D, M = 4, 8


def small_stack(n=3):
    return stack(relu.init, jax.random.split(jax.random.key(0), n), D, M)


def data(n=3, t=64, seed=0):
    return np.random.default_rng(seed).normal(size=(n, t, D)).astype(np.float32)


CFG = TrainConfig(steps=20, batch_size=8, lr=1e-3, sparsity_coef=0.1, chunk_steps=10)


def test_wrong_d_in():
    with pytest.raises(ValueError, match=r"d=5 features but the SAEs take d_in=4"):
        train(small_stack(), np.zeros((3, 64, 5), np.float32), CFG, progress=False)


def test_wrong_number_of_per_sae_data():
    with pytest.raises(ValueError, match=r"2 entries on its leading axis but the stack holds 3 SAEs"):
        train(small_stack(), data(n=2), CFG, progress=False)


def test_hyperparameter_array_of_wrong_length():
    cfg = TrainConfig(steps=20, batch_size=8, lr=[1e-3, 1e-3], chunk_steps=10)
    with pytest.raises(ValueError, match=r"'lr' has 2 values but the stack holds 3 SAEs"):
        train(small_stack(), data(), cfg, progress=False)


def test_single_sae_without_stack_axis():
    with pytest.raises(ValueError, match=r"build one with jsae.sae.stack"):
        train(index(small_stack(), 0), data(), CFG, progress=False)


def test_nan_in_data_names_the_sae():
    x = data()
    x[2, 17, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(first at SAE 2, token 17\)"):
        train(small_stack(), x, CFG, progress=False)


def test_batch_larger_than_data_and_bad_config():
    with pytest.raises(ValueError, match=r"fewer than batch_size=128"):
        train(small_stack(), data(), TrainConfig(steps=5, batch_size=128), progress=False)
    with pytest.raises(ValueError, match=r"multiple of chunk_steps"):
        TrainConfig(steps=5, chunk_steps=10, checkpoint_every=15)


def test_diverging_sae_stops_with_its_index_and_step_and_keeps_checkpoint(tmp_path):
    rng = np.random.default_rng(1)

    def batches():
        for step in range(40):
            b = rng.normal(size=(3, 8, D)).astype(np.float32)
            if step == 25:
                b[1] *= 1e20  # finite data whose squared error overflows float32 for SAE 1
            yield b

    cfg = TrainConfig(steps=40, batch_size=8, lr=1e-3, sparsity_coef=0.1, chunk_steps=10, checkpoint_every=10)
    with pytest.raises(TrainingDiverged, match=r"SAE 1 produced a non-finite loss .* at step 25"):
        train(small_stack(), batches, cfg, checkpoint_dir=str(tmp_path), progress=False)
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest_step() == 20
    step, state = ckpt.restore(_template(cfg), cfg, "ReLUSAE", 3)
    assert step == 20 and all(np.isfinite(a).all() for a in jax.tree.leaves(state))


def _template(cfg):
    from jsae.train import init_state

    return init_state(small_stack(), cfg, np.full(3, 1e-3, np.float32), np.ones(3, np.float32))


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("my thesis")
    with pytest.raises(CheckpointError, match=r"holds no jsae checkpoint"):
        train(small_stack(), data(), CFG, checkpoint_dir=str(tmp_path), progress=False)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    train(small_stack(), data(), CFG, checkpoint_dir=str(tmp_path), progress=False)
    other = TrainConfig(steps=20, batch_size=8, lr=3e-3, sparsity_coef=0.1, chunk_steps=10)
    with pytest.raises(CheckpointError, match=r"different TrainConfig.*'lr': \(0.001, 0.003\)"):
        train(small_stack(), data(), other, checkpoint_dir=str(tmp_path), progress=False)
    with pytest.raises(CheckpointError, match=r"belongs to a different run: its n_saes is 3"):
        train(small_stack(2), data(2), CFG, checkpoint_dir=str(tmp_path), progress=False)


def test_corrupt_checkpoint_is_reported(tmp_path):
    train(small_stack(), data(), CFG, checkpoint_dir=str(tmp_path), progress=False)
    for f in (tmp_path / "20" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "ocdbt" in str(f):
            f.write_bytes(b"\0garbage" * 8)
    with pytest.raises(CheckpointError, match=r"corrupt"):
        train(small_stack(), data(), CFG, checkpoint_dir=str(tmp_path), progress=False)


def test_finished_run_resumes_to_the_same_result(tmp_path):
    first = train(small_stack(), data(), CFG, checkpoint_dir=str(tmp_path), progress=False)
    again = train(small_stack(), data(), CFG, checkpoint_dir=str(tmp_path), progress=False)
    assert again.resumed_from == 20
    for a, b in zip(jax.tree.leaves(first.sae), jax.tree.leaves(again.sae)):
        np.testing.assert_array_equal(a, b)
