"""One absorption run on a language model: probe data, then every metric for a stack of SAEs at once.

>>> data = prepare_probe_data(model, tok, layer=3)                    # prompts, activations, probe
>>> res = absorption_run(stack, data, model=model, layer=3, answer_ids=answer_token_ids(tok))
>>> res.summary["absorption_fraction"]                                   # [N], one per SAE of the stack

The CLI (``jsae absorption``) and ``experiments/absorption_smollm2.py`` evaluate a list of SAEs with
:func:`evaluate_saes` (one :func:`absorption_run` per stack of same-shaped SAEs) and plot its rows with
:func:`plot_absorption`; ``notebooks/03_absorption.ipynb`` calls :func:`absorption_run`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from jsae.analysis._absorption import (
    LetterCounts,
    ablation_effects,
    ig_alphas,
    ig_gradients,
    letter_counts,
    main_latents_inactive,
    paper_absorption,
    saebench_absorption,
    summarise,
)
from jsae.analysis._probes import LinearProbe
from jsae.data import TextSource
from jsae.models import harvest, map_batches
from jsae.sae import SAE, concat
from jsae.tasks.first_letter import Prompts


@dataclass
class ProbeData:
    """First-letter activations and the probe: train/test acts [n, D], letters [n], the test prompts
    (for IG), the probe and its per-letter test F1 [26], predictions [n_test, 26]."""

    train_acts: np.ndarray
    train_letters: np.ndarray
    test_acts: np.ndarray
    test_letters: np.ndarray
    test_prompts: Prompts
    probe: LinearProbe
    probe_f1: np.ndarray
    test_pred: np.ndarray


def residual_at_positions(
    model, tokens: Int[np.ndarray, "B T"], positions: Int[np.ndarray, " B"], layer: int, *, batch_size: int = 32
) -> np.ndarray:
    """resid_post of ``layer`` at one position per row, [B, D] (:func:`jsae.models.harvest` of each row cut
    after its position: only the first layer+1 blocks run, on the tokens up to that position)."""
    rows = (np.asarray(tokens), np.asarray(positions) + 1)
    acts = harvest(
        model, rows, point="resid_post", positions="last", layers=layer, batch_size=batch_size, progress=False
    )
    return acts[0]


# --- training data and on-the-fly SAEs (the CLI, the experiment and the notebooks) -------------------


def text_windows(tokenizer, ctx: int, max_tokens: int, source: TextSource | None = None) -> np.ndarray:
    """``[n, ctx]`` token contexts of ``source`` packed by :class:`jsae.data.ContextStream` (documents joined
    by EOS, a BOS first where the tokenizer adds one), ``n = max_tokens // ctx``.

    source: a :class:`jsae.data.TextSource` (``jsae.data.open_text(...)``); default Python's reference
    manual shipped with the interpreter (``PythonCorpus(("topics",))``, no download)."""
    from jsae.data import ContextStream, PythonCorpus

    if ctx < 2:
        raise ValueError(f"--ctx must be >= 2, got {ctx}")
    n = max_tokens // ctx
    if n == 0:
        raise ValueError(f"max_tokens {max_tokens} is less than one window of {ctx} tokens")
    source = PythonCorpus(("topics",)) if source is None else source
    bos = 1 if getattr(tokenizer, "add_bos", False) else 0
    stream = ContextStream(source, tokenizer, context_size=ctx - bos, batch_contexts=min(n, 64), read_threads=0)
    windows, have = [], 0
    for batch in stream:
        windows.append(np.asarray(batch, np.int32))
        have += len(windows[-1])
        if have >= n:
            break
    if have < n:
        raise ValueError(f"the training text gives {have} windows of {ctx} tokens, fewer than the {n} asked for")
    return np.concatenate(windows)[:n]


def training_activations(
    model, tokenizer, layer: int, *, max_tokens: int, ctx: int = 128, batch_size: int = 16, source=None
) -> np.ndarray:
    """resid_post of ``layer`` at every position but the first (a BOS or an attention sink) of each of
    :func:`text_windows`, ``[n_windows * (ctx - 1), d_model]`` (:func:`jsae.models.harvest`)."""
    windows = text_windows(tokenizer, ctx, max_tokens, source)
    acts = harvest(
        model, windows, point="resid_post", positions="all", layers=layer, batch_size=batch_size, progress=False
    )
    return acts[0].reshape(len(windows), ctx, -1)[:, 1:].reshape(-1, model.cfg.d_model)


def train_relu_sweep(
    acts: np.ndarray, widths: list[int], sparsity: list[float], *, steps: int, batch: int, lr: float, seed: int
) -> list[dict]:
    """One vmapped ReLU-L1 stack per width over the ``sparsity`` coefficients; a list of
    ``{"width", "sparsity", "sae", "train_metrics", "train_seconds"}`` (one per SAE)."""
    from jsae.sae import index
    from jsae.sae.registry import init_stack
    from jsae.train import TrainConfig, train

    out = []
    for w_i, width in enumerate(widths):
        key = jax.random.fold_in(jax.random.key(seed), w_i)
        stack = init_stack("relu", key, len(sparsity), acts.shape[1], width)
        cfg = TrainConfig(
            steps=steps,
            batch_size=batch,
            lr=lr,
            sparsity_coef=list(sparsity),
            lr_warmup_steps=min(100, steps // 10),
            lr_decay="linear",
            sparsity_warmup_steps=steps // 5,
            chunk_steps=min(steps, 500),
            normalise_activations=True,
            dead_after_tokens=batch * 200,
            seed=seed,
        )
        res = train(stack, acts, cfg, progress=False)
        for i, coef in enumerate(sparsity):
            out.append(
                {
                    "width": width,
                    "sparsity": coef,
                    "sae": index(res.sae, i),
                    "train_metrics": {k: float(v[i]) for k, v in res.metrics.items()},
                    "train_seconds": res.seconds / len(sparsity),
                }
            )
    return out


def prepare_probe_data(
    model,
    tokenizer,
    layer: int,
    *,
    n_train: int = 3000,
    n_test: int = 1000,
    n_examples: int = 10,
    seed: int = 0,
    probe_steps: int = 500,
) -> ProbeData:
    """Vocabulary -> 80/20 split -> ICL prompts for ``n_train``/``n_test`` sampled words -> activations at
    the word token of ``layer`` -> 26-way probe and its per-letter test F1."""
    from jsae.analysis._probes import f1_per_class, one_hot_targets, train_probe
    from jsae.tasks.first_letter import alphabetic_vocabulary, build_prompts, train_test_split

    vocab = alphabetic_vocabulary(tokenizer)
    train_v, test_v = train_test_split(vocab, seed=seed)
    rng = np.random.default_rng(seed)
    train_s = train_v.subset(np.sort(rng.choice(len(train_v), min(n_train, len(train_v)), replace=False)))
    test_s = test_v.subset(np.sort(rng.choice(len(test_v), min(n_test, len(test_v)), replace=False)))
    train_p = build_prompts(tokenizer, train_s, train_v, n_examples=n_examples, seed=seed)
    test_p = build_prompts(tokenizer, test_s, train_v, n_examples=n_examples, seed=seed + 1)
    train_acts = residual_at_positions(model, train_p.tokens, train_p.word_pos, layer)
    test_acts = residual_at_positions(model, test_p.tokens, test_p.word_pos, layer)
    probe = train_probe(jnp.asarray(train_acts), jnp.asarray(train_p.letters), 26, steps=probe_steps)
    pred = np.asarray(probe.predict(jnp.asarray(test_acts)))
    f1 = np.asarray(f1_per_class(jnp.asarray(pred), one_hot_targets(jnp.asarray(test_p.letters), 26)))
    return ProbeData(train_acts, train_p.letters, test_acts, test_p.letters, test_p, probe, f1, pred)


@dataclass(frozen=True)
class AbsorptionConfig:
    """Settings of a run (the published defaults; see :mod:`jsae.analysis._absorption`)."""

    max_k: int = 10
    tau_fs: float = 0.03
    selection: str = "mean_diff"
    ig_steps: int = 4
    paper_candidates: int = 2
    min_probe_f1: float = 0.6
    absorber_cos: float = 0.1
    full_cos: float = 0.025
    proportion: float = 0.4
    max_absorbers: int = 3
    min_gap: float = 1.0
    paper_cos: float = 0.025
    seed: int = 0
    ig_batch: int = 8


@dataclass
class AbsorptionResult:
    """A run over N SAEs: l0 [N] (on the test words), summary ``{name: [N]}`` (:data:`SUMMARIES`),
    counts (per letter, ``[N, 26]``), k_sparse_f1 [N, 26, K], main_latents[i][c] (latent ids)."""

    l0: np.ndarray
    summary: dict[str, np.ndarray]
    counts: LetterCounts
    k_sparse_f1: np.ndarray
    main_latents: list[list[list[int]]]
    probe_f1: np.ndarray

    def per_letter(self, i: int) -> list[dict]:
        """SAE i's per-letter rows (letter, probe_f1, main_latents, counts and rates)."""
        c = self.counts
        frac, full, rate = (np.asarray(f()[i]) for f in (c.absorption_fraction, c.full_absorption, c.paper_rate))
        return [
            {
                "letter": k,
                "probe_f1": float(self.probe_f1[k]),
                "main_latents": self.main_latents[i][k],
                "n_true_positives": int(c.n_true_positives[i, k]),
                "absorption_fraction": float(frac[k]),
                "full_absorption": float(full[k]),
                "n_candidates": int(c.n_candidates[i, k]),
                "n_paper_evaluated": int(c.n_paper_evaluated[i, k]),
                "n_paper_absorbed": int(c.n_paper_absorbed[i, k]),
                "paper_rate": float(rate[k]),
            }
            for k in range(len(self.probe_f1))
        ]


@eqx.filter_jit
def _encode_stack(sae, x):
    return jax.vmap(lambda s: s.encode(x))(sae)


@eqx.filter_jit
def _saebench_stack(acts, latents, W_dec, dirs, main, kw):
    """[N, n] fractions and full flags, and candidates (main latents off), for a stack in one program."""

    def one(f, W, m):
        frac, full = saebench_absorption(acts, f, W, dirs, m, **kw)
        return frac, full, main_latents_inactive(f, m)

    return jax.vmap(one)(latents, W_dec, main)


@eqx.filter_jit
def _paper_stack(latents, W_dec, grads, dirs, kw):
    """[N, P] paper decisions from per-pair latents [N, P, m], gradients [N, P, D], directions [N, P, D]."""
    return jax.vmap(lambda f, W, g, d: paper_absorption(ablation_effects(f, W, g), W, d, **kw))(
        latents, W_dec, grads, dirs
    )


def _pick_candidates(candidate: np.ndarray, tp: np.ndarray, kept: np.ndarray, letters: np.ndarray, cfg) -> list:
    """Per letter (in order) up to ``paper_candidates`` random candidate rows, the seeded draw of one SAE."""
    rng = np.random.default_rng(cfg.seed)
    picks = []
    for c in range(len(kept)):
        cand = np.flatnonzero((letters == c) & tp & candidate)
        if kept[c] and len(cand) and cfg.paper_candidates > 0:
            picks.append(np.sort(rng.choice(cand, min(len(cand), cfg.paper_candidates), replace=False)))
    return picks


def absorption_run(
    stack: SAE,
    data: ProbeData,
    *,
    model=None,
    layer: int | None = None,
    answer_ids: Int[Array, " 26"] | np.ndarray | None = None,
    cfg: AbsorptionConfig = AbsorptionConfig(),  # noqa: B008 -- frozen dataclass, never mutated
) -> AbsorptionResult:
    """k-sparse probing and both absorption metrics for every SAE of ``stack`` (leading axis [N]).

    The paper's metric needs ``model``, ``layer`` and ``answer_ids`` (skipped otherwise); it runs IG on at
    most ``cfg.paper_candidates`` randomly chosen candidates per letter and SAE.
    """
    from jsae.analysis._sparse_probing import k_sparse_probing
    from jsae.sae import n_saes

    N = n_saes(stack)
    lat_train = np.asarray(_encode_stack(stack, jnp.asarray(data.train_acts)))  # [N, n, m]
    lat_test = _encode_stack(stack, jnp.asarray(data.test_acts))
    sp = [
        k_sparse_probing(
            jnp.asarray(lat_train[i]),
            jnp.asarray(data.train_letters),
            lat_test[i],
            jnp.asarray(data.test_letters),
            26,
            max_k=cfg.max_k,
            method=cfg.selection,  # pyright: ignore[reportArgumentType] -- checked by k_sparse_probing
            tau_fs=cfg.tau_fs,
        )
        for i in range(N)
    ]
    m = stack.W_dec.shape[1]
    main = np.zeros((N, 26, m), bool)
    for i, r in enumerate(sp):
        for c, ids in enumerate(r.main_latents):
            main[i, c, ids] = True
    letters = np.asarray(data.test_letters)
    dirs = np.asarray(data.probe.directions())  # [26, D]
    kw = dict(absorber_cos=cfg.absorber_cos, full_cos=cfg.full_cos, proportion=cfg.proportion)
    kw["max_absorbers"] = cfg.max_absorbers
    frac, full, candidate = _saebench_stack(
        jnp.asarray(data.test_acts),
        lat_test,
        stack.W_dec,
        jnp.asarray(dirs[letters]),
        jnp.asarray(main[:, letters]),
        kw,
    )
    tp = np.asarray(data.test_pred)[np.arange(len(letters)), letters].astype(bool)
    n_tp = np.bincount(letters[tp], minlength=26)
    kept = (np.asarray(data.probe_f1) >= cfg.min_probe_f1) & (n_tp > 0)
    P = max(1, cfg.paper_candidates) * 26
    paper_rows = np.zeros((N, P), np.int64)
    paper_valid = np.zeros((N, P), bool)
    absorbed = np.zeros((N, P), bool)
    if model is not None and cfg.paper_candidates > 0:
        if layer is None or answer_ids is None:
            raise ValueError("the paper's metric needs layer and answer_ids along with model")
        cand_np = np.asarray(candidate)
        for i in range(N):
            rows = np.concatenate([np.zeros(0, np.int64), *_pick_candidates(cand_np[i], tp, kept, letters, cfg)])
            paper_rows[i, : len(rows)], paper_valid[i, : len(rows)] = rows, True
        absorbed = _paper_metric(stack, lat_test, data, model, layer, answer_ids, paper_rows, paper_valid, dirs, cfg)
    counts = letter_counts(
        frac,
        full,
        candidate,
        jnp.asarray(tp),
        jnp.asarray(letters),
        jnp.asarray(data.probe_f1),
        jnp.asarray([r.n_main for r in sp]),
        jnp.asarray(letters[paper_rows]),
        jnp.asarray(absorbed),
        jnp.asarray(paper_valid),
        min_probe_f1=cfg.min_probe_f1,
    )
    counts = LetterCounts(**{k: np.asarray(v) for k, v in vars(counts).items()})
    summary = {k: np.asarray(v) for k, v in summarise(counts).items()}
    l0 = np.asarray(jnp.mean(jnp.sum(lat_test != 0, axis=2), axis=1))
    return AbsorptionResult(
        l0, summary, counts, np.stack([r.f1 for r in sp]), [r.main_latents for r in sp], np.asarray(data.probe_f1)
    )


def _paper_metric(stack, lat_test, data, model, layer, answer_ids, rows, valid, dirs, cfg) -> np.ndarray:
    """IG through the model for every (SAE, candidate) pair in one batched loop -> [N, P] decisions."""
    N, P = rows.shape
    if not valid.any():  # no SAE has a candidate: nothing to run through the model
        return np.zeros((N, P), bool)
    F = jax.vmap(lambda f, r: f[r])(lat_test, jnp.asarray(rows))  # [N, P, m]
    V = jnp.einsum("npm,nmd->npd", F, stack.W_dec)  # the latents' part of the reconstruction
    alphas = ig_alphas(cfg.ig_steps)
    flat_sae, flat_j = np.nonzero(valid)
    flat_rows = rows[flat_sae, flat_j]
    deltas = np.asarray((alphas[None, :, None] - 1.0) * V[flat_sae, flat_j][:, None, :], np.float32)  # [Q, A, D]
    pr = data.test_prompts
    lengths, word_pos = np.asarray(pr.lengths)[flat_rows], np.asarray(pr.word_pos)[flat_rows]
    ids = jnp.asarray(answer_ids, jnp.int32)

    def grads(model, tokens, lens, wp, let, d):
        return ig_gradients(model, tokens, lens, wp, let, d, ids, layer)

    g = map_batches(
        grads,
        model,
        np.asarray(pr.tokens)[flat_rows],
        lengths,
        word_pos.astype(np.int32),
        np.asarray(pr.letters)[flat_rows].astype(np.int32),
        deltas,
        batch_size=cfg.ig_batch,
    )
    G = np.zeros((N, P, g.shape[1]), np.float32)
    G[flat_sae, flat_j] = g
    letters = np.asarray(data.test_letters)[rows]
    kw = dict(min_gap=cfg.min_gap, paper_cos=cfg.paper_cos)
    return np.asarray(_paper_stack(F, stack.W_dec, jnp.asarray(G), jnp.asarray(dirs[letters]), kw)) & valid


def evaluate_saes(
    entries: list[dict], data: ProbeData, model, layer: int, answer_ids, cfg: AbsorptionConfig
) -> list[dict]:
    """The evaluation of ``jsae absorption`` and ``experiments/absorption_smollm2.py``: both metrics for every
    SAE (``entries[i]["sae"]``, a single SAE), one :func:`absorption_run` per stack of same-shaped SAEs;
    JSON-ready rows in the order of ``entries`` (``seconds``: the stack's evaluation time divided by its size)."""
    groups: dict[tuple, list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault((type(e["sae"]).__name__, int(e["sae"].d_sae)), []).append(i)
    rows: list[dict] = [{} for _ in entries]
    for idx in groups.values():
        t0 = time.perf_counter()
        res = absorption_run(
            concat([entries[i]["sae"] for i in idx]), data, model=model, layer=layer, answer_ids=answer_ids, cfg=cfg
        )
        seconds = (time.perf_counter() - t0) / len(idx)
        for j, i in enumerate(idx):
            rows[i] = {
                "width": int(entries[i]["sae"].d_sae),
                "l0": float(res.l0[j]),
                **{k: (int(v[j]) if k == "n_letters" else float(v[j])) for k, v in res.summary.items()},
                "seconds": seconds,
                "k_sparse_f1": res.k_sparse_f1[j],
                "per_letter": res.per_letter(j),
            }
    return rows


def plot_absorption(results: list[dict], run: Path) -> list[Path]:
    """Absorption vs L0 (coloured by width) and per-letter absorption fraction of :func:`evaluate_saes`'s
    rows, as ``run/absorption_vs_l0.png`` and ``run/absorption_per_letter.png``."""
    from jsae.plots import figure, save
    from jsae.tasks.first_letter import LETTERS

    fig, axes = figure(13, 4, ncols=3)
    widths = sorted({r["width"] for r in results})
    for metric, ax in zip(("absorption_fraction", "full_absorption", "paper_absorption_rate"), axes):
        for w in widths:
            rs = sorted((r for r in results if r["width"] == w), key=lambda r: r["l0"])
            ax.plot([r["l0"] for r in rs], [r[metric] for r in rs], "o-", label=f"width {w}")
        ax.set_xscale("log")
        ax.set_xlabel("L0 on first-letter tokens")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("feature absorption vs sparsity and width")
    paths = [save(fig, run / "absorption_vs_l0.png", dpi=110)]

    fig, ax = figure(12, 4)
    bw = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        vals = [row["absorption_fraction"] for row in r["per_letter"]]
        ax.bar(np.arange(26) + i * bw, np.nan_to_num(vals), bw, label=f"w{r['width']} L0 {r['l0']:.0f}")
    ax.set_xticks(np.arange(26) + 0.4 - bw / 2, list(LETTERS))
    ax.set_ylabel("absorption fraction (SAEBench)")
    ax.set_title("absorption per first letter (letters with probe F1 < threshold are blank)")
    ax.legend(fontsize=7, ncol=3)
    paths.append(save(fig, run / "absorption_per_letter.png", dpi=110))
    return paths
