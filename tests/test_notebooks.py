"""The notebooks in notebooks/ run top to bottom (small settings) and their own checks pass.

Each notebook ends with a cell that compares numbers it computed with an independent answer (the known
features of synthetic data, a brute-force count of head pairs, scores worked out on paper for
hand-built SAEs, a numpy reading of the raw SAELens files, a closed form for steering), asserts, and
prints them as one line ``CHECK {json}``. Here each notebook runs with nbclient in a kernel on this
interpreter with ``JSAE_NOTEBOOK_SMALL=1`` (the notebooks' CI settings) and the persistent JAX
compilation cache of conftest.py; the key numbers of its CHECK line are asserted again, so a check
removed from a notebook does not pass silently.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from jsae.runtime import default_cache_dir

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "jsae-notebook-test"


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory) -> Path:
    """A kernelspec that starts this interpreter (not whichever ``python3`` kernel a machine has)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "jsae tests", "language": "python"}))
    return root


def run_notebook(name: str, jupyter_path: Path, workdir: Path, monkeypatch) -> tuple[dict, object]:
    """Execute ``notebooks/<name>`` in ``workdir``; returns its CHECK dict and the executed notebook."""
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("JSAE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(default_cache_dir()))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{name} is stored with outputs; clear them before committing (keeps diffs small)"
    )
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError (with the cell and traceback) if any cell fails
    lines = [
        line
        for c in nb.cells
        if c.cell_type == "code"
        for out in c.outputs
        if out.get("output_type") == "stream"
        for line in out.get("text", "").splitlines()
        if line.startswith("CHECK ")
    ]
    assert len(lines) == 1, f"{name} should print exactly one CHECK line, printed {len(lines)}"
    return json.loads(lines[0].removeprefix("CHECK ")), nb


def test_notebook_01_trains_many_saes_that_recover_the_true_features(jupyter_path, tmp_path, monkeypatch):
    check, nb = run_notebook("01_train_thousands_of_saes.ipynb", jupyter_path, tmp_path, monkeypatch)
    assert check["n_saes"] == 64
    assert check["median_best_recovery"] > 0.9 > 0.6 > check["chance_recovery"], check
    assert np.all(np.diff(check["l0_by_coefficient"]) < 0), check
    html = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "text/html" in o.get("data", {})]
    assert html, "treescope rendered nothing"
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the plots are missing"


@pytest.mark.slow  # > 60 s on the 2-core CI machine with a cold JAX cache
def test_notebook_02_circuit_aucs_match_a_brute_force_count(jupyter_path, tmp_path, monkeypatch):
    check, _ = run_notebook("02_circuit_discovery.ipynb", jupyter_path, tmp_path, monkeypatch)
    assert set(check["auc"]) == {"sae_shared", "attribution_patching", "random"}
    for method, auc in check["auc"].items():
        assert auc == pytest.approx(check["auc_brute_force"][method], abs=1e-9), method
    assert check["auc"]["attribution_patching"] > 0.8, check
    assert check["model_accuracy"] > 0.5, check


@pytest.mark.slow  # > 60 s on the 2-core CI machine with a cold JAX cache
def test_notebook_03_toy_absorption_matches_the_scores_on_paper(jupyter_path, tmp_path, monkeypatch):
    check, _ = run_notebook("03_absorption.ipynb", jupyter_path, tmp_path, monkeypatch)
    # independent of the notebook's own arithmetic: faithful SAE scores (1, 0, 0, 0); the absorbing one
    # (1/sqrt(13), 1/sqrt(2), 1, 1 - 1/sqrt(13))
    on_paper = {
        "parent_encoder_cosine": [1.0, 13**-0.5],
        "parent_in_child_decoder": [0.0, 0.5**0.5],
        "absorption_rate": [0.0, 1.0],
        "absorption_score": [0.0, 1 - 13**-0.5],
    }
    for metric, want in on_paper.items():
        np.testing.assert_allclose(check["toy_measured"][metric], want, atol=1e-4, err_msg=metric)
    median = check["trained_median_absorption_score"]
    assert median["ReLU-L1, hierarchical"] > median["ReLU-L1, independent children"] + 0.1, median
    assert median["Matryoshka (k=1), hierarchical"] < median["ReLU-L1, hierarchical"], median


def test_notebook_04_saelens_round_trip_and_steering_closed_form(jupyter_path, tmp_path, monkeypatch):
    check, _ = run_notebook("04_steering_and_saelens.ipynb", jupyter_path, tmp_path, monkeypatch)
    assert check["same_arrays"], check
    assert check["encode_max_abs_diff_vs_numpy"] < 1e-3, check
    assert check["alpha0_max_prob_diff"] < 1e-6, check
    assert check["huge_alpha_argmax"] == check["logit_lens_argmax"], check


def test_notebook_05_per_head_saes_from_text_and_their_feature_page(jupyter_path, tmp_path, monkeypatch):
    check, nb = run_notebook("05_per_head_saes_from_text.ipynb", jupyter_path, tmp_path, monkeypatch)
    assert check["n_saes"] == 27 and check["page_heads"] == 27, check  # 3 layers x 9 heads of SmolLM2 (CI size)
    assert check["saelens_same_arrays"] and check["grid_matches_metric"], check
    assert check["sources_vs_direct_preactivation"] < 1e-3, check
    html = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "text/html" in o.get("data", {})]
    assert any("<iframe srcdoc=" in o["data"]["text/html"] for o in html), "the feature page was not displayed"
    assert (tmp_path / "runs" / "per_head_saes" / "feature_page.html").is_file()
    plan_out = [
        o.get("text", "") for c in nb.cells if c.cell_type == "code" and "plan_run(" in c.source for o in c.outputs
    ]
    assert any("largest batch that fits" in t and "fits" in t for t in plan_out), plan_out  # jsae plan ran first
