"""HF checkpoints from config.json alone, from a fake HF cache, and every bad input, each a clear error."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from jsae.models import ModelFileError, UnknownModelError, UnsupportedArchitectureError, config_from_hf, forward, load

# Published config.json files (transformers 4 layout: rope_theta, rope_scaling, rotary_pct, ...), abridged.
LLAMA31_8B = dict(
    model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
    rope_theta=500000.0, tie_word_embeddings=False, hidden_act="silu",
    rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192,
                      rope_type="llama3"),
)  # fmt: skip
GEMMA2_2B = dict(
    model_type="gemma2", vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=4096,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh",
    hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
)  # fmt: skip
GEMMA3_4B_TEXT = dict(
    model_type="gemma3_text", vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
    sliding_window_pattern=6, rope_local_base_freq=10000.0, rope_theta=1000000.0,
    rope_scaling=dict(factor=8.0, rope_type="linear"), max_position_embeddings=131072, rms_norm_eps=1e-6,
)  # fmt: skip
QWEN25_7B = dict(
    model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-6,
    rope_theta=1000000.0, sliding_window=131072, use_sliding_window=False, max_window_layers=28,
    tie_word_embeddings=False, hidden_act="silu",
)  # fmt: skip
PYTHIA_160M = dict(
    model_type="gpt_neox", vocab_size=50304, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True, hidden_act="gelu",
    layer_norm_eps=1e-5, max_position_embeddings=2048, tie_word_embeddings=False,
)  # fmt: skip
PHI3_MINI_4K = dict(
    model_type="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, sliding_window=2047, rope_scaling=None, rope_theta=10000.0,
    max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=32000, hidden_act="silu",
)  # fmt: skip
MISTRAL_7B = dict(
    model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, sliding_window=4096, rope_theta=10000.0,
    max_position_embeddings=32768, rms_norm_eps=1e-5, hidden_act="silu",
)  # fmt: skip
GEMMA3_4B = dict(  # the multimodal checkpoint's own config: most text fields left to gemma3_text's defaults
    model_type="gemma3", mm_tokens_per_image=256, image_token_index=262144,
    text_config=dict(hidden_size=2560, intermediate_size=10240, model_type="gemma3_text", num_hidden_layers=34,
                     rope_scaling=dict(factor=8.0, rope_type="linear"), sliding_window=1024),
    vision_config=dict(hidden_size=1152, image_size=896, intermediate_size=4304, model_type="siglip_vision_model",
                       num_attention_heads=16, num_hidden_layers=27, patch_size=14, vision_use_head=False),
)  # fmt: skip
QWEN2_WINDOWED = dict(QWEN25_7B, use_sliding_window=True, sliding_window=4096, max_window_layers=20)


def test_published_configs_read_as_transformers_reads_them():
    """Oracle: transformers' own parse of each published config (normalised to its current layout)."""
    transformers = pytest.importorskip("transformers")
    for c in (LLAMA31_8B, GEMMA2_2B, GEMMA3_4B_TEXT, QWEN25_7B, PYTHIA_160M, PHI3_MINI_4K, MISTRAL_7B, QWEN2_WINDOWED):
        kw = {k: v for k, v in c.items() if k != "model_type"}
        normalised = transformers.AutoConfig.for_model(c["model_type"], **kw).to_dict()
        assert config_from_hf(c) == config_from_hf(normalised), c["model_type"]
    kw = {k: v for k, v in GEMMA3_4B.items() if k != "model_type"}
    text = transformers.AutoConfig.for_model("gemma3", **kw).text_config.to_dict()
    assert config_from_hf(GEMMA3_4B) == config_from_hf(text) == config_from_hf(GEMMA3_4B_TEXT)


@pytest.mark.parametrize(
    "model_type",
    ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gpt_neox", "phi3", "olmo2"],
)
def test_fields_left_out_take_transformers_defaults(model_type):
    """A config.json with only the shape: every other field must default exactly as transformers' does."""
    transformers = pytest.importorskip("transformers")
    if model_type == "gpt2":
        shape = dict(n_embd=64, n_layer=2, n_head=4, n_positions=32, vocab_size=50)
    else:
        shape = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, vocab_size=50)
        shape |= dict(num_key_value_heads=2, max_position_embeddings=32)
    full = transformers.AutoConfig.for_model(model_type, **shape).to_dict()
    assert config_from_hf({"model_type": model_type, **shape}) == config_from_hf(full)


def test_published_configs_fields():
    llama = config_from_hf(LLAMA31_8B, name="llama-3.1-8b")
    assert (llama.n_layers * llama.n_heads, llama.n_kv_heads, llama.rope_type) == (1024, 8, "llama3")
    assert llama.rope_scaling == (8.0, 1.0, 4.0, 8192.0) and llama.rope_theta == 500000.0
    gemma2 = config_from_hf(GEMMA2_2B)
    assert gemma2.attn_window[:4] == (4096, 0, 4096, 0) and gemma2.query_scale == 256**-0.5
    assert (gemma2.attn_softcap, gemma2.final_softcap, gemma2.post_norms) == (50.0, 30.0, True)
    assert gemma2.mlp_act == "gelu_tanh" and gemma2.embed_scale == pytest.approx(2304**0.5)
    gemma3 = config_from_hf(GEMMA3_4B_TEXT)
    assert gemma3.attn_window[:6] == (1024,) * 5 + (0,) and gemma3.qk_norm == "head"
    assert (gemma3.rope_theta, gemma3.rope_type, gemma3.rope_scaling, gemma3.rope_local_theta) == (
        1e6,
        "linear",
        (8.0,),
        1e4,
    )
    assert config_from_hf(QWEN25_7B).attn_window == ()  # use_sliding_window false: every layer global
    assert config_from_hf(QWEN2_WINDOWED).attn_window == (0,) * 20 + (4096,) * 8  # from max_window_layers on
    pythia = config_from_hf(PYTHIA_160M)
    assert (pythia.arch, pythia.rotary_dim, pythia.parallel_block, pythia.mlp_act) == ("gpt2", 16, True, "gelu")
    assert config_from_hf(PHI3_MINI_4K).attn_window == (2047,) * 32


@pytest.mark.parametrize(
    "config, match",
    [
        (dict(model_type="bert"), "model_type 'bert' is not supported; jsae supports gpt2, llama"),
        (dict(LLAMA31_8B, rope_scaling=dict(rope_type="yarn", factor=4.0)), "type 'yarn'"),
        (dict(LLAMA31_8B, rope_scaling=dict(type="dynamic", factor=2.0)), "type 'dynamic'"),
        (dict(PHI3_MINI_4K, rope_scaling=dict(type="longrope", long_factor=[1], short_factor=[1])), "'longrope'"),
        (dict(LLAMA31_8B, mlp_bias=True), "mlp_bias=True"),
        (dict(LLAMA31_8B, partial_rotary_factor=0.5), "partial_rotary_factor"),
        (dict(LLAMA31_8B, hidden_act="gelu_fast"), "hidden_act='gelu_fast'"),
        (dict(GEMMA2_2B, layer_types=["chunked_attention"] * 26), "chunked_attention"),
        (dict(GEMMA2_2B, layer_types=["full_attention"] * 3), "layer_types has 3 entries"),
        (dict(GEMMA3_4B_TEXT, use_bidirectional_attention=True), "use_bidirectional_attention"),
        (dict(GEMMA3_4B, text_config=dict(GEMMA3_4B["text_config"], final_logit_softcapping=30.0)), "ambiguity"),
        (dict(model_type="gpt2", n_embd=8, n_head=2, n_layer=1, n_positions=8, vocab_size=5,
              scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    ],
)  # fmt: skip
def test_unimplemented_config_fields_are_refused(config, match):
    with pytest.raises(UnsupportedArchitectureError, match=match):
        config_from_hf(config)


def test_incomplete_config_names_the_missing_field():
    with pytest.raises(ModelFileError, match="'num_hidden_layers'"):
        config_from_hf({k: v for k, v in MISTRAL_7B.items() if k != "num_hidden_layers"})


@pytest.fixture(scope="module")
def sharded_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama saved in several shards with an index."""
    _, hf = tiny_llama_dir
    d = tmp_path_factory.mktemp("sharded")
    hf.save_pretrained(d, max_shard_size="30KB")
    assert len(list(d.glob("model-*.safetensors"))) > 2
    return d


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sharded_bad_inputs_fail_before_reading(sharded_dir, tmp_path):
    index = json.loads((sharded_dir / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    d = _copy(sharded_dir, tmp_path / "missing")
    (d / shard).unlink()
    with pytest.raises(ModelFileError, match=f"{shard}.*missing"):
        load(d)
    d = _copy(sharded_dir, tmp_path / "truncated")
    data = (d / shard).read_bytes()
    (d / shard).write_bytes(data[:-7])
    with pytest.raises(ModelFileError, match="truncated"):
        load(d)
    (d / shard).write_bytes(data + b"\0" * 7)
    with pytest.raises(ModelFileError, match="longer than its header says"):
        load(d)
    d = _copy(sharded_dir, tmp_path / "listed")
    bad = dict(index, weight_map={**index["weight_map"], "model.layers.0.extra.weight": shard})
    (d / "model.safetensors.index.json").write_text(json.dumps(bad))
    with pytest.raises(ModelFileError, match=f"'model.layers.0.extra.weight' is listed .* {shard} does not contain"):
        load(d)


def _fake_hf_cache(src, cache, repo_id: str, corrupt: str | None = None):
    """``src``'s files laid out as huggingface_hub's cache: blobs named by SHA-256, snapshot links, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in src.iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if f.name == corrupt:  # same size, one byte changed: only the checksum can tell
            data = data[:-1] + bytes([data[-1] ^ 1])
        blob.write_bytes(data)
        (snap / f.name).symlink_to(f"../../blobs/{blob.name}")
    return snap


def test_hub_id_loads_from_the_hf_cache_offline(sharded_dir, tiny_llama_dir, tmp_path, monkeypatch, rng):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)  # a test never goes online
    _fake_hf_cache(sharded_dir, tmp_path / "hub", "tiny-org/tiny-llama")
    model, _, meta = load("tiny-org/tiny-llama")
    assert meta["name"] == "tiny-org/tiny-llama" and "models--tiny-org--tiny-llama" in meta["source"]
    ref, _, _ = load(tiny_llama_dir[0])
    tokens = rng.integers(0, model.cfg.vocab_size, (1, 9)).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(forward(model, tokens)[0]), np.asarray(forward(ref, tokens)[0]))
    with pytest.raises(UnknownModelError, match="cannot get tiny-org/absent: it is not in the HF cache"):
        load("tiny-org/absent")


def test_hf_cache_checksum_mismatch(sharded_dir, tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    shard = sorted(sharded_dir.glob("model-*.safetensors"))[0].name
    _fake_hf_cache(sharded_dir, tmp_path / "hub", "tiny-org/corrupt", corrupt=shard)
    with pytest.raises(ModelFileError, match=f"{shard} fails its checksum"):
        load("tiny-org/corrupt")
