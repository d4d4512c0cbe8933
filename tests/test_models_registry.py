"""load(): names, local directories, the on-disk GGUF cache, tokenizers from directories."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from jsae.models import Tokenizer, available, forward, load

torch = pytest.importorskip("torch")


def test_gpt2_name_resolves_to_local_directory(tiny_gpt2_dir, tmp_path, monkeypatch):
    src, hf = tiny_gpt2_dir
    monkeypatch.setenv("JSAE_CACHE", str(tmp_path))
    shutil.copytree(src, tmp_path / "hub" / "gpt2")
    model, tok, meta = load("gpt2")
    assert meta["name"] == "gpt2" and model.cfg.arch == "gpt2" and model.cfg.norm_eps == 1e-5
    tokens = np.arange(10, dtype=np.int32)[None]
    with torch.no_grad():
        ref = hf(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(forward(model, tokens)[0]), ref, atol=1e-4)
    assert set(available()) >= {"smollm2-135m", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}


def test_gguf_cache_is_keyed_by_file_hash(tmp_path, monkeypatch, smollm2):
    monkeypatch.setenv("JSAE_CACHE", str(tmp_path))
    model, tok, meta = load("smollm2-135m")
    assert meta["cache"].startswith(str(tmp_path)) and meta["sha256"][:20] in meta["cache"]
    assert (tmp_path / meta["cache"].split("/")[-1] / "params.safetensors").is_file()
    ref_model, ref_tok, _ = smollm2  # loaded through the default cache: same weights either way
    np.testing.assert_array_equal(np.asarray(model.blocks.W_Q), np.asarray(ref_model.blocks.W_Q))
    assert tok.encode("Hello world 123") == ref_tok.encode("Hello world 123")
    # a changed loader misses the cache: a new entry, converted again, never the stale one
    from jsae.models import _registry as registry

    monkeypatch.setattr(registry, "loader_version", lambda: "0123456789ab")
    _, _, meta2 = load("smollm2-135m")
    assert meta2["cache"] != meta["cache"] and meta2["cache"].endswith("-0123456789ab")
    assert (tmp_path / meta2["cache"].split("/")[-1] / "params.safetensors").is_file()


def test_loader_version_follows_the_loader_source(tmp_path):
    from jsae.models._registry import loader_version

    f = tmp_path / "loader.py"
    f.write_text("x = 1\n")
    before = loader_version((f,))
    f.write_text("x = 2\n")
    assert loader_version((f,)) != before and len(before) == 12
    assert loader_version() == loader_version()


def test_tokenizer_from_directory_matches_transformers(hf_smollm2, tmp_path):
    _, hft = hf_smollm2
    hft.save_pretrained(tmp_path)
    tok = Tokenizer.from_dir(tmp_path)
    for text in ["Hello, world!", "x = 42  # answer\n", "ümlaut 🙂"]:
        assert tok.encode(text) == hft.encode(text, add_special_tokens=False)
    tokens, lengths = tok.encode_batch(["a b c", "a"], multiple_of=4)
    assert tokens.shape == (2, 4) and list(lengths) == [3, 1]
