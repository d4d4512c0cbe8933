"""experiments/bench_models.py --smoke runs end to end: -1-padded batches reach torch as masked pad ids,
and jsae's logits match torch's at the real positions (the benchmark's own parity check)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jsae.bench import models as bench


def test_bench_models_smoke_runs_and_matches_torch(smollm2, hf_smollm2, monkeypatch):
    monkeypatch.setattr(bench, "load", lambda name: smollm2)  # the session's models, not a second load
    monkeypatch.setattr(bench, "torch_smollm2", lambda: hf_smollm2[0])
    ap = argparse.ArgumentParser()
    bench.add_arguments(ap)
    out = bench.run(ap.parse_args(["--smoke"]))
    assert Path("results").resolve() not in out.resolve().parents and out.exists()
    res = json.loads(out.read_text())
    assert res["smoke"] and res["batch"] == 2 and res["stream_shape"]["shape"] == [2, 16]
    assert res["real_tokens_per_batch"] < np.prod(res["padded_shape"])  # the batch has -1 padding
    assert res["max_abs_logit_diff_vs_torch"] < 1e-3
    assert res["stream_shape"]["max_abs_logit_diff_vs_torch"] < 1e-3
    assert set(res["jsae_over_torch_by_shape"]) == {"prompts_2x16", "stream_2x16"}
    for r in res["jsae_over_torch_by_shape"].values():
        assert r["best"] > 0 and r["median"] > 0 and r["reps"] == 1
    assert out.with_suffix(".png").exists()
