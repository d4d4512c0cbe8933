"""``jsae browse RUN_DIR``: the feature page of trained SAEs, one self-contained HTML file.

For each chosen SAE and latent: the top-activating contexts (tokens coloured by activation, the activating
token outlined), an activation histogram, the firing frequency, the SAE's explained variance, the tokens the
latent's decoder direction promotes and suppresses, and for per-head ``z`` SAEs the earlier tokens each
activation reads from. The page needs no server and no network: open it in any browser.

    jsae browse runs/train-2026...                       # every SAE, 32 latents each
    jsae browse runs/train-2026... --heads 3.1,7.4 --latents 16 --out page.html
"""

from __future__ import annotations

import time
from pathlib import Path


def register(sub) -> None:
    import argparse

    p = sub.add_parser(
        "browse",
        help="write the feature page (top contexts, histograms, logit effects, source tokens) of trained SAEs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="a run directory written by `jsae train`, or SAELens folders")
    p.add_argument("--heads", default=None, help="per-head SAEs to show, LAYER.HEAD pairs like 3.1,7.4 (default: all)")
    p.add_argument(
        "--latents",
        default="32",
        help="latents per SAE: a count (the most frequent ones below 20%% density) or indices like 5,17,42 "
        "(default: %(default)s)",
    )
    p.add_argument("--tokens", default="16k", help="text tokens to read, e.g. 16k, 100k (default: %(default)s)")
    p.add_argument("--out", default=None, help=f"the HTML file to write (default: RUN/{_page_name()})")
    p.add_argument("--model", default=None, help="model name or path (default: the one the run names)")
    p.add_argument("--text", default=None, help="a .txt/.jsonl/.parquet file or folder (default: the offline corpus)")
    p.add_argument("--dataset", default=None, help="a Hugging Face dataset name instead of --text")
    p.add_argument("--k", type=int, default=10, help="top contexts per latent (default: %(default)s)")
    p.add_argument("--context", type=int, default=128, help="text tokens per context (default: %(default)s)")
    p.add_argument("--batch-contexts", type=int, default=8, help="contexts per forward pass (default: %(default)s)")


def _page_name() -> str:
    from jsae.viz import PAGE_NAME

    return PAGE_NAME


def run(args) -> None:
    from jsae.commands.train import parse_tokens
    from jsae.viz import browse

    text = str(args.latents).strip()
    try:
        latents = int(text) if "," not in text else [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"cannot read --latents {args.latents!r}; give a count (32) or indices (5,17,42)") from None
    out = Path(args.out) if args.out else Path(args.run) / _page_name()
    t0 = time.perf_counter()
    page = browse(
        args.run,
        heads=args.heads,
        latents=latents,
        tokens=parse_tokens(args.tokens),
        model=args.model,
        text=args.text,
        dataset=args.dataset,
        out=out,
        k=args.k,
        context=args.context,
        batch_size=args.batch_contexts,
    )
    size = len(page.html.encode()) / 1e6
    print(f"{time.perf_counter() - t0:.0f} s; feature page ({size:.1f} MB) in {page.path}  (open it in a browser)")
