"""jsae plan: per-device memory and FLOP estimate against a hand computation, parameter counts against
torch and the published model sizes, and the refusal of a run that cannot fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jsae.cli import main
from jsae.plan import Device, GiB, device, model_params, plan_run, read_model_config, sae_params

CONFIGS = Path(__file__).parent / "data" / "configs"
TINY = dict(
    model_type="llama",
    num_hidden_layers=2,
    hidden_size=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=2,
    intermediate_size=12,
    vocab_size=10,
    tie_word_embeddings=False,
)


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return path


def test_plan_matches_a_hand_computation(tiny_config):
    cfg, notes = read_model_config(tiny_config)
    assert notes == [] and (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head) == (2, 4, 2, 2)
    assert sae_params("relu", 2, 16) == 2 * 16 + 16 * 2 + 16 + 2  # W_enc, W_dec, b_enc, b_dec
    two = Device("two", 2, GiB, {"float32": 1e12})
    p = plan_run(
        cfg,
        two,
        points="z",
        d_sae=16,
        arch="relu",
        batch=6,
        batch_contexts=3,
        context=5,
        buffer_tokens=7,
        buffer_dtype="bfloat16",
    )
    # 8 heads -> 8 SAEs of d_in = d_head = 2, 4 per device
    assert (p.n_saes, p.n_saes_per_device, p.d_in) == (8, 4, 2)
    # params: W_Q+W_O 2 layers x 2 x 8 x 4 x 2 = 256; W_K+W_V 2 x 2 x 8 x 2 x 2 = 128; MLP 2 x 3 x 8 x 12 = 576;
    # embed 80 + unembed 80 + norms 2 x 2 x 8 + final 8 = 200
    assert model_params(cfg).total == 256 + 128 + 576 + 200
    # weights per device, float32: heads (4 of 4, 2 of 2) and MLP (12) split in 2, embeddings replicated
    assert p.memory.weights == 4 * (256 // 2 + 128 // 2 + 576 // 2 + 200)
    # one forward, 3 x 5 = 15 tokens: 15 x (4 x 8 + 3 x 12 / 2 + 2 x 4 x 2 / 2) + scores 3 x 2 heads x 25 x 2
    # + captured 15 tokens x 4 SAEs x 2, float32
    assert p.memory.activations == 4 * (15 * (32 + 18 + 8) + 3 * 2 * 25 * 2 + 15 * 4 * 2)
    # buffer: 4 SAEs x 7 tokens x 2 x 2 bytes (bf16) + 2 float32 staging copies of 15 tokens x 4 x 2
    assert p.memory.buffer == 4 * 7 * 2 * 2 + 4 * 4 * 15 * 2 * 2
    assert p.memory.sae_state == 4 * 4 * 4 * 82  # param, grad, 2 Adam moments (float32) of 4 SAEs x 82
    assert p.memory.sae_step == 4 * 4 * 6 * (3 * 16 + 2 * 2)
    assert p.memory.total == 2720 + 5160 + 1072 + 5248 + 4992
    assert p.capacity == int(0.9 * GiB) and p.fits
    # each extra context adds 4 x (5 x 58 + 2 x 25 x 2 + 5 x 4 x 2) activations + 4 x 4 x 5 x 2 x 2 staging bytes
    fixed = 2720 + 5248 + 4992 + 4 * 7 * 2 * 2
    assert p.max_batch_contexts == (int(0.9 * GiB) - fixed) // (4 * (290 + 100 + 40) + 320)
    # FLOPs per token: 2 x 960 block params + 4 x 2 layers x 5 x 4 x 2 + last-position logits 2 x 8 x 10 / 5
    assert p.model_flops_per_token == 2 * 960 + 4 * 2 * 5 * 4 * 2 + 2 * 8 * 10 / 5
    assert p.sae_flops_per_token == 6 * 8 * 82
    assert p.tokens_per_s == pytest.approx(2 * 1e12 * 0.4 / (2272 + 3936))
    assert "ESTIMATE" in p.describe() and "fits" in p.describe()


def test_param_counts_match_torch_and_published_sizes(tiny_llama_dir, tiny_gpt2_dir):
    for path, hf in (tiny_llama_dir, tiny_gpt2_dir):
        cfg, _ = read_model_config(path)
        assert model_params(cfg).total == sum(p.numel() for p in hf.parameters())
    published = {"llama-3.1-8b": 8_030_261_248, "gemma-2-2b": 2_614_341_888, "qwen2.5-7b": 7_615_616_512}
    for name, count in published.items():
        cfg, _ = read_model_config(CONFIGS / f"{name}.json")
        # Qwen2.5's q/k/v biases (129,024 parameters) are not counted
        assert model_params(cfg).total == pytest.approx(count, rel=2e-5)
    cfg, _ = read_model_config("smollm2-135m")  # GGUF metadata only
    assert model_params(cfg).total == 134_515_008


def test_refuses_what_cannot_fit(tiny_config, capsys):
    cfg, notes = read_model_config(CONFIGS / "llama-3.1-8b.json")
    p = plan_run(cfg, device("tpu-v5e-1"))
    assert not p.fits and p.max_batch_contexts == 0 and p.over > 16 * GiB  # 32 GB of float32 weights
    assert "GiB over even with one context per batch" in p.refusal() and "bfloat16" in p.refusal()
    sharded = plan_run(cfg, device("tpu-v5e-8"), weights_dtype="bfloat16", buffer_dtype="bfloat16")
    assert sharded.fits and sharded.memory.weights < 4 * GiB  # 1,024 heads' SAEs over 8 chips
    assert main(["plan", str(CONFIGS / "llama-3.1-8b.json"), "--device", "tpu-v5e-1"]) == 2
    err = capsys.readouterr().err
    assert "does not fit on tpu-v5e-1" in err and "GiB over" in err
    small = Device("small", 1, 2**20, {"float32": 1e9})
    kw = dict(d_sae=16, batch=8, buffer_tokens=16, context=64)
    p = plan_run(read_model_config(tiny_config)[0], small, batch_contexts=10_000, **kw)
    assert not p.fits and 1 <= p.max_batch_contexts < 10_000
    assert f"lower --batch-contexts from 10000 to {p.max_batch_contexts}" in p.refusal()
    assert plan_run(read_model_config(tiny_config)[0], small, batch_contexts=p.max_batch_contexts, **kw).fits
    assert not plan_run(read_model_config(tiny_config)[0], small, batch_contexts=p.max_batch_contexts + 1, **kw).fits
    assert main(["plan", str(tiny_config), "--device", "cpu", "--d-sae", "32"]) == 0
    assert "speed ESTIMATE" in capsys.readouterr().out
