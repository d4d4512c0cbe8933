"""Bad input gives one clear jsae.models error saying what was wrong."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from jsae.models import (
    HookError,
    ModelError,
    ModelFileError,
    SequenceTooLongError,
    TokenOutOfRangeError,
    UnknownModelError,
    UnsupportedArchitectureError,
    forward,
    load,
)
from jsae.models import hooks as H


def test_unknown_name_lists_available():
    with pytest.raises(UnknownModelError, match="smollm2-135m.*gpt2"):
        load("no-such-model-xyz")


def test_missing_files(tmp_path):
    with pytest.raises(ModelFileError, match="config.json"):
        load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelFileError, match="model.safetensors"):
        load(tmp_path)
    with pytest.raises(ModelFileError, match="does not exist"):
        load(tmp_path / "missing.gguf")


def test_truncated_safetensors(tiny_gpt2_dir, tmp_path):
    src, _ = tiny_gpt2_dir
    shutil.copy(src / "config.json", tmp_path / "config.json")
    data = (src / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load(tmp_path)


def test_truncated_gguf(tmp_path, monkeypatch):
    from jsae.models import smollm2_gguf_path

    monkeypatch.setenv("JSAE_CACHE", str(tmp_path / "cache"))
    with open(smollm2_gguf_path(), "rb") as f:
        head = f.read(5_000_000)
    (tmp_path / "cut.gguf").write_bytes(head)
    with pytest.raises(ModelFileError, match="truncated"):
        load(tmp_path / "cut.gguf")


def test_unsupported_architectures(tmp_path, monkeypatch):
    gguf = pytest.importorskip("gguf")
    monkeypatch.setenv("JSAE_CACHE", str(tmp_path / "cache"))
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2' is not supported"):
        load(tmp_path / "m.gguf")
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedArchitectureError, match="bert"):
        load(d)


def test_too_long_and_out_of_range_tokens(tiny_gpt2_dir):
    model, _, _ = load(tiny_gpt2_dir[0])
    with pytest.raises(SequenceTooLongError, match="context of 32"):
        forward(model, np.zeros((1, 33), np.int32))
    with pytest.raises(TokenOutOfRangeError, match="97"):
        forward(model, np.full((1, 4), 97, np.int32))
    with pytest.raises(TokenOutOfRangeError, match="-1"):
        forward(model, np.full((1, 4), -1, np.int32))
    with pytest.raises(ModelError, match="batch, positions"):
        forward(model, np.zeros((4,), np.int32))


def test_bad_hooks(tiny_gpt2_dir):
    model, _, _ = load(tiny_gpt2_dir[0])
    with pytest.raises(HookError, match="unknown hook point"):
        H.capture("attn_scores")
    with pytest.raises(HookError, match="out of range"):
        H.zero_ablate(model, [(2, 0)])
    with pytest.raises(HookError, match="take the model"):
        H.zero_ablate(model.cfg, [(0, 0)])
    with pytest.raises(HookError, match="reduce"):
        H.capture("pattern", reduce="mean")
