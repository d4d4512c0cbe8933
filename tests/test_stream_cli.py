"""``jsae train --model`` (text streamed through a model), ``jsae cache`` and ``jsae train --cache``, chained
into ``jsae eval``, on the tiny random Llama of conftest with a word-level tokenizer; and peak memory of a
streamed run measured in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def _cfgs(run: Path) -> list[dict]:
    return [json.loads((f / "cfg.json").read_text())["metadata"] for f in sorted((run / "saes").iterdir())]


def test_cli_streams_text_then_caches_and_trains_from_the_cache(tiny_llama_tok, word_text, tmp_path, capsys):
    from jsae.activations import open_cache, parse_inputs
    from jsae.cli import main
    from jsae.data import ContextStream, open_text
    from jsae.models import harvest, load_hf_dir

    model_dir, hf = tiny_llama_tok
    text = word_text(tmp_path / "text.txt", 4000, seed=1)
    model_args = [
        "--model",
        str(model_dir),
        "--text",
        str(text),
        "--tokens",
        "2k",
        "--context",
        "16",
        "--batch-contexts",
        "8",
    ]
    sae_args = ["--d-sae", "32", "--k", "4", "--batch", "64"]
    # a buffer larger than the text asked for: it shrinks to 15 of the 16 batches of 128 tokens, and says so
    assert main(["train", *model_args, *sae_args, "--buffer-tokens", "4096", "--out", str(tmp_path / "runs")]) == 0
    assert "shuffle buffer holds 1,920 tokens instead of 4,096" in capsys.readouterr().out
    run = next((tmp_path / "runs").glob("train-*"))
    config = json.loads((run / "config.json").read_text())
    assert config["tokens"] == 2048 and json.loads((run / "metrics.json").read_text())["steps"][-1] == 2048 // 64
    assert config["buffer_tokens"] == 1920
    n_heads = hf.config.num_hidden_layers * hf.config.num_attention_heads
    cfgs = _cfgs(run)
    assert [(c["hook_name"], c["hook_head_index"]) for c in cfgs] == [
        (f"blocks.{i // 4}.attn.hook_z", i % 4) for i in range(n_heads)
    ]
    assert {c["model_name"] for c in cfgs} == {str(model_dir)}

    # the cache holds exactly the model's z of the contexts in stream order (harvest is checked against HF)
    assert main(["cache", str(tmp_path / "cache"), *model_args, "--dtype", "float32"]) == 0
    cache = open_cache(tmp_path / "cache")
    model, tok, _ = load_hf_dir(model_dir)
    stream = ContextStream(open_text(text), tok, context_size=16, batch_contexts=8)
    it = stream.iterator()
    tokens = np.concatenate([next(it) for _ in range(2048 // (8 * 16))])
    z = harvest(model, tokens, point="z", positions="all", progress=False)  # [L*H, n, dh], no BOS position here
    got = np.concatenate(list(cache.iter_chunks()), axis=1)
    assert len(parse_inputs(model.cfg, "z")) == cache.n_rows == n_heads and got.shape == z.shape
    np.testing.assert_allclose(got, z, rtol=1e-5, atol=1e-5)

    assert (
        main(
            ["train", "--cache", str(tmp_path / "cache"), *sae_args, "--steps", "12", "--out", str(tmp_path / "sweep")]
        )
        == 0
    )
    sweep = next((tmp_path / "sweep").glob("train-*"))
    assert [c["hook_name"] for c in _cfgs(sweep)] == [c["hook_name"] for c in cfgs]
    assert (
        main(["eval", "--sae", str(sweep), "--context", "16", "--max-sequences", "4", "--out", str(tmp_path / "evals")])
        == 0
    )
    res = json.loads(next((tmp_path / "evals").glob("eval-*")).joinpath("results.json").read_text())
    assert len(res["per_sae"]["l0"]) == n_heads and np.allclose(res["per_sae"]["l0"], 4.0)


def test_cli_stream_errors_are_one_line(tiny_llama_tok, tmp_path, capsys):
    from jsae.cli import main

    model_dir, _ = tiny_llama_tok
    (tmp_path / "empty.txt").write_text("")
    for args, says in (
        (["--text", str(tmp_path / "missing.txt")], "missing.txt"),
        (["--text", str(tmp_path / "empty.txt")], "empty"),
        (["--points", "q"], "hook point"),
        (["--tokens", "lots"], "token count"),
    ):
        capsys.readouterr()
        assert main(["train", "--model", str(model_dir), *args, "--out", str(tmp_path / "runs")]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, (args, err)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_peak_rss_does_not_grow_with_tokens(tiny_llama_tok, word_text, tmp_path):
    """10x the tokens through the same buffer: peak RSS stays put. Keeping the activations instead would
    add 8 heads x d_model 64 x 4 bytes x 90k tokens = 184 MB."""
    script = Path(__file__).with_name("rss_script.py")
    text = word_text(tmp_path / "text.txt", 110_000, seed=2)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def peak(tokens: int) -> dict:
        p = subprocess.run(
            [sys.executable, str(script), str(tiny_llama_tok[0]), str(text), str(tokens)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    small, large = peak(10_240), peak(102_400)
    assert (small["tokens"], large["tokens"]) == (10_240, 102_400)
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 40, (small, large)
