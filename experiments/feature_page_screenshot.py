"""The screenshot of the feature page in docs/: per-head z SAEs trained on SmolLM2-135M, their page, and a
picture of it taken by headless Chromium (Debian's package, driven by playwright).

    python experiments/feature_page_screenshot.py [--layers 0-5] [--tokens 150000] [--out docs/feature_page.png]
    python experiments/feature_page_screenshot.py --smoke   # checks that it runs: layer 0, tiny SAEs and page,
                                                            # everything in a temporary folder (never docs/)

Trains one TopK SAE per head of the chosen layers on the offline corpus (Python's own docs), writes the run
and its page under results/feature_page/, and saves the screenshot of one head and latent with a clear
source-token panel (the latent whose top contexts read most from one earlier token).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from jsae.runtime import prepare_process

prepare_process()

import jax
import numpy as np

from jsae.activations import parse_inputs
from jsae.data import ContextStream, open_text
from jsae.io import save_run
from jsae.models import load
from jsae.pipeline import train_on_model
from jsae.sae.registry import init_stack
from jsae.train import TrainConfig
from jsae.viz import browse, launch_chromium, read_payload

FULL = {"context": 128, "contexts": 16, "d_sae": 512, "k": 16, "batch": 1024, "buffer": 8192}
SMOKE = {"context": 64, "contexts": 4, "d_sae": 64, "k": 4, "batch": 64, "buffer": 512}
SMOKE_ARGS = {"layers": "0-0", "tokens": 2048, "page_tokens": 512}


def train_run(out: Path, layers: str, tokens: int, size: dict = FULL) -> Path:
    model, tok, _ = load("smollm2-135m")
    lo, hi = (int(v) for v in layers.split("-"))
    heads = ",".join(f"{layer}.*" for layer in range(lo, hi + 1))
    inputs = parse_inputs(model.cfg, "z", heads=heads)
    contexts = ContextStream(open_text(), tok, context_size=size["context"], batch_contexts=size["contexts"])

    def init(sample):
        d_sae, k = size["d_sae"], size["k"]
        return init_stack("topk", jax.random.key(0), len(inputs), model.cfg.d_head, d_sae, k=k, data=sample)

    cfg = TrainConfig(steps=1, batch_size=size["batch"], lr=1e-3, normalise_activations=True, lr_warmup_steps=20)
    result = train_on_model(model, contexts, inputs, init, cfg, tokens=tokens, buffer_tokens=size["buffer"])
    return save_run(
        out,
        result.sae,
        inputs=[i.to_json() for i in inputs],
        model_name="smollm2-135m",
        metrics=result.metrics,
        history=result.history,
        overwrite=True,
    )


def best_view(html: str) -> tuple[int, int]:
    """(SAE, latent) whose top contexts read most clearly from one earlier token (other than the BOS/self)."""
    data = read_payload(html)
    best, where = -1.0, (0, 0)
    for m, s in enumerate(data["saes"]):
        for j, lat in enumerate(s["latents"]):
            if len(lat["contexts"]) < 8 or not 0.002 < lat["freq"] < 0.05:
                continue
            shares = []
            for c in lat["contexts"]:
                src = np.asarray(c["src"])
                total = np.abs(src).sum() + abs(c["src_outside"])
                shares.append(np.abs(src[: c["at"]]).max(initial=0) / total if total > 0 and c["at"] > 0 else 0)
            score = float(np.mean(shares))
            if score > best:
                best, where = score, (m, j)
    return where


def screenshot(page: Path, png: Path, view: tuple[int, int]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        tab = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
        tab.goto(page.resolve().as_uri())
        tab.wait_for_function("window.__jsae_page_ready === true")
        tab.select_option("#sae-select", str(view[0]))
        tab.click(f"#latent-list button[data-latent='{view[1]}']")
        png.parent.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(png), full_page=False)
        browser.close()


def main(argv: list[str] | None = None) -> Path:
    """Run it (``argv``: its command line, default ``sys.argv``); returns the screenshot written."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="0-5", help="layers whose heads get SAEs, LO-HI (default: %(default)s)")
    ap.add_argument("--tokens", type=int, default=150_000, help="training tokens (default: %(default)s)")
    ap.add_argument("--page-tokens", type=int, default=32_768, help="tokens the page reads (default: %(default)s)")
    ap.add_argument("--out", default="docs/feature_page.png")
    ap.add_argument("--work", default="results/feature_page")
    ap.add_argument("--reuse", action="store_true", help="reuse the trained run in --work")
    ap.add_argument(
        "--smoke", action="store_true", help="check that it runs: layer 0, tiny SAEs and page, a temporary folder"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE_ARGS)
        args.work = tempfile.mkdtemp(prefix="jsae-feature-page-smoke-")
        args.out = str(Path(args.work) / "feature_page.png")
    work = Path(args.work)
    t0 = time.perf_counter()
    size = SMOKE if args.smoke else FULL
    run = work / "run" if args.reuse else train_run(work / "run", args.layers, args.tokens, size)
    t1 = time.perf_counter()
    page = browse(run, latents=24, tokens=args.page_tokens, out=work / "feature_page.html", k=10)
    t2 = time.perf_counter()
    view = best_view(page.html)
    screenshot(work / "feature_page.html", Path(args.out), view)
    print(f"trained {t1 - t0:.0f} s, page {t2 - t1:.0f} s; view {view}; screenshot in {args.out}")
    return Path(args.out)


if __name__ == "__main__":
    main()
