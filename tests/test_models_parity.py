"""Logit parity of jsae's loaders against HF transformers (independent oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import IOI_CLEAN

torch = pytest.importorskip("torch")

from jsae.models import forward, load


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_tiny_model_logits_match_transformers(fixture, request, rng):
    path, hf = request.getfixturevalue(fixture)
    model, tok, meta = load(path)
    assert tok is None and meta["format"] == "safetensors"
    tokens = rng.integers(0, model.cfg.vocab_size, size=(3, 17)).astype(np.int32)
    logits, _ = forward(model, tokens)
    np.testing.assert_allclose(np.asarray(logits), _hf_logits(hf, tokens), atol=1e-4, rtol=1e-4)


def test_tiny_llama_tied_mha(tmp_path, rng):
    """Tied embeddings, no GQA, biased attention projections."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(
        vocab_size=53,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=3,
        num_key_value_heads=3,
        max_position_embeddings=32,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_bias=True,
    )
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for _n, p in hf.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    model, _, _ = load(tmp_path)
    assert model.cfg.tied_embeddings and model.W_U is None
    tokens = rng.integers(0, 53, size=(2, 11)).astype(np.int32)
    np.testing.assert_allclose(np.asarray(forward(model, tokens)[0]), _hf_logits(hf, tokens), atol=1e-4, rtol=1e-4)


PROMPTS = [
    IOI_CLEAN,
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "The 3 largest cities in France are Paris, Marseille and",
]


def test_smollm2_logits_match_transformers_gguf(smollm2, hf_smollm2):
    model, tok, meta = smollm2
    hf, _ = hf_smollm2
    assert meta["format"] == "gguf" and model.cfg.n_layers == 30 and model.cfg.n_kv_heads == 3
    tokens, lengths = tok.encode_batch(PROMPTS)  # right-padded batch: padding must not leak
    logits = np.asarray(forward(model, tokens)[0])
    for i, text in enumerate(PROMPTS):
        ids = np.array([tok.encode(text)])
        ref = _hf_logits(hf, ids)[0]
        np.testing.assert_allclose(logits[i, : lengths[i]], ref, atol=1e-3, rtol=1e-4)


def test_smollm2_ioi_greedy_is_mary(smollm2):
    model, tok, _ = smollm2
    tokens, _ = tok.encode_batch([IOI_CLEAN])
    logits, _ = forward(model, tokens)
    assert tok.decode([int(np.argmax(logits[0, -1]))]) == " Mary"


TOKENIZER_SAMPLE = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "In 2024, 1,234,567 people paid $3.50 (or 12.5%) each; call 555-0199.",
    "def add(a, b):\n    return a + b  # sum\n\tif x != y: print(f'{x=}')",
    "   leading spaces, trailing spaces   \n\n\r\n  mixed\twhitespace \t ",
    "naïve café, Zürich, 東京, Москва, emoji 🙂🚀, math ∑∫√, ‘quotes’ — dash",
    "<|im_start|>user\nHi there<|im_end|>",
    "don't they'll we've I'M SHOUTING aNd MiXeD",
]


def test_tokenizer_matches_transformers_gguf_tokenizer(smollm2, hf_smollm2):
    _, tok, _ = smollm2
    _, hft = hf_smollm2
    for text in TOKENIZER_SAMPLE:
        ids = tok.encode(text)
        assert ids == hft.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == text
    assert tok.is_single_token(" Mary") and not tok.is_single_token(" Maryland's")
    assert tok.token_id(" Mary") == hft.convert_tokens_to_ids("ĠMary")
    with pytest.raises(ValueError):
        tok.token_id(" Mary and")


def test_bf16_checkpoint(tiny_llama_dir, tmp_path, rng):
    """bf16 safetensors (common on the hub) are read without torch and upcast to float32."""
    import copy

    _, hf = tiny_llama_dir
    hf16 = copy.deepcopy(hf).to(torch.bfloat16)
    hf16.save_pretrained(tmp_path)
    model, _, _ = load(tmp_path)
    tokens = rng.integers(0, 101, size=(2, 8)).astype(np.int32)
    ref = _hf_logits(hf16.float(), tokens)
    np.testing.assert_allclose(np.asarray(forward(model, tokens)[0]), ref, atol=1e-4, rtol=1e-4)


def test_mistral_sliding_window_past_the_window(tmp_path, rng):
    """A prompt longer than Mistral's sliding window: jsae must mask keys as HF does (query - key < window)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    cfg = transformers.MistralConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        sliding_window=5,
        attn_implementation="eager",
    )
    hf = transformers.MistralForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    model, _, _ = load(tmp_path)
    assert model.cfg.attn_window == (5, 5)
    tokens = rng.integers(0, 61, size=(2, 21)).astype(np.int32)
    np.testing.assert_allclose(np.asarray(forward(model, tokens)[0]), _hf_logits(hf, tokens), atol=1e-4, rtol=1e-4)
