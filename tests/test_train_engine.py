"""The one engine and its sources: a source that cannot resume is refused at start-up; the pure ``fit``
takes the steps ``train`` takes; the stream refuses unusable text before its progress bar and never reads
more text than asked for to fill its buffer. (A custom optax chain and loss term on a model stream:
``tests/test_activations_stream.py``.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.activations import parse_inputs
from jsae.models import load_hf_dir
from jsae.pipeline import ArrayContexts, plan, train_on_model
from jsae.sae import relu, stack
from jsae.sae.registry import init_stack
from jsae.train import TrainConfig, fit, train


def test_a_source_that_cannot_resume_is_refused_before_training(tmp_path):
    sae = stack(relu.init, jax.random.split(jax.random.key(0), 2), 4, 8)
    batches = iter([np.zeros((2, 8, 4), np.float32)] * 3)
    with pytest.raises(ValueError, match=r"one-shot iterator .* cannot be checkpointed.*lambda: iter\(batches\)"):
        train(sae, batches, TrainConfig(steps=3, batch_size=8), checkpoint_dir=str(tmp_path / "ckpt"), progress=False)
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())


def test_fit_in_one_jitted_program_equals_train():
    """20 steps over 2 epochs of 160 rows, learning-rate and sparsity warm-ups: ``train`` runs 4 chunks of
    5 steps from the host, ``fit`` one program of 20."""
    data = np.random.default_rng(0).normal(size=(3, 160, 6)).astype(np.float32)
    sae = stack(relu.init, jax.random.split(jax.random.key(1), 3), 6, 12)
    cfg = TrainConfig(steps=20, batch_size=32, lr=[1e-3, 3e-3, 1e-2], sparsity_coef=0.1, chunk_steps=5,
                      lr_warmup_steps=4, sparsity_warmup_steps=6)  # fmt: skip
    state, metrics = jax.jit(fit, static_argnames="cfg")(sae, jnp.asarray(data), cfg)
    ref = train(sae, data, cfg, progress=False)
    assert metrics["loss"].shape == (20, 3)
    np.testing.assert_allclose(np.asarray(metrics["loss"][-5:].mean(0)), ref.history["loss"][-1], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(state.sae), jax.tree.leaves(ref.sae), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_unusable_text_is_refused_before_the_progress_bar(tiny_llama_tok, word_text, tmp_path, capsys):
    from jsae.data import ContextStream, DataError, open_text

    model, tok, _ = load_hf_dir(tiny_llama_tok[0])
    inputs = parse_inputs(model.cfg, "z")
    sae = init_stack("topk", jax.random.key(3), len(inputs), model.cfg.d_head, 16, k=2)
    (tmp_path / "blank.txt").write_text("  \n\t \n   ")
    short = word_text(tmp_path / "short.txt", 300)  # one batch of 8 x 16 tokens, not the 3 the buffer needs
    cfg = TrainConfig(steps=1, batch_size=64)
    for text, says in ((tmp_path / "blank.txt", "needed for one batch"), (short, "ran out after")):
        contexts = ContextStream(open_text(text), tok, context_size=16, batch_contexts=8)
        capsys.readouterr()
        with pytest.raises((DataError, ValueError), match=says):
            train_on_model(model, contexts, inputs, sae, cfg, tokens=2048, buffer_tokens=256, progress=True)
        err = capsys.readouterr().err
        assert "SAEs" not in err and "tok" not in err, err  # no bar was drawn


def test_the_buffer_shrinks_to_the_tokens_asked_for():
    """--tokens 8k with a 16k buffer: 2 batches of 4096 tokens, one fills the buffer (4096), one trains."""
    ctx = ArrayContexts(np.zeros((64, 129), np.int32), batch_contexts=32, bos_positions=1)
    p = plan(8000, ctx, 1024, 16384)
    assert (p.tokens, p.buffer_tokens, p.exchanges, p.fill_exchanges) == (8192, 4096, 2, 1)
    assert p.steps == 8192 // 1024
    one = plan(100, ctx, 1024, 16384)  # one batch: nothing to shuffle with
    assert (one.tokens, one.buffer_tokens, one.steps) == (4096, 0, 4)
    assert plan(10**6, ctx, 1024, 16384).buffer_tokens == 16384  # enough text: the buffer asked for
