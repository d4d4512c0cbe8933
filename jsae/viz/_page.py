"""The feature page: :class:`FeatureData` as compact JSON, and one self-contained HTML file around it (inline
CSS and JavaScript, the data as inline JSON; no server, no CDN, no network). The page's template, style and
script are the package files ``page.html``, ``page.css`` and ``page.js``."""

from __future__ import annotations

import html
import json
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
    """The page's data: per SAE its stats and per latent its contexts (windows of token ids with the
    activation, and the source contributions for per-head ``z`` SAEs), histogram and logit tokens. Token
    strings are stored once, in ``vocab``."""
    used: dict[int, None] = {}
    saes = []
    M, J, k = data.top_value.shape
    freq = data.firing_frequency
    for m in range(M):
        latents = []
        for j in range(J):
            contexts = []
            for c in range(k):
                s, t, v = int(data.top_seq[m, j, c]), int(data.top_pos[m, j, c]), float(data.top_value[m, j, c])
                if s < 0 or not v > 0:
                    continue
                lo, hi = max(0, t - left), min(int(lengths[s]), t + right + 1)
                ids = [int(i) for i in tokens[s, lo:hi]]
                used.update(dict.fromkeys(ids))
                ctx = {
                    "act": _round(np.array([v]))[0],
                    "at": t - lo,
                    "ids": ids,
                    "acts": _round(data.top_acts[m, j, c, lo:hi], 3),
                }
                if data.top_sources is not None:
                    ctx["src"] = _round(data.top_sources[m, j, c, lo : t + 1], 3)
                    ctx["src_outside"] = _round(np.array([data.top_sources[m, j, c, :lo].sum()]), 3)[0]
                contexts.append(ctx)
            nz = np.nonzero(data.hist[m, j])[0]
            hist = (
                {"lo": int(nz[0]), "counts": [int(x) for x in data.hist[m, j, nz[0] : nz[-1] + 1]]}
                if nz.size
                else {"lo": 0, "counts": []}
            )
            up, down = data.logit_up_ids[m, j].tolist(), data.logit_down_ids[m, j].tolist()
            used.update(dict.fromkeys(up + down))
            lat = {
                "index": int(data.latents[m, j]),
                "freq": _round(np.array([freq[m, j]]))[0],
                "contexts": contexts,
                "hist": hist,
                "up": [up, _round(data.logit_up[m, j], 3)],
                "down": [down, _round(data.logit_down[m, j], 3)],
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
    return {
        "title": title,
        "info": info or {},
        "n_tokens": int(data.n_tokens),
        "edges": _round(data.hist_edges),
        "sources": data.top_sources is not None,
        "per_head": all(s["head"] is not None for s in saes),
        "vocab": {str(i): decode(i) for i in used},
        "saes": saes,
    }


def _script_json(payload: dict[str, Any]) -> str:
    """JSON safe inside a ``<script>`` element: every ``<`` escaped, so no token text (``</script>``, ``<!--``) can
    end or confuse it."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def render_html(payload: dict[str, Any]) -> str:
    """One self-contained HTML page for :func:`page_payload`'s data."""
    files = resources.files("jsae.viz")
    template, css, js = (files.joinpath(name).read_text("utf-8") for name in ("page.html", "page.css", "page.js"))
    return (
        template.replace("@@TITLE@@", html.escape(payload["title"]))
        .replace("@@CSS@@", css)
        .replace("@@JS@@", js)
        .replace("@@DATA@@", _script_json(payload))
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
