"""The feature page: :class:`FeatureData` as compact JSON, and one self-contained HTML file around it (inline
CSS and JavaScript, the data as inline JSON; no server, no CDN, no network). The page's template, style and
script are the package files ``page.html``, ``page.css`` and ``page.js``."""

from __future__ import annotations

import base64
import html
import json
import zlib
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ._pass import FeatureData

LEFT, RIGHT = 24, 6  # tokens shown before and after the activating token


def _round(a: np.ndarray, digits: int = 4) -> list:
    """Floats to a few significant digits for a small JSON (non-finite values become 0)."""
    a = np.nan_to_num(np.asarray(a, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return [float(f"{v:.{digits}g}") for v in a.reshape(-1)]


def sae_label(inp: dict[str, Any]) -> str:
    """``L3.H5 z``, ``L6 resid_post``: how the page names an SAE."""
    head = "" if inp.get("head") is None else f".H{inp['head']}"
    return f"L{inp['layer']}{head} {inp['point']}"


ACT_LEVELS = 999  # activations are stored as integers 0..999 of their latent's largest top activation
SRC_LEVELS = 999  # source contributions as integers -999..999 of the context's largest |contribution|


def _quantise(a: np.ndarray, scale: float) -> list[int]:
    """``round(a / scale)`` as Python ints (all zeros when ``scale`` is 0)."""
    a = np.nan_to_num(np.asarray(a, np.float64).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
    return np.rint(a / scale).astype(np.int64).tolist() if scale > 0 else [0] * a.size


def page_payload(
    data: FeatureData,
    tokens: np.ndarray,
    lengths: np.ndarray,
    decode: Callable[[int], str],
    *,
    title: str,
    info: dict[str, Any] | None = None,
    left: int = LEFT,
    right: int = RIGHT,
) -> dict[str, Any]:
    """The page's data, compact: every token string once (``vocab``), every context row's token ids once
    (``rows``), and per latent its contexts as ``[row, position, acts]`` (plus ``src_scale, src, outside`` for
    per-head ``z`` SAEs) with ``acts`` integers of the latent's scale ``as`` (``ACT_LEVELS`` at its largest
    top activation) and ``src`` integers of ``src_scale`` (``SRC_LEVELS`` at the context's largest
    contribution). The window shown is ``left`` tokens before the activating one and ``right`` after;
    :func:`read_payload` reads it back, ``page.js`` decodes it in the browser."""
    rows: dict[int, int] = {}  # sequence -> its index in the payload's rows
    saes = []
    M, J, k = data.top_value.shape
    freq = data.firing_frequency
    for m in range(M):
        latents = []
        for j in range(J):
            keep = [c for c in range(k) if data.top_seq[m, j, c] >= 0 and data.top_value[m, j, c] > 0]
            top = float(data.top_value[m, j, keep[0]]) if keep else 0.0
            scale = top / ACT_LEVELS
            contexts = []
            for c in keep:
                s, t = int(data.top_seq[m, j, c]), int(data.top_pos[m, j, c])
                lo, hi = max(0, t - left), min(int(lengths[s]), t + right + 1)
                ctx: list[Any] = [rows.setdefault(s, len(rows)), t, _quantise(data.top_acts[m, j, c, lo:hi], scale)]
                if data.top_sources is not None:
                    src = np.asarray(data.top_sources[m, j, c], np.float64)
                    outside = float(src[:lo].sum())
                    ss = max(float(np.abs(src[lo : t + 1]).max(initial=0.0)), abs(outside)) / SRC_LEVELS
                    ctx += [float(f"{ss:.6g}"), _quantise(src[lo : t + 1], ss), _quantise(np.array(outside), ss)[0]]
                contexts.append(ctx)
            nz = np.nonzero(data.hist[m, j])[0]
            hist = [int(nz[0]), *data.hist[m, j, nz[0] : nz[-1] + 1].tolist()] if nz.size else [0]
            lat = {
                "index": int(data.latents[m, j]),
                "freq": _round(np.array([freq[m, j]]))[0],
                "as": float(f"{scale:.6g}"),
                "contexts": contexts,
                "hist": hist,
                "up": [data.logit_up_ids[m, j].tolist(), _round(data.logit_up[m, j], 3)],
                "down": [data.logit_down_ids[m, j].tolist(), _round(data.logit_down[m, j], 3)],
            }
            if data.source_constant is not None:
                lat["constant"] = _round(np.array([data.source_constant[m, j]]), 3)[0]
            latents.append(lat)
        inp = data.inputs[m]
        saes.append(
            {
                "label": sae_label(inp),
                "layer": inp["layer"],
                "head": inp["head"],
                "point": inp["point"],
                "ev": _round(np.array([data.explained_variance[m]]))[0],
                "l0": _round(np.array([data.l0[m]]))[0],
                "dead": _round(np.array([float(np.mean(data.fires[m] == 0))]))[0],
                "latents": latents,
            }
        )
    row_ids = [tokens[s, : int(lengths[s])].tolist() for s in rows]
    used = {i for r in row_ids for i in r}
    for s in saes:
        for lat in s["latents"]:
            used.update(lat["up"][0] + lat["down"][0])
    return {
        "title": title,
        "info": info or {},
        "n_tokens": int(data.n_tokens),
        "edges": _round(data.hist_edges),
        "sources": data.top_sources is not None,
        "per_head": all(s["head"] is not None for s in saes),
        "window": [left, right],
        "vocab": {str(i): decode(i) for i in sorted(used)},
        "rows": row_ids,
        "saes": saes,
    }


def read_payload(html_text: str) -> dict[str, Any]:
    """A page's data with every context decoded (as ``page.js`` does): per context ``act`` (the activation),
    ``at`` (the activating token's index in the window), ``ids`` (the window's token ids), ``acts`` and, for
    per-head ``z`` SAEs, ``src`` (the contributions of the window's tokens up to ``at``) and ``src_outside``
    (the sum of those before the window); per latent ``hist`` as ``{"lo", "counts"}``."""
    import re

    found = re.search(r'<script type="application/x-jsae-deflate-base64" id="data">(.*?)</script>', html_text, re.S)
    if found is None:
        raise ValueError("no feature-page data in this HTML (is it a page written by jsae browse?)")
    payload = json.loads(zlib.decompress(base64.b64decode(found.group(1))).decode("utf-8"))
    left, right = payload["window"]
    for s in payload["saes"]:
        for lat in s["latents"]:
            lat["hist"] = {"lo": lat["hist"][0], "counts": lat["hist"][1:]}
            decoded = []
            for ctx in lat["contexts"]:
                r, t, acts = ctx[:3]
                row = payload["rows"][r]
                lo, hi = max(0, t - left), min(len(row), t + right + 1)
                c = {
                    "act": acts[t - lo] * lat["as"],
                    "at": t - lo,
                    "ids": row[lo:hi],
                    "acts": [q * lat["as"] for q in acts],
                }
                if payload["sources"]:
                    ss, src, outside = ctx[3:]
                    c.update(src=[q * ss for q in src], src_outside=outside * ss)
                decoded.append(c)
            lat["contexts"] = decoded
    return payload


def _packed(payload: dict[str, Any]) -> str:
    """The payload as compact JSON, deflated (zlib) and base64-encoded: a few times smaller than the JSON, and
    safe inside a ``<script>`` element (no token text such as ``</script>`` can end it). The page inflates it
    with the browser's own ``DecompressionStream``."""
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return base64.b64encode(zlib.compress(text.encode("utf-8"), 6)).decode("ascii")


def render_html(payload: dict[str, Any]) -> str:
    """One self-contained HTML page for :func:`page_payload`'s data."""
    files = resources.files("jsae.viz")
    template, css, js = (files.joinpath(name).read_text("utf-8") for name in ("page.html", "page.css", "page.js"))
    return (
        template.replace("@@TITLE@@", html.escape(payload["title"]))
        .replace("@@CSS@@", css)
        .replace("@@JS@@", js)
        .replace("@@DATA@@", _packed(payload))
    )


def write_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: a failure leaves
    no partial file."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def head_grid(values: Sequence[float], layers: Sequence[int], heads: Sequence[int]) -> np.ndarray:
    """``[n_layers, n_heads]`` array of per-SAE values placed at their (layer, head) (NaN where no SAE)."""
    grid = np.full((max(layers) + 1, max(heads) + 1), np.nan)
    for v, layer, head in zip(values, layers, heads):
        grid[layer, head] = v
    return grid
