"""Every benchmark and experiment script runs end to end in its ``--smoke`` mode (tiny sizes, output to a
temporary directory): a benchmark that crashes is a lost result. Each test runs the script in-process on
the session's SmolLM2 and checks the JSON it wrote: strict JSON with the fields the full run writes."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from jsae.viz import find_chromium

ROOT = Path(__file__).resolve().parents[1]


def strict_json(path: Path) -> dict:
    """The file parsed as strict JSON (NaN and infinities refused)."""

    def refuse(token):
        raise ValueError(f"{path}: {token} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def outside_results(path: Path) -> bool:
    return all((ROOT / d).resolve() not in path.resolve().parents for d in ("results", "docs"))


def script(name: str):
    """experiments/<name>.py imported as a module (its ``main(argv)`` runs it)."""
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_evals_smoke(smollm2, monkeypatch):
    from jsae.bench import evals

    monkeypatch.setattr(evals, "load", lambda name: smollm2)
    out = evals.run(evals_args(["--smoke"]))
    assert outside_results(out) and out.with_suffix(".png").exists()
    res = strict_json(out)
    assert res["setup"]["smoke"] and res["setup"]["n_saes"] == 2
    assert set(res["results"]) == {"vectorised", "vectorised_unbatched", "one_at_a_time", "full_forward_loop"}
    for r in res["results"].values():
        assert len(r["ce_sae"]) == 2 and all(math.isfinite(c) for c in r["ce_sae"])
    # the four paths compute the same CE with the SAE spliced in (the benchmark's own agreement check)
    assert res["max_abs_ce_difference"] < 1e-3
    assert res["speedup_vectorised_vs_one_at_a_time"] > 0


def evals_args(argv):
    import argparse

    from jsae.bench import evals

    ap = argparse.ArgumentParser()
    evals.add_arguments(ap)
    return ap.parse_args(argv)


def test_bench_stream_smoke(smollm2, monkeypatch):
    import argparse

    import jsae.models
    from jsae.bench import stream

    monkeypatch.setattr(jsae.models, "load", lambda name: smollm2)
    ap = argparse.ArgumentParser()
    stream.add_arguments(ap)
    out = stream.run(ap.parse_args(["--smoke"]))
    assert out is not None and outside_results(out)
    res = strict_json(out)
    assert res["case"]["smoke"] and res["n_saes"] == 18  # 2 layers x 9 heads
    for key in ("forward_tokens_per_s", "stream_train_tokens_per_s", "encode_and_select_tokens_per_s", "peak_rss_gb"):
        assert res[key] > 0, key
    for key in ("cache_train_tokens_per_s", "step_tokens_per_s"):  # marginal rates: noise can flip a sign
        assert math.isfinite(res[key]), key
    assert res["flop_estimate"]["gflop_per_token"] > res["flop_estimate"]["forward_gflop_per_token"] > 0


def test_bench_train_smoke():
    import argparse

    from jsae.bench import _saelens as saelens
    from jsae.bench import train

    ap = argparse.ArgumentParser()
    train.add_arguments(ap)
    out = train.run(ap.parse_args(["--smoke"]))
    assert outside_results(out)
    res = strict_json(out)
    assert res["smoke"] and res["matmul_peak_gflops"] > 0
    assert [c["name"] for c in res["cases"][:3]] == [c["name"] for c in train.CASES]
    archs = {(c["arch"], c["sparse"]) for c in res["cases"][3:]}
    assert archs == set(train.ARCHS)
    for c in res["cases"]:
        assert c["sae_steps_per_s"] > 0 and c["d_sae"] == train.SMOKE_CASE["d_sae"]
    ratio_keys = {"d_in", "d_sae", "sparse_topk_vs_dense_relu", "sparse_topk_vs_dense_topk"}
    assert set(res["sparse_topk_ratios"][0]) == ratio_keys
    assert {"per_head_tiny_speedup_vs_torch", "wide_batch_fraction_of_matmul_peak"} <= set(res["targets"])
    # without sae_lens the SAELens column is left out, not faked
    assert (res["saelens"] is None) == (not saelens.available())
    assert saelens.available() or all("saelens_sae_steps_per_s" not in c for c in res["cases"])


def test_bench_compile_smoke(smollm2, monkeypatch):
    import jax

    import jsae.models

    monkeypatch.setattr(jsae.models, "load", lambda name: smollm2)
    cache_on = jax.config.jax_enable_compilation_cache  # pyright: ignore[reportAttributeAccessIssue]  # a flag attribute jax defines at run time
    out = script("bench_compile").main(["--smoke"])
    assert jax.config.jax_enable_compilation_cache == cache_on  # the script's cache switch is undone  # pyright: ignore[reportAttributeAccessIssue]  # a flag attribute jax defines at run time
    assert outside_results(out)
    res = strict_json(out)
    assert res["smoke"] and res["tokens_shape"] == [2, 24]
    assert set(res["compile_seconds"]) == {"jsae", "penzai_unrolled_with_hook_points", "penzai_unrolled"}
    for t in res["compile_seconds"].values():
        assert 0 < t["best"] <= t["first"]


@pytest.mark.heavy  # about 80 s on a loaded 2-core machine: the full 30-layer model's IOI accuracy, patching, SAEs
def test_circuits_smollm2_smoke(smollm2, monkeypatch):
    module = script("circuits_smollm2")
    monkeypatch.setattr(module, "load", lambda name: smollm2)
    out = module.main(["--smoke"])
    assert outside_results(out) and out.with_suffix(".png").exists()
    res = strict_json(out)
    assert res["settings"]["smoke"] and res["settings"]["tasks_run"] == ["ioi"] and set(res) == {"ioi", "settings"}
    methods = res["ioi"]["methods"]
    assert set(methods) >= {"sae_per_head_paired", "activation_difference"}
    for m in methods.values():
        assert 0 <= m["auc"] <= 1
    assert "speed_at_equal_prompts" in res["ioi"]


@pytest.mark.heavy  # about 80 s on a loaded 2-core machine: ICL prompts through the full model, probe, IG
def test_absorption_smollm2_smoke(smollm2, monkeypatch):
    module = script("absorption_smollm2")
    monkeypatch.setattr(module, "load", lambda name: smollm2)
    out = module.main(["--smoke"])
    assert outside_results(out)
    res = strict_json(out)
    assert res["smoke"] and len(res["saes"]) == len(module.SPARSITY) and len(res["probe_f1"]) == 26
    for row in res["saes"]:
        assert {"width", "l0", "absorption_fraction", "full_absorption", "paper_absorption_rate"} <= set(row)
        assert row["width"] == 64 and row["l0"] >= 0
    assert len(list(out.parent.glob("absorption_smollm2_*.png"))) >= 1


@pytest.mark.skipif(
    find_chromium() is None or importlib.util.find_spec("playwright") is None,
    reason="no chromium on PATH or no playwright (make setup-test installs them)",
)
@pytest.mark.heavy  # about 35 s on a loaded 2-core machine: streamed training, the page's feature pass, Chromium
def test_feature_page_screenshot_smoke(smollm2, monkeypatch):
    module = script("feature_page_screenshot")
    monkeypatch.setattr(module, "load", lambda name: smollm2)
    png = module.main(["--smoke"])
    assert outside_results(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000  # a real picture
    from jsae.viz import read_payload

    data = read_payload((png.parent / "feature_page.html").read_text())
    assert "smollm2" in data["info"]["model"] and data["sources"] and data["saes"]


@pytest.mark.heavy  # IOI through the full 30-layer model: discovery and patching of 270 heads, per method
def test_circuits_speed_smoke(smollm2, monkeypatch):
    import jsae.models

    monkeypatch.setattr(jsae.models, "load", lambda name: smollm2)
    module = script("circuits_speed")
    out = module.main(["--smoke"])
    assert outside_results(out)
    res = strict_json(out)
    assert res["smoke"] and res["n_prompts"] == module.SMOKE_PROMPTS
    assert set(res["table"]) == {f"in_process/{c}/{m}" for c in ("first", "warm") for m in module.METHODS}
    for row in res["table"].values():
        assert row["discovery_seconds"] > 0 and row["activation_patching_seconds"] > 0 and row["speedup"] > 0


def test_circuits_reference_smoke(smollm2, monkeypatch):
    module = script("circuits_reference")
    monkeypatch.setattr(module, "load", lambda name: smollm2)
    out = module.main(["--smoke"])
    assert outside_results(out) and out.with_suffix(".partial.npz").exists()  # the resumable per-chunk metrics
    res = strict_json(out)
    assert res["settings"]["smoke"] and set(res) == {"ioi", "settings"}
    ioi = res["ioi"]
    n_heads = module.SMOKE["heads"]
    assert ioi["n_prompts"] == module.SMOKE["n_prompts"] and len(ioi["effect"]) == len(ioi["stderr"]) == n_heads
    assert all(math.isfinite(e) for e in ioi["effect"]) and all(s >= 0 for s in ioi["stderr"])
    assert ioi["metric_clean"] > ioi["metric_corrupted"]  # IOI: the corruption removes the answer
    assert 1 <= len(ioi["reference_top10"]) <= n_heads and set(ioi["certain_2se"]) <= set(range(n_heads))


def test_circuits_faithfulness_smoke(smollm2, monkeypatch):
    module = script("circuits_faithfulness")
    monkeypatch.setattr(module, "load", lambda name: smollm2)
    out = module.main(["--smoke"])
    assert outside_results(out) and out.with_suffix(".png").exists()
    res = strict_json(out)
    assert res["settings"]["smoke"] and set(res) == {"ioi", "settings"}
    ioi = res["ioi"]
    rankings = {*module.SMOKE["methods"], "activation_patching_100"}
    assert set(ioi["faithfulness"]) == set(ioi["grading"]) == rankings
    for curve in ioi["faithfulness"].values():
        assert curve["ks"] == res["settings"]["ks"] and curve["ks"][0] == 0 and curve["ks"][-1] == 270
        assert len(curve["recovered"]) == len(curve["ks"]) and all(math.isfinite(r) for r in curve["recovered"])
        # keeping every head patches nothing: the clean metric, all of it recovered
        assert curve["recovered"][-1] == pytest.approx(1.0, abs=1e-4)
    for grade in ioi["grading"].values():
        assert 0 <= grade["auc_reference_100"] <= 1 and 0 <= grade["auc_certain_2se"] <= 1


def test_circuits_examples_smoke(smollm2, monkeypatch):
    module = script("circuits_examples")
    monkeypatch.setattr(module, "load", lambda name: smollm2)
    out = module.main(["--smoke"])
    assert outside_results(out) and out.with_suffix(".png").exists()
    res = strict_json(out)
    assert res["settings"]["smoke"] and set(res) == {"ioi", "settings"}
    assert set(res["ioi"]) == set(module.SMOKE_METHODS)
    for per_n in res["ioi"].values():
        assert set(per_n) == {str(n) for n in module.SMOKE["sizes"]}
        for row in per_n.values():
            assert len(row["runs"]) == len(module.SMOKE["seeds"])
            assert 0 <= row["auc_reference_100_mean"] <= 1 and math.isfinite(row["auc_reference_100_sd"])
            assert all(r["seconds"] > 0 and r["n_positive"] >= 1 for r in row["runs"])


@pytest.mark.heavy  # 50-95 s on a loaded 2-core machine: absorption_smollm2's pipeline and the old path beside it
def test_bench_absorption_smoke(smollm2, monkeypatch):
    module = script("bench_absorption")
    monkeypatch.setattr(module, "load", lambda name: smollm2)
    out = module.main(["--smoke"])
    assert outside_results(out)
    res = strict_json(out)
    n = len(module.SMOKE["sparsity"])
    assert res["smoke"] and len(res["old_seconds_per_sae"]) == len(res["old_summary"]) == len(res["new_summary"]) == n
    assert res["new_seconds_per_sae"] > 0 and res["ratio_old_over_new"] > 0
    # the stacked path computes what the per-SAE float64 reference computes (the benchmark's own check)
    assert all(d < 1e-3 for d in res["max_abs_summary_difference"].values()), res["max_abs_summary_difference"]
