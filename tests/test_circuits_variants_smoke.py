"""experiments/circuits_variants.py --smoke runs end to end on SmolLM2, and the rows it builds from one
all-position ``z`` harvest are those of the ``result`` harvest (per-prompt means, ``z @ W_O`` per head)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("circuits_variants", ROOT / "experiments" / "circuits_variants.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_circuits_variants_smoke(smollm2, tmp_path):
    from jsae.analysis.circuits import paired_rows
    from jsae.models import harvest
    from jsae.tasks import ioi

    model, tok, _ = smollm2
    script = _script()
    out = tmp_path / "variants.json"
    res = script.run(script.parse(["--smoke", "--out", str(out)]), model=model, tok=tok)
    saved = json.loads(out.read_text())
    assert saved["complete"] and res["complete"]
    methods = saved["ioi"]
    assert set(methods) == {v.name for v in script.SMOKE_VARIANTS} | set(script.BASELINES)
    for m, per_n in methods.items():
        row = per_n["4"]["runs"][0]
        assert 0.0 <= row["auc_reference_100"] <= 1.0 and np.isfinite(row["faithful_area"]), m
    # --faithful-only redraws the curves from the saved rankings: the same numbers
    again = script.run(
        script.parse(["--smoke", "--out", str(out), "--faithful-only", "--faithful-methods", "default"]),
        model=model,
        tok=tok,
    )
    got, want = again["ioi"]["default"]["4"]["runs"][0], methods["default"]["4"]["runs"][0]
    assert got["faithful_area"] == want["faithful_area"] and got["auc_reference_100"] == want["auc_reference_100"]
    # --add recomputes the draw in place: the same AUCs, one run per draw, the faithfulness kept
    added = script.run(script.parse(["--smoke", "--out", str(out), "--add", "--faithful-draws"]), model=model, tok=tok)
    for m, per_n in methods.items():
        assert added["ioi"][m]["4"]["runs"] == per_n["4"]["runs"], m
    # the all-position z harvest, through W_O and averaged per prompt, is harvest(result, mean)
    task = ioi(tok, 3, seed=1)
    tokens = [tok.encode(p) for p in task.clean + task.corrupted]
    z = harvest(model, tokens, point="z", positions="all", progress=False)
    H = model.cfg.n_layers * model.cfg.n_heads
    w_o = np.asarray(model.blocks.W_O).reshape(H, model.cfg.d_head, model.cfg.d_model)
    rows = paired_rows(np.einsum("hnd,hdD->hnD", z, w_o), [len(t) for t in tokens], 3, "mean")
    want = harvest(model, tokens, point="result", positions="mean", progress=False)
    np.testing.assert_allclose(rows.acts, want, rtol=2e-3, atol=2e-4 * np.abs(want).max())
