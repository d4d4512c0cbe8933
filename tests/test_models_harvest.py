"""harvest(): per-head activations of all layers/heads in the trainer's [L*H, n, d] shape, vs HF."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_models_hooks import hf_run

from jsae.models import HookError, harvest, load


@pytest.fixture(scope="module")
def seqs():
    rng = np.random.default_rng(5)
    return [list(rng.integers(0, 101, size=n)) for n in (5, 12, 3, 9, 16, 7, 1)]


@pytest.mark.parametrize("positions", ["all", "last", "mean"])
def test_harvest_z_matches_hf(tiny_llama_dir, seqs, positions):
    path, hf = tiny_llama_dir
    model, _, _ = load(path)
    L, Hn, dh = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
    out = harvest(model, seqs, point="z", positions=positions, batch_size=3, pad_multiple=4, progress=False)
    refs = []
    for s in seqs:
        z = np.stack(hf_run(hf, np.array([s]))["z"])[:, 0]  # [L, T, H, dh]
        z = {"all": z, "last": z[:, -1:], "mean": z.mean(1, keepdims=True)}[positions]
        refs.append(z.transpose(0, 2, 1, 3).reshape(L * Hn, -1, dh))
    ref = np.concatenate(refs, axis=1)
    n = sum(map(len, seqs)) if positions == "all" else len(seqs)
    assert out.shape == (L * Hn, n, dh) == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_harvest_result_memory_bound_and_texts(smollm2):
    """Texts through the tokenizer; a tiny byte budget forces one row per batch; same numbers as big batches."""
    model, tok, _ = smollm2
    texts = [
        "When Mary and John went to the store, John gave a drink to",
        "The war lasted from 1732 to 17",
        "def f(x):\n    return",
    ]
    a = harvest(model, texts, tokenizer=tok, point="result", positions="last", progress=False)
    b = harvest(model, texts, tokenizer=tok, point="result", positions="last", max_batch_bytes=1, progress=False)
    assert a.shape == (30 * 9, 3, 576)
    np.testing.assert_allclose(a, b, atol=1e-4)
    r = harvest(model, texts[:1], tokenizer=tok, point="resid_post", positions="mean", progress=False)
    assert r.shape == (30, 1, 576)


def test_harvest_chosen_layers_and_last_logits_match_hf(tiny_llama_dir, seqs):
    """``layers=`` keeps those layers' rows; ``last_logits=True`` adds the logits at each sequence's last token
    from the same forward; both against HF per sequence. (A truncated run, ``layers`` short of the last
    layer: tests/test_absorption_first_letter.py's residual_at_positions against the full forward.)"""
    path, hf = tiny_llama_dir
    model, _, _ = load(path)
    Hn, dh = model.cfg.n_heads, model.cfg.d_head
    acts, logits = harvest(model, seqs, point="z", positions="mean", layers=[1], last_logits=True, progress=False)
    runs = [hf_run(hf, np.array([s])) for s in seqs]
    ref_z = np.stack([np.stack(r["z"])[1, 0].mean(0) for r in runs], axis=1)  # [H, n, dh]
    np.testing.assert_allclose(acts, ref_z.reshape(Hn, len(seqs), dh), atol=1e-5)
    ref_logits = np.stack([np.asarray(r["logits"])[0, -1] for r in runs])
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4 * np.abs(ref_logits).max())
    with pytest.raises(HookError, match="layers must be"):
        harvest(model, seqs, point="z", layers=[5], progress=False)
    with pytest.raises(HookError, match="last_logits"):
        harvest(model, seqs, point="z", positions="all", last_logits=True, progress=False)
