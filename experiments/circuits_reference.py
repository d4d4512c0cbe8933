"""A circuit reference worth grading against: activation patching of all 270 SmolLM2 heads on many prompts.

    python experiments/circuits_reference.py            # -> results/circuits_reference.json (+ .npz)
    python experiments/circuits_reference.py --tasks docstring   # add a task, keep the others
    python experiments/circuits_reference.py --smoke     # checks that it runs: IOI, 4 prompts, 9 heads,
                                                         # a temporary folder

For IOI and greater-than (and docstring with ``--tasks``): 100 prompts (seed 3) that appear in none of the discovery
pools (seed 0, the 200 prompts every method discovers from), each head's ``result`` patched from the corrupted prompt
into the clean one, one head at a time, at every position. Per prompt ``i`` and head ``h`` the normalised drop
``(m_clean_i - m_patched_ih) / (mean m_clean - mean m_corrupted)``; a head's effect is its mean over prompts, with the
standard error of that mean (``jsae.analysis.circuits.patching_effects``), so the per-head sd says which heads are
certain. The reference circuit is, as before, the top 10% (27 heads) by |effect|; ``certain`` is the set of heads at
least 2 standard errors from 0.

Prompts go through in chunks of 20, all padded to one length (one compiled program); after every chunk
the per-prompt metrics are written to ``results/circuits_reference.partial.npz``, and a rerun resumes
from there (delete it to start over). Timing runs print per chunk; the JSON records the total.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from jsae.runtime import prepare_process

prepare_process()  # one CPU device per core, persistent compilation cache

import jax.numpy as jnp
from tqdm.auto import tqdm

from jsae.analysis.circuits import metrics_with_heads_replaced, patching_effects, single_head_masks
from jsae.io import write_json
from jsae.models import capture, forward, load, pad_sequences
from jsae.tasks import Task, docstring, greater_than, held_out, ioi, task_metric

OUT = Path(__file__).resolve().parent.parent / "results"
N_PROMPTS, CHUNK, SEED, DISCOVERY_SEED, DISCOVERY_N = 100, 20, 3, 0, 200
HEADS_PER_FORWARD = 10
TASKS = {"ioi": ioi, "greater_than": greater_than, "docstring": docstring}
DEFAULT_TASKS = ("ioi", "greater_than")
FULL = {"n_prompts": N_PROMPTS, "chunk": CHUNK, "heads": None}
SMOKE = {"n_prompts": 4, "chunk": 4, "heads": 9}  # heads: layer 0's instead of all


@contextmanager
def shared_cpu(lock: Path | None):
    """Hold a shared lock on ``lock`` while a chunk runs (lets timed jobs elsewhere on the machine wait
    for a quiet CPU between chunks); no-op without a path."""
    if lock is None:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def encode(tok, task: Task) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    clean = [tok.encode(p) for p in task.clean]
    corrupted = [tok.encode(p) for p in task.corrupted]
    T = max(len(s) for s in clean)
    c, lengths = pad_sequences(clean, tok.pad_id, pad_to=T)
    x, lengths_x = pad_sequences(corrupted, tok.pad_id, pad_to=T)
    if not np.array_equal(lengths, lengths_x):
        raise RuntimeError("clean and corrupted prompts must tokenize to the same lengths for patching")
    return c, x, lengths


def run_task(model, tok, name: str, partial: dict, save, lock: Path | None, size: dict = FULL) -> dict:
    n_prompts, chunk = size["n_prompts"], size["chunk"]
    task = held_out(tok, TASKS[name], n_prompts, SEED, ((DISCOVERY_SEED, DISCOVERY_N),))
    clean, corrupted, lengths = encode(tok, task)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    masks = jnp.asarray(single_head_masks(L, H)[: size["heads"]])
    done = {k: partial[k] for k in partial if k.startswith(f"{name}/")}
    seconds = float(partial.get(f"{name}.seconds", 0.0))
    for s in tqdm(range(0, n_prompts, chunk), desc=f"{name}: patching {len(masks)} heads", unit="chunk"):
        if f"{name}/{s}/patched" in done:
            continue
        rows = slice(s, s + chunk)
        with shared_cpu(lock):
            t0 = time.perf_counter()
            args = (jnp.asarray(lengths[rows]), jnp.asarray(task.correct[rows]), jnp.asarray(task.incorrect[rows]))

            def metric(tokens, _args=args):
                logits, _ = forward(model, jnp.asarray(tokens), lengths=_args[0], logits="last")
                return np.asarray(task_metric(logits, _args[1], _args[2], task.metric))

            _, cache = forward(
                model, jnp.asarray(corrupted[rows]), hooks=capture("result"), lengths=args[0], logits=False
            )
            patched = metrics_with_heads_replaced(
                model, jnp.asarray(clean[rows]), *args, masks, cache["result"], task.metric, HEADS_PER_FORWARD
            )
            done[f"{name}/{s}/patched"] = np.asarray(patched).T  # [chunk, L*H]
            done[f"{name}/{s}/clean"] = metric(clean[rows])
            done[f"{name}/{s}/corrupted"] = metric(corrupted[rows])
            seconds += time.perf_counter() - t0
        save({**done, f"{name}.seconds": np.asarray(seconds)})
    starts = range(0, n_prompts, chunk)
    eff = patching_effects(
        np.concatenate([done[f"{name}/{s}/clean"] for s in starts]),
        np.concatenate([done[f"{name}/{s}/corrupted"] for s in starts]),
        np.concatenate([done[f"{name}/{s}/patched"] for s in starts]),
    )
    return {
        "task": name,
        "n_prompts": eff.n_prompts,
        "prompt_seed": SEED,
        "metric": task.metric,
        "metric_clean": eff.metric_clean,
        "metric_corrupted": eff.metric_corrupted,
        "effect": eff.effect.tolist(),
        "stderr": eff.stderr.tolist(),
        "reference_top10": np.flatnonzero(eff.top_fraction(0.1)).tolist(),
        "certain_2se": np.flatnonzero(eff.certain(2.0)).tolist(),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> Path:
    """Run the experiment (``argv`` as on the command line, default ``sys.argv``); returns the JSON written."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lock", type=Path, default=None, help="hold a shared flock on this file during each chunk")
    ap.add_argument(
        "--tasks",
        nargs="+",
        choices=tuple(TASKS),
        default=list(DEFAULT_TASKS),
        help="tasks to patch (default: %(default)s); tasks already in the JSON and not named are kept",
    )
    ap.add_argument(
        "--smoke", action="store_true", help="check that it runs: IOI, 4 prompts, 9 heads, temporary folder"
    )
    args = ap.parse_args(argv)
    size, tasks = (SMOKE, ["ioi"]) if args.smoke else (FULL, args.tasks)
    out = Path(tempfile.mkdtemp(prefix="jsae-circuits-reference-smoke-")) if args.smoke else OUT
    model, tok, _ = load("smollm2-135m")
    partial_path = out / "circuits_reference.partial.npz"
    partial = dict(np.load(partial_path)) if partial_path.exists() else {}
    if partial:
        print(f"resuming from {partial_path} ({len(partial)} arrays)")
    store = dict(partial)

    def save(arrays):
        store.update(arrays)
        tmp = partial_path.with_suffix(".tmp.npz")
        np.savez(tmp, **store)
        tmp.replace(partial_path)

    path = out / "circuits_reference.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    results = {name: kept[name] for name in TASKS if name in kept and name not in tasks}
    results.update({name: run_task(model, tok, name, store, save, args.lock, size) for name in tasks})
    results["settings"] = {
        "model": "smollm2-135m",
        "smoke": args.smoke,
        "n_prompts": size["n_prompts"],
        "prompt_seed": SEED,
        "held_out_from": f"seed {DISCOVERY_SEED}, {DISCOVERY_N} prompts",
        "chunk": size["chunk"],
        "point": "result, every position, patched from the corrupted prompt",
        "reference": "top 10% of heads by |effect|; certain_2se: |effect| >= 2 standard errors",
    }
    write_json(path, results)
    print(f"wrote {path}")
    for name in tasks:
        r = results[name]
        print(f"{name}: {r['n_prompts']} prompts, {len(r['certain_2se'])} heads certain at 2 se, {r['seconds']:.0f} s")
    return path


if __name__ == "__main__":
    main()
