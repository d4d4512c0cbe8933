"""Run directories (jsae.io.save_run / load_run) and the chain ``jsae train`` -> ``jsae eval`` -> SAELens folders.

Oracles: the arrays and static fields that were saved (round trip, bit for bit); SAELens' encode/decode
formulas written in numpy from the raw cfg.json + safetensors; TransformerLens hook names written out
literally; numpy's mean/min/max of the history passed in; the PNG signature; and for ``jsae eval`` the
activations of the same tiny model computed by transformers (torch) with the metrics in numpy.
"""

from __future__ import annotations

import json
import shutil
import struct

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from jsae.io import RunFormatError, load_run, load_saelens, load_saelens_stack, save_run
from jsae.sae import index
from jsae.sae.registry import ARCHITECTURES, USES_K, init_stack

N, D_IN, D_SAE, K = 3, 6, 10, 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def random_stack(arch: str, seed: int = 0, n: int = N, d_in: int = D_IN):
    """A stack of the architecture with every array perturbed (no zeros, no -1 placeholders); thresholds >= 0."""
    extra = {"prefixes": (D_SAE // 2, D_SAE)} if arch == "matryoshka" else {}
    sae = init_stack(arch, jax.random.key(seed), n, d_in, D_SAE, k=K if arch in USES_K else None, **extra)
    leaves, treedef = jax.tree.flatten(sae)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    leaves = [a + 0.3 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    sae = jax.tree.unflatten(treedef, leaves)
    if hasattr(sae, "threshold"):  # JumpReLU thresholds and BatchTopK's global one must be >= 0 to be meaningful
        sae = eqx.tree_at(lambda s: s.threshold, sae, jnp.abs(sae.threshold) + 0.05)
    return sae


def numpy_saelens(directory, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SAELens' encode and decode (saes/*_sae.py) in float64 numpy, from the raw cfg.json + safetensors."""
    cfg = json.loads((directory / "cfg.json").read_text())
    t = {k: v.astype(np.float64) for k, v in load_file(str(directory / "sae_weights.safetensors")).items()}
    x = x.astype(np.float64)
    xc = x - t["b_dec"] if cfg["apply_b_dec_to_input"] else x
    relu = lambda a: np.maximum(a, 0.0)
    arch = cfg["architecture"]
    if arch == "gated":
        f = ((xc @ t["W_enc"] + t["b_gate"]) > 0) * relu(xc @ (t["W_enc"] * np.exp(t["r_mag"])) + t["b_mag"])
    else:
        pre = xc @ t["W_enc"] + t["b_enc"]
        if arch == "standard":
            f = relu(pre)
        elif arch == "jumprelu":
            f = relu(pre) * (pre > t["threshold"])
        else:
            assert arch == "topk"
            f = np.zeros_like(pre)
            top = np.argsort(-pre, axis=-1)[:, : cfg["k"]]
            np.put_along_axis(f, top, relu(np.take_along_axis(pre, top, axis=-1)), axis=-1)
    return f, f @ t["W_dec"] + t["b_dec"]


def per_head_inputs(n: int = N) -> list[dict]:
    return [{"layer": 3, "point": "z", "head": h} for h in range(n)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_round_trip_is_bit_exact_and_saelens_folders_agree(tmp_path, arch):
    sae = random_stack(arch, seed=ARCHITECTURES.index(arch))
    run = save_run(tmp_path / "run", sae, inputs=per_head_inputs(), model_name="smollm2-135m", config={"arch": arch})
    loaded, inputs, meta = load_run(run)
    assert type(loaded) is type(sae)
    assert jax.tree.structure(loaded) == jax.tree.structure(sae)  # the treedef carries every static field
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(sae)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert inputs == per_head_inputs()
    assert meta["architecture"] == arch and meta["n_saes"] == N and meta["model_name"] == "smollm2-135m"
    assert meta["config"] == {"arch": arch}
    if arch in USES_K:
        assert meta["static"]["k"] == K

    x = np.random.default_rng(1).normal(size=(16, D_IN)).astype(np.float32)
    folders = sorted((run / "saes").iterdir())
    assert [p.name for p in folders] == ["sae_000_layer3_z_head0", "sae_001_layer3_z_head1", "sae_002_layer3_z_head2"]
    for i, d in enumerate(folders):
        one, cfg = load_saelens(d)
        f_np, x_hat_np = numpy_saelens(d, x)
        stacked = index(loaded, i)
        np.testing.assert_allclose(np.asarray(stacked.encode(x)), f_np, atol=1e-5)
        np.testing.assert_allclose(np.asarray(stacked(x)), x_hat_np, atol=1e-5)
        np.testing.assert_allclose(np.asarray(one.encode(x)), np.asarray(stacked.encode(x)), atol=1e-6)
        np.testing.assert_allclose(np.asarray(one.decode(one.encode(x))), np.asarray(stacked(x)), atol=1e-6)
        assert cfg["hook_name"] == "blocks.3.attn.hook_z" and cfg["hook_head_index"] == i
    stack, cfgs = load_saelens_stack(run / "saes")  # the folder of folders loads in stack order
    assert [c["hook_head_index"] for c in cfgs] == [0, 1, 2] and stack.W_enc.shape == (N, D_IN, D_SAE)


def test_cfg_json_carries_saelens_metadata(tmp_path):
    inputs = [
        {"layer": 3, "point": "z", "head": 5},
        {"layer": 0, "point": "result", "head": 2},
        {"layer": 6, "point": "resid_post"},
        {"layer": 2, "point": "mlp_out", "head": None},
        {"layer": 1, "point": "resid_pre"},
        {"layer": 4, "point": "attn_out"},
        {"layer": 5, "point": "resid_mid"},
        {"layer": 7, "point": "z", "head": None},
    ]
    expected = [
        ("blocks.3.attn.hook_z", 5),
        ("blocks.0.attn.hook_result", 2),
        ("blocks.6.hook_resid_post", None),
        ("blocks.2.hook_mlp_out", None),
        ("blocks.1.hook_resid_pre", None),
        ("blocks.4.hook_attn_out", None),
        ("blocks.5.hook_resid_mid", None),
        ("blocks.7.attn.hook_z", None),
    ]
    sae = random_stack("topk", n=len(inputs))
    run = save_run(
        tmp_path / "run",
        sae,
        inputs=inputs,
        model_name="smollm2-135m",
        sae_metadata={"context_size": 128, "prepend_bos": True},
    )
    record = json.loads((run / "sae_stack.json").read_text())
    for i, (d, (hook, head)) in enumerate(zip(record["saelens_dirs"], expected)):
        cfg = json.loads((run / d / "cfg.json").read_text())
        assert cfg["architecture"] == "topk" and cfg["k"] == K and cfg["d_in"] == D_IN and cfg["d_sae"] == D_SAE
        assert cfg["normalize_activations"] == "none"
        assert cfg["reshape_activations"] == ("hook_z" if (hook, head) == ("blocks.7.attn.hook_z", None) else "none")
        meta = cfg["metadata"]
        assert (meta["hook_name"], meta["hook_head_index"], meta["model_name"]) == (hook, head, "smollm2-135m")
        assert meta["context_size"] == 128 and meta["prepend_bos"] is True and meta["jsae_stack_index"] == i
        assert meta["sae_lens_version"].startswith("6.")
    assert record["saelens_dirs"][0] == "saes/sae_000_layer3_z_head5"


def test_transformerlens_hook_names_both_ways():
    from jsae.io import SAELensFormatError, hook_name, parse_hook_name

    names = {
        (3, "z"): "blocks.3.attn.hook_z",
        (0, "result"): "blocks.0.attn.hook_result",
        (12, "resid_pre"): "blocks.12.hook_resid_pre",
        (1, "resid_mid"): "blocks.1.hook_resid_mid",
        (6, "resid_post"): "blocks.6.hook_resid_post",
        (2, "attn_out"): "blocks.2.hook_attn_out",
        (4, "mlp_out"): "blocks.4.hook_mlp_out",
    }
    for (layer, point), name in names.items():
        assert hook_name(layer, point) == name and parse_hook_name(name) == (layer, point)
    for bad in ("blocks.3.hook_z", "blocks.3.attn.hook_resid_post", "blocks.3.attn.hook_q", "blocks.x.hook_mlp_out"):
        with pytest.raises(SAELensFormatError, match="not one jsae can splice"):
            parse_hook_name(bad)
    with pytest.raises(SAELensFormatError, match="'pattern' has no SAELens hook name"):
        hook_name(1, "pattern")


def test_unknown_inputs_save_without_a_hook(tmp_path):
    run = save_run(tmp_path / "run", random_stack("relu"), inputs={"layer": None, "point": None, "head": None})
    _, inputs, meta = load_run(run)
    assert inputs == [{"layer": None, "point": None, "head": None}] * N and meta["model_name"] is None
    cfg = json.loads((run / meta["saelens_dirs"][0] / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] is None and cfg["metadata"]["hook_head_index"] is None


def test_input_scale_is_folded_into_the_saved_weights(tmp_path):
    """An SAE trained on c*x, saved with input_scale=c, reads raw x: f(x) = f_c(c x), x_hat(x) = x_hat_c(c x) / c."""
    sae = random_stack("topk")
    c = np.array([0.5, 2.0, 10.0], np.float32)
    run = save_run(tmp_path / "run", sae, inputs=per_head_inputs(), input_scale=c)
    x = np.random.default_rng(2).normal(size=(16, D_IN)).astype(np.float32)
    for i, d in enumerate(sorted((run / "saes").iterdir())):
        f_np, x_hat_np = numpy_saelens(d, x)
        f_c = np.asarray(index(sae, i).encode(c[i] * x))
        np.testing.assert_allclose(f_np, f_c, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(x_hat_np, np.asarray(index(sae, i)(c[i] * x)) / c[i], rtol=1e-4, atol=1e-5)
        assert json.loads((d / "cfg.json").read_text())["normalize_activations"] == "none"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_metrics_json_and_curves_follow_the_history(tmp_path):
    from jsae.train import TrainConfig, train

    x = np.random.default_rng(0).normal(size=(N, 256, D_IN)).astype(np.float32)
    result = train(
        random_stack("relu"), x, TrainConfig(steps=12, batch_size=16, chunk_steps=4, sparsity_coef=0.1), progress=False
    )
    run = save_run(
        tmp_path / "run",
        result.sae,
        inputs=per_head_inputs(),
        config={"steps": 12},
        history=result.history,
        metrics=result.metrics,
    )
    m = json.loads((run / "metrics.json").read_text())
    assert m["n_saes"] == N and m["steps"] == [4, 8, 12]
    assert {"loss", "l0", "explained_variance", "dead_fraction"} <= set(m["history"])
    for name, v in result.history.items():
        if name == "step":
            continue
        h = m["history"][name]
        v = np.asarray(v, np.float64)
        np.testing.assert_array_equal(np.asarray(h["per_sae"]), v)
        np.testing.assert_allclose(h["mean"], v.mean(axis=1), rtol=1e-12)
        np.testing.assert_array_equal(h["min"], v.min(axis=1))
        np.testing.assert_array_equal(h["max"], v.max(axis=1))
    for name, v in result.metrics.items():
        np.testing.assert_array_equal(m["final"][name]["per_sae"], np.asarray(v, np.float64))
        np.testing.assert_allclose(m["final"][name]["mean"], np.mean(np.asarray(v, np.float64)), rtol=1e-12)
    assert json.loads((run / "config.json").read_text()) == {"steps": 12}
    width, height = png_size(run / "curves.png")
    assert width > 400 and height > 100 and (run / "curves.png").stat().st_size > 5000


def test_bad_input_and_incomplete_runs_give_one_clear_error(tmp_path):
    sae = random_stack("topk")
    with pytest.raises(RunFormatError, match="2 entries for a stack of 3"):
        save_run(tmp_path / "a", sae, inputs=per_head_inputs(2))
    with pytest.raises(RunFormatError, match="point 'resid_post' has no heads"):
        save_run(tmp_path / "a", sae, inputs={"layer": 1, "point": "resid_post", "head": 0})
    with pytest.raises(RunFormatError, match="'hook_q'"):
        save_run(tmp_path / "a", sae, inputs={"layer": 1, "point": "hook_q"})
    with pytest.raises(RunFormatError, match=r"history\['loss'\] has shape \(2,\)"):
        save_run(tmp_path / "a", sae, inputs=per_head_inputs(), history={"step": np.array([1, 2]), "loss": np.ones(2)})

    run = save_run(tmp_path / "run", sae, inputs=per_head_inputs())
    with pytest.raises(RunFormatError, match="already holds a saved run"):
        save_run(run, sae, inputs=per_head_inputs())
    smaller = jax.tree.map(lambda a: a[:2], sae)
    save_run(run, smaller, inputs=per_head_inputs(2), overwrite=True)  # the third SAE's folder goes away
    assert len(list((run / "saes").iterdir())) == 2 and load_run(run)[0].W_enc.shape[0] == 2

    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "sae_stack.json").unlink()
    with pytest.raises(RunFormatError, match="no sae_stack.json.*interrupted.*load_saelens_stack"):
        load_run(broken)
    shutil.copy(run / "sae_stack.json", broken / "sae_stack.json")
    (broken / "sae_stack.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RunFormatError, match="cannot read"):
        load_run(broken)


# ---------------------------------------------------------------------------------------------------
# jsae train -> jsae eval, on a tiny random Llama read by both jsae and transformers


def eval_tokens(model_dir, context: int, max_sequences: int) -> list[np.ndarray]:
    """The sequences ``jsae eval`` reads by default (its built-in text in contexts of ``context`` tokens)."""
    from jsae.analysis import contexts_from_stream
    from jsae.commands.eval import SAMPLE_TEXT
    from jsae.models import Tokenizer

    tokens, lengths = contexts_from_stream(Tokenizer.from_dir(model_dir).encode(SAMPLE_TEXT), context)
    return [tokens[i, :n] for i, n in enumerate(lengths) if n >= 2][:max_sequences]


def hf_activations(hf, seqs, layer: int, point: str) -> tuple[np.ndarray, float]:
    """transformers' activations at ``point`` of ``layer`` for every token ([n, d] resid_post, [n, H, d] z and
    result) and the clean next-token cross-entropy over all predictions."""
    import torch

    captured = []
    block = hf.model.layers[layer]
    if point == "resid_post":  # the decoder layer's output (hidden_states[-1] would carry the final norm)
        hook = block.register_forward_hook(
            lambda m, a, out: captured.append((out[0] if isinstance(out, tuple) else out)[0].detach().numpy().copy())
        )
    else:  # z: the input of o_proj
        hook = block.self_attn.o_proj.register_forward_pre_hook(
            lambda m, a: captured.append(a[0][0].detach().numpy().copy())
        )
    nll, count = 0.0, 0
    try:
        with torch.no_grad():
            for s in seqs:
                ids = torch.tensor(np.asarray(s)[None], dtype=torch.long)
                logp = torch.log_softmax(hf(ids).logits[0, :-1].double(), dim=-1)
                nll -= float(logp.gather(1, ids[0, 1:, None]).sum())
                count += len(s) - 1
    finally:
        hook.remove()
    acts = captured
    if point in ("z", "result"):
        H = hf.config.num_attention_heads
        acts = [c.reshape(c.shape[0], H, -1) for c in captured]
    if point == "result":  # head h's output: z_h W_O[:, h] (Llama's o_proj has no bias)
        W_o = block.self_attn.o_proj.weight.detach().numpy().reshape(hf.config.hidden_size, H, -1)
        acts = [np.einsum("thd,Dhd->thD", z, W_o) for z in acts]
    return np.concatenate(acts).astype(np.float64), nll / count


def numpy_metrics(directory, x: np.ndarray) -> dict[str, float]:
    f, x_hat = numpy_saelens(directory, x)
    return {
        "l0": float(np.mean(np.sum(f != 0, axis=-1))),
        "explained_variance": float(1 - np.sum((x_hat - x) ** 2) / np.sum((x - x.mean(axis=0)) ** 2)),
    }


def test_cli_train_npy_then_eval_the_run_directory(tiny_llama_tok, tmp_path, capsys):
    from jsae.cli import main

    model_dir, hf = tiny_llama_tok
    train_acts, _ = hf_activations(hf, eval_tokens(model_dir, 16, 64), 0, "resid_post")
    np.save(tmp_path / "acts.npy", train_acts.astype(np.float32))
    assert (
        main(
            [
                "train",
                str(tmp_path / "acts.npy"),
                "--arch",
                "topk",
                "--k",
                "4",
                "--d-sae",
                "32",
                "--steps",
                "40",
                "--batch",
                "32",
                "--out",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    run = next((tmp_path / "runs").glob("train-*"))
    assert not list(run.glob("*.npz"))
    png_size(run / "curves.png")
    assert json.loads((run / "metrics.json").read_text())["steps"][-1] == 40

    eval_args = [
        "eval",
        "--sae",
        str(run),
        "--model",
        str(model_dir),
        "--context",
        "16",
        "--max-sequences",
        "4",
        "--out",
        str(tmp_path / "evals"),
    ]
    capsys.readouterr()
    assert main(eval_args) == 2  # trained on a .npy: the hook is unknown
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --layer and --hook" in err

    assert main([*eval_args, "--layer", "0", "--hook", "resid_post"]) == 0
    res = json.loads(next((tmp_path / "evals").glob("eval-*")).joinpath("results.json").read_text())
    x, ce_clean = hf_activations(hf, eval_tokens(model_dir, 16, 4), 0, "resid_post")
    want = numpy_metrics(next((run / "saes").iterdir()), x)
    assert res["tokens"] == len(x)
    np.testing.assert_allclose(res["per_sae"]["l0"][0], want["l0"], rtol=1e-6)
    np.testing.assert_allclose(
        res["per_sae"]["explained_variance"][0], want["explained_variance"], rtol=1e-3, atol=1e-4
    )
    np.testing.assert_allclose(res["per_sae"]["ce_clean"][0], ce_clean, rtol=1e-4)
    assert np.isfinite(res["per_sae"]["ce_loss_score"][0])


def test_cli_eval_per_head_run_uses_its_model_and_heads(tiny_llama_tok, tmp_path, capsys):
    from jsae.cli import main

    model_dir, hf = tiny_llama_tok
    H, d_head = hf.config.num_attention_heads, hf.config.hidden_size // hf.config.num_attention_heads
    inputs = [{"layer": layer, "point": "z", "head": h} for layer in (0, 1) for h in range(H)]
    sae = random_stack("topk", n=len(inputs), d_in=d_head)
    run = save_run(tmp_path / "run", sae, inputs=inputs, model_name=str(model_dir))
    args = ["eval", "--sae", str(run), "--context", "16", "--max-sequences", "4", "--out", str(tmp_path / "evals")]
    assert main([*args, "--splice-max", "4"]) == 0  # no --model: the run's own; 8 per-head SAEs > 4: no CE
    assert "CE/KL not computed for the 8 SAEs at z" in capsys.readouterr().out
    res = json.loads(next((tmp_path / "evals").glob("eval-*")).joinpath("results.json").read_text())
    assert res["heads"] == [0, 1, 2, 3] * 2 and res["layers"] == [0] * 4 + [1] * 4 and res["point"] == "z"
    assert res["per_sae"].get("ce_sae") is None or all(v is None for v in res["per_sae"]["ce_sae"])
    seqs = eval_tokens(model_dir, 16, 4)
    z = {layer: hf_activations(hf, seqs, layer, "z")[0] for layer in (0, 1)}
    folders = sorted((run / "saes").iterdir())
    for i, inp in enumerate(inputs):
        want = numpy_metrics(folders[i], z[inp["layer"]][:, inp["head"]])
        np.testing.assert_allclose(res["per_sae"]["l0"][i], want["l0"], rtol=1e-6)
        np.testing.assert_allclose(
            res["per_sae"]["explained_variance"][i], want["explained_variance"], rtol=1e-3, atol=1e-4
        )

    shutil.rmtree(tmp_path / "evals")  # the SAELens folders alone: hook, head and model from each cfg.json
    assert main(["eval", "--sae", str(run / "saes"), *args[3:], "--splice-max", "0"]) == 0
    res_folders = json.loads(next((tmp_path / "evals").glob("eval-*")).joinpath("results.json").read_text())
    assert res_folders["heads"] == res["heads"] and res_folders["layers"] == res["layers"]
    np.testing.assert_allclose(
        res_folders["per_sae"]["explained_variance"], res["per_sae"]["explained_variance"], rtol=1e-5
    )

    shutil.rmtree(tmp_path / "evals")
    assert main(args) == 0  # 8 <= the default --splice-max: every head is spliced
    res = json.loads(next((tmp_path / "evals").glob("eval-*")).joinpath("results.json").read_text())
    assert all(np.isfinite(v) for v in res["per_sae"]["ce_loss_score"]) and not res["notes"]


def test_cli_eval_mixed_points_in_one_stack(tiny_llama_tok, tmp_path):
    """One stack of d_model-wide SAEs on a head's result and on the residual stream: each reads its own input."""
    from jsae.cli import main

    model_dir, hf = tiny_llama_tok
    inputs = [
        {"layer": 0, "point": "result", "head": 1},
        {"layer": 1, "point": "resid_post", "head": None},
        {"layer": 0, "point": "result", "head": 3},
    ]
    run = save_run(
        tmp_path / "run",
        random_stack("relu", n=3, d_in=hf.config.hidden_size),
        inputs=inputs,
        model_name=str(model_dir),
    )
    assert main(["eval", "--sae", str(run), "--context", "16", "--max-sequences", "4", "--out", str(tmp_path)]) == 0
    res = json.loads(next(tmp_path.glob("eval-*")).joinpath("results.json").read_text())
    assert res["point"] == ["result", "resid_post", "result"] and res["heads"] == [1, None, 3]
    seqs = eval_tokens(model_dir, 16, 4)
    result0, ce_clean = hf_activations(hf, seqs, 0, "result")
    xs = [result0[:, 1], hf_activations(hf, seqs, 1, "resid_post")[0], result0[:, 3]]
    for i, (d, x) in enumerate(zip(sorted((run / "saes").iterdir()), xs)):
        want = numpy_metrics(d, x)
        np.testing.assert_allclose(res["per_sae"]["l0"][i], want["l0"], rtol=1e-6)
        np.testing.assert_allclose(
            res["per_sae"]["explained_variance"][i], want["explained_variance"], rtol=1e-3, atol=1e-4
        )
    np.testing.assert_allclose(res["per_sae"]["ce_clean"], [ce_clean] * 3, rtol=1e-4)
    assert all(np.isfinite(v) for v in res["per_sae"]["ce_loss_score"])


def _strict_loads(text: str):
    """Python's parser with the non-standard constants NaN/Infinity/-Infinity refused (RFC 8259 has none)."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_write_json_never_writes_nan_or_inf(tmp_path):
    """NaN/inf in any form (Python, numpy scalars, jax scalars, inside arrays at any depth, dict keys that are not
    strings) come back from a strict parser as null, and finite values as themselves."""
    from jsae.io import write_json

    obj = {
        "py": [float("nan"), float("inf"), -float("inf"), 1.5],
        "np32": np.float32("nan"),
        "np64_inf": np.float64("-inf"),
        "jax": jnp.asarray(jnp.nan),
        "jax_ok": jnp.asarray(2.0, jnp.bfloat16),
        "nested": {"a": np.array([[1.0, np.nan], [np.inf, 3.0]], np.float32), "t": (jnp.array([jnp.inf, 0.5]),)},
        "ints": np.arange(3),
        3: "key",
    }
    text = write_json(tmp_path / "x.json", obj).read_text()
    assert _strict_loads(text) == {
        "py": [None, None, None, 1.5],
        "np32": None,
        "np64_inf": None,
        "jax": None,
        "jax_ok": 2.0,
        "nested": {"a": [[1.0, None], [None, 3.0]], "t": [[None, 0.5]]},
        "ints": [0, 1, 2],
        "3": "key",
    }


def test_no_json_file_is_written_around_the_strict_writer():
    """Every JSON file jsae and the experiments write goes through write_json (or a json.dump(s) with
    allow_nan=False): a plain ``json.dump(s)`` into a file could write NaN, which is not JSON."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [*(root / "jsae").rglob("*.py"), *(root / "experiments").rglob("*.py")]:
        text = path.read_text()
        for m in re.finditer(r"json\.dump\(|write_text\(json\.dumps\(", text):
            call = text[m.start() : text.find("\n", m.start())]
            if "allow_nan=False" not in call:
                offenders.append(f"{path.relative_to(root)}: {call.strip()}")
    assert not offenders, "JSON written without the strict writer (use jsae.io.write_json):\n" + "\n".join(offenders)
