"""``browse``: a trained run (or SAELens folders) -> the feature page, as one self-contained HTML file.

Loads the SAEs and the model they name, reads ``tokens`` text tokens, makes one pass
(:func:`jsae.viz.feature_data`) and renders the page (:mod:`jsae.viz._page`). Every bad input is refused
before the model runs, and the page is written through a temporary file, so an error leaves no file.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jsae.io import is_run_dir, load_run, load_saelens_stack, parse_hook_name

from ._page import page_payload, render_html, write_atomically
from ._pass import check_inputs, feature_data

PAGE_NAME = "feature_page.html"


@dataclasses.dataclass(frozen=True)
class Page:
    """A built feature page: ``html`` (the whole file) and where it was written (None if nowhere). In a
    notebook it displays itself inline (an ``iframe`` whose ``srcdoc`` is the page)."""

    html: str
    path: Path | None = None
    height: int = 860

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" '
            f'style="width:100%;height:{self.height}px;border:1px solid #d0d7de;border-radius:6px"></iframe>'
        )


def load_saes(path: str | Path) -> tuple[Any, list[dict[str, Any]], str | None, str]:
    """The SAEs of a jsae run directory or of SAELens folders: ``(stack, inputs, model_name, architecture)``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; give a run directory written by `jsae train` or SAELens folders")
    if is_run_dir(p):
        sae, inputs, meta = load_run(p)
        return sae, inputs, meta.get("model_name"), str(meta.get("architecture"))
    folder = p / "saes" if (p / "saes").is_dir() and not (p / "cfg.json").is_file() else p
    has_cfg = (folder / "cfg.json").is_file() or (folder.is_dir() and any(folder.glob("*/cfg.json")))
    if not has_cfg:
        raise ValueError(
            f"{p} holds no SAEs: neither a jsae run directory (sae_stack.json, written by `jsae train`) nor "
            "SAELens folders (cfg.json + sae_weights.safetensors); train some with `jsae train --model ...`"
        )
    sae, cfgs = load_saelens_stack(folder)
    inputs = []
    for cfg in cfgs:
        if not cfg.get("hook_name"):
            raise ValueError(
                f"{cfg['path']}: cfg.json names no hook_name, so the page cannot tell what the SAE reads; add "
                "metadata.hook_name (e.g. blocks.6.hook_resid_post)"
            )
        layer, point = parse_hook_name(cfg["hook_name"])
        inputs.append({"layer": layer, "point": point, "head": cfg.get("hook_head_index")})
    names = [c.get("model_name") for c in cfgs if c.get("model_name")]
    return sae, inputs, names[0] if names else None, str(cfgs[0].get("architecture"))


def select_heads(inputs: list[dict[str, Any]], heads: Sequence[tuple[int, int]] | None) -> list[int]:
    """Indices of the SAEs reading the chosen ``(layer, head)`` pairs (all SAEs when None)."""
    if heads is None:
        return list(range(len(inputs)))
    per_head = {(i["layer"], i["head"]): n for n, i in enumerate(inputs) if i["head"] is not None}
    if not per_head:
        raise ValueError(
            "--heads picks per-head SAEs, but these SAEs read "
            f"{', '.join(sorted({str(i['point']) for i in inputs}))} without heads; leave --heads out"
        )
    missing = [f"{layer}.{head}" for layer, head in heads if (layer, head) not in per_head]
    if missing:
        have = sorted(per_head)
        shown = ", ".join(f"{a}.{b}" for a, b in have[:12]) + (" ..." if len(have) > 12 else "")
        raise ValueError(f"no SAE reads head(s) {', '.join(missing)}; these SAEs read heads {shown}")
    return [per_head[(layer, head)] for layer, head in heads]


def parse_heads(text: str) -> list[tuple[int, int]]:
    """``"3.1,7.4"`` -> ``[(3, 1), (7, 4)]``."""
    out = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        layer, _, head = item.partition(".")
        try:
            out.append((int(layer), int(head)))
        except ValueError:
            raise ValueError(f"cannot read head {item!r}; write heads as LAYER.HEAD pairs, e.g. 3.1,7.4") from None
    if not out:
        raise ValueError("no heads given; write them as LAYER.HEAD pairs, e.g. 3.1,7.4")
    return out


def _load_model(name: str | None, source: Path):
    from jsae.models import load

    if name is None:
        raise ValueError(f"{source} does not name the model its SAEs read; pass the model (--model NAME_OR_PATH)")
    try:
        return load(name)
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot find the model {name!r} that {source} names ({e}); pass --model NAME_OR_PATH") from e


def read_contexts(tokenizer, n_tokens: int, *, context: int, text=None, dataset=None, batch: int = 8):
    """``(tokens [S, bos + context], skip)``: at least ``n_tokens`` text tokens of ``text``/``dataset`` (default:
    the offline corpus shipped with Python) packed into contexts; ``skip`` is 1 when each row starts with BOS."""
    from jsae.data import ContextStream, open_text

    if tokenizer is None:
        raise ValueError("the model has no tokenizer; the page needs one to read text and show tokens")
    stream = ContextStream(open_text(text, dataset=dataset), tokenizer, context_size=context, batch_contexts=batch)
    rows, got = [], 0
    for b in stream.iterator():
        rows.append(np.asarray(b, np.int32))
        got += rows[-1].shape[0] * context
        if got >= n_tokens:
            break
    if not rows:
        raise ValueError("the text gave no tokens; give more text (--text) or fewer --tokens")
    tokens = np.concatenate(rows)[: -(-n_tokens // context)]
    return tokens, stream.bos_positions


def browse(
    source: str | Path,
    *,
    heads: Sequence[tuple[int, int]] | str | None = None,
    latents: int | Sequence[int] = 32,
    tokens: int = 16_384,
    model: str | None = None,
    text: str | None = None,
    dataset: str | None = None,
    out: str | Path | None = None,
    k: int = 10,
    context: int = 128,
    batch_size: int = 8,
    progress: bool = True,
) -> Page:
    """The feature page of a run directory (``jsae train``) or of SAELens folders.

    heads: ``(layer, head)`` pairs (or ``"3.1,7.4"``) of per-head SAEs to show (default: every SAE).
    latents: latents per SAE (at most d_sae; chosen from a first batch, :func:`jsae.viz.choose_latents`) or a list of
      latent indices shown for every SAE. tokens: text tokens to read (rounded up to whole contexts).
    model: the model name or path (default: the one the run names). text / dataset: where the text comes
      from (default: the offline corpus shipped with Python). out: write the page there (atomically).
    Returns a :class:`Page`; in a notebook it displays inline.
    """
    source = Path(source)
    sae, inputs, model_name, arch = load_saes(source)
    chosen = select_heads(inputs, parse_heads(heads) if isinstance(heads, str) else heads)
    d_sae = sae.W_enc.shape[-1]
    if isinstance(latents, (int, np.integer)):
        if latents < 1:
            raise ValueError(f"--latents must be a positive count (or latent indices), got {latents}")
        latents = min(int(latents), d_sae)  # more than the SAEs have: show them all
    else:
        bad = [int(v) for v in latents if not 0 <= int(v) < d_sae]
        if bad or not len(latents):
            raise ValueError(f"latent(s) {bad or 'none given'} do not exist: the SAEs have latents 0..{d_sae - 1}")
    if tokens < 1 or k < 1 or context < 2:
        raise ValueError(f"tokens, k must be positive and context >= 2; got {tokens}, {k}, {context}")
    net, tok, meta = _load_model(model or model_name, source)
    picked = np.asarray(chosen)
    sub = sae if chosen == list(range(len(inputs))) else jax.tree.map(lambda a: a[picked], sae)
    sub_inputs = [inputs[i] for i in chosen]
    check_inputs(net, sub, sub_inputs)  # a run whose hooks do not fit this model fails here, before any compute
    if tok is None:
        raise ValueError(
            f"the model {meta.get('name')!r} has no tokenizer; the page needs one to read text and show tokens"
        )
    rows, skip = read_contexts(tok, tokens, context=context, text=text, dataset=dataset, batch=batch_size)
    data = feature_data(
        net, sub, sub_inputs, rows, latents=latents, k=k, skip=skip, batch_size=batch_size, progress=progress
    )
    info = {"model": meta.get("name", model or model_name), "SAEs": f"{len(chosen)} {arch}", "d_sae": d_sae}
    payload = page_payload(
        data,
        rows,
        np.full(len(rows), rows.shape[1]),
        lambda i: tok.decode([i]),
        title=f"jsae feature page \u00b7 {source.resolve().name}",
        info=info,
    )
    page = render_html(payload)
    path = write_atomically(out, page) if out is not None else None
    return Page(page, path)
