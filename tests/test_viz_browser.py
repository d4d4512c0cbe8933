"""The feature page in a real headless Chromium (Debian's ``chromium`` package, driven by playwright): it loads
with no console error, every panel renders, and switching SAE (select and layer x head grid) and latent
changes what is shown. Skipped, with the reason, where chromium or playwright is missing (``make setup-test``
installs both)."""

from __future__ import annotations

import jax
import pytest

from jsae.commands.eval import SAMPLE_TEXT
from jsae.io import save_run
from jsae.models import load_hf_dir
from jsae.sae.registry import init_stack
from jsae.viz import browse, find_chromium, launch_chromium

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no chromium on PATH (make setup-test installs it)")


@pytest.fixture(scope="module")
def page_file(tiny_llama_tok, tmp_path_factory):
    model_dir, _ = tiny_llama_tok
    model, _, _ = load_hf_dir(model_dir)
    cfg = model.cfg
    inputs = [{"layer": l, "point": "z", "head": h} for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    root = tmp_path_factory.mktemp("browser")
    sae = init_stack("topk", jax.random.key(0), len(inputs), cfg.d_head, 32, k=4)
    run = save_run(root / "run", sae, inputs=inputs, model_name=str(model_dir))
    text = root / "text.txt"
    text.write_text((SAMPLE_TEXT + "\n") * 4)
    out = root / "page.html"
    # the settings of test_viz_page's first test: in one pytest process the compiled pass is shared
    browse(run, heads="0.1,1.3", latents=4, tokens=256, text=str(text), out=out, k=3, context=16, progress=False)
    return out


def test_page_in_headless_chromium(page_file, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra has it)")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            page.wait_for_function("window.__jsae_page_ready === true", timeout=10_000)

            assert page.locator("#sae-select option").count() == 2
            assert page.locator("#head-grid .cell").count() == 8  # 2 layers x 4 heads, 2 of them with an SAE
            assert page.locator("#head-grid .cell.none").count() == 6
            assert page.locator("#latent-list button").count() == 4
            assert page.locator("#panel-contexts .ctx").count() > 0
            assert page.locator("#panel-contexts .tok.at").count() == page.locator("#panel-contexts .ctx").count()
            assert page.locator("#panel-hist svg rect").count() > 0
            assert page.locator("#panel-logits .lrow").count() == 20  # 10 promoted + 10 suppressed
            assert page.locator("#panel-sources").is_visible()
            assert page.locator("#panel-sources .ctx").count() > 0

            def shown():
                return (page.inner_text("#latent-title"), page.inner_text("#panel-contexts .body"))

            first = shown()
            page.click("#latent-list button[data-latent='1']")
            second = shown()
            assert second[0] != first[0] and second[0].startswith("L0.H1 z")
            assert page.locator("#latent-list button.sel").get_attribute("data-latent") == "1"

            page.select_option("#sae-select", "1")  # layer 1, head 3
            third = shown()
            assert third[0].startswith("L1.H3 z") and third != second
            assert page.locator("#head-grid .cell.sel").get_attribute("data-sae") == "1"

            page.click("#head-grid .cell[data-sae='0']")  # back to layer 0, head 1, by the grid
            assert shown()[0].startswith("L0.H1 z") and page.input_value("#sae-select") == "0"
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert all(u.startswith("file://") for u in requests), requests  # nothing from the network
    assert (tmp_path / "page.png").stat().st_size > 10_000
