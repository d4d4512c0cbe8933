"""``jsae browse`` / ``jsae.viz.browse``: the page from a run directory and from SAELens folders, and one clear
error (no file left behind) for each bad input. A tiny random Llama with a word-level tokenizer keeps it fast."""

from __future__ import annotations

import re

import jax
import pytest

from jsae.cli import main
from jsae.commands.eval import SAMPLE_TEXT
from jsae.io import save_run
from jsae.models import load_hf_dir
from jsae.sae.registry import init_stack
from jsae.viz import browse, read_payload

N_HEADS_SHOWN = 3


@pytest.fixture(scope="module")
def tiny_run(tiny_llama_tok, tmp_path_factory):
    """A run directory of per-head z SAEs (random TopK, untrained: the page reads any SAE) on the tiny Llama,
    and a text file in its vocabulary."""
    model_dir, _ = tiny_llama_tok
    model, _, _ = load_hf_dir(model_dir)
    cfg = model.cfg
    inputs = [{"layer": l, "point": "z", "head": h} for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    root = tmp_path_factory.mktemp("viz")
    sae = init_stack("topk", jax.random.key(0), len(inputs), cfg.d_head, 32, k=4)
    run = save_run(root / "run", sae, inputs=inputs, model_name=str(model_dir))
    text = root / "text.txt"
    text.write_text((SAMPLE_TEXT + "\n") * 4)
    return run, text, model_dir


def _payload(html: str) -> dict:
    return read_payload(html)


def test_page_of_a_run_has_every_panel_and_source_attributions(tiny_run, tmp_path):
    run, text, _ = tiny_run
    out = tmp_path / "page.html"
    page = browse(run, heads="0.1,1.3", latents=4, tokens=256, text=str(text), out=out, k=3, context=16, progress=False)
    assert out.read_text() == page.html
    code = re.sub(r'id="data">.*?</script>', "", page.html, flags=re.S)  # the page without its (base64) data
    assert "<script src" not in code and "http" not in code.replace("http://www.w3.org/2000/svg", "")
    data = _payload(page.html)
    assert [s["label"] for s in data["saes"]] == ["L0.H1 z", "L1.H3 z"]
    assert data["sources"] and data["per_head"]
    lat = data["saes"][0]["latents"][0]
    assert len(data["saes"][0]["latents"]) == 4 and lat["contexts"]
    c = lat["contexts"][0]
    assert c["acts"][c["at"]] == pytest.approx(c["act"], rel=1e-2)  # the activating token carries the top value
    # the window's contributions + the earlier ones + the constant give the pre-activation (= TopK activation)
    assert sum(c["src"]) + c["src_outside"] + lat["constant"] == pytest.approx(c["act"], rel=2e-2, abs=2e-3)
    assert len(lat["up"][0]) == 10 and all(str(i) in data["vocab"] for i in lat["up"][0] + c["ids"])
    assert "<iframe srcdoc=" in page._repr_html_()


def test_cli_writes_the_page_for_saelens_folders_without_head_panels(tiny_run, tmp_path, capsys):
    run, text, model_dir = tiny_run
    # SAELens folders of a residual-stream SAE: no heads, no source panel
    from jsae.io import save_saelens

    model, _, _ = load_hf_dir(model_dir)
    sae = init_stack("relu", jax.random.key(2), 1, model.cfg.d_model, 16)
    folder = tmp_path / "saelens"
    save_saelens(
        jax.tree.map(lambda a: a[0], sae),
        folder / "sae_0",
        hook_name="blocks.1.hook_resid_post",
        model_name=str(model_dir),
    )
    out = tmp_path / "p.html"
    args = ["--latents", "3", "--tokens", "128", "--text", str(text), "--context", "16", "--out", str(out)]
    rc = main(["browse", str(folder), *args])
    assert rc == 0, capsys.readouterr().err
    data = _payload(out.read_text())
    assert not data["sources"] and not data["per_head"] and data["saes"][0]["label"] == "L1 resid_post"


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty_dir", "holds no SAEs"),
        ("missing_head", "no SAE reads head(s) 1.9"),
        ("missing_latent", "latent(s) [999] do not exist"),
        ("hook_mismatch", "has layers 0..1"),
        ("no_model", "cannot find the model"),
    ],
)
def test_bad_input_gets_one_clear_error_and_no_file(case, message, tiny_run, tmp_path, capsys):
    run, text, model_dir = tiny_run
    args = ["--tokens", "64", "--text", str(text), "--context", "16"]
    target = run
    if case == "empty_dir":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "missing_head":
        args += ["--heads", "0.1,1.9"]
    elif case == "missing_latent":
        args += ["--latents", "3,999"]
    else:
        model, _, _ = load_hf_dir(model_dir)
        sae = init_stack("relu", jax.random.key(0), 1, model.cfg.d_head, 8)
        layer = 7 if case == "hook_mismatch" else 0  # the tiny model has 2 layers
        name = str(model_dir) if case == "hook_mismatch" else "no-such-model-anywhere"
        target = save_run(tmp_path / case, sae, inputs={"layer": layer, "point": "z", "head": 0}, model_name=name)
    out = tmp_path / "page.html"
    rc = main(["browse", str(target), *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".page.html.*"))


def test_token_text_cannot_break_out_of_the_page_script():
    from jsae.viz import render_html

    nasty = "</script><script>alert(1)</script><!--"
    payload = {"title": "<b>t</b>", "info": {}, "n_tokens": 0, "edges": [], "sources": False, "per_head": False}
    html = render_html({**payload, "window": [24, 6], "rows": [], "vocab": {"0": nasty}, "saes": []})
    assert html.count("</script>") == 2 and "<b>t</b>" not in html  # the data and the code, nothing more
    assert _payload(html)["vocab"]["0"] == nasty
