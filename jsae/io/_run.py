"""Run directories of trained SAE stacks: what ``jsae train`` writes, ``jsae eval`` reads and SAELens loads.

::

    run_dir/
      config.json              the run's configuration, as given
      metrics.json             the history per chunk (steps; for each metric the per-SAE values and their
                               mean, min and max over SAEs) and the final per-SAE metrics
      curves.png               loss, L0, explained variance and dead fraction against step (mean over SAEs,
                               shaded band from the smallest to the largest SAE)
      sae_stack.safetensors    every array of the stack with its leading [N] axis, in its own dtype
      sae_stack.json           architecture, class, static fields, what each SAE reads (``inputs``), model
                               name and the SAELens folder of each SAE; written last, so a run directory
                               without it is an incomplete save
      saes/sae_000_layer3_z_head0/ ...
                               one SAELens 6.x folder per SAE (cfg.json + sae_weights.safetensors) with
                               metadata.hook_name (TransformerLens name), hook_head_index, model_name;
                               normalize_activations is "none": the weights read raw activations

``inputs[i]`` says what SAE i reads: ``{"layer": l, "point": p, "head": h}`` with ``p`` one of
``resid_pre resid_mid resid_post attn_out mlp_out`` (``head`` None) or the per-head ``z``/``result``
(``head`` the head, or None for all heads flattened, SAELens' ``hook_z`` style). ``{"layer": None,
"point": None, "head": None}`` means "unknown activations" (e.g. trained from a ``.npy`` file); those SAEs
are saved without a hook name and ``jsae eval`` asks for ``--layer``/``--hook``.

:func:`load_run` reads the stacked file back bit for bit (same class, static fields and arrays).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from jsae.io._saelens import HEAD_POINTS, RESIDUAL_POINTS, hook_name, save_saelens
from jsae.sae import SAE, n_saes, registry

STACK_WEIGHTS = "sae_stack.safetensors"
STACK_JSON = "sae_stack.json"
CONFIG_JSON = "config.json"
METRICS_JSON = "metrics.json"
CURVES_PNG = "curves.png"
SAES_DIR = "saes"
FORMAT = "jsae-sae-stack"
FORMAT_VERSION = 1
UNKNOWN_INPUT = {"layer": None, "point": None, "head": None}
CURVE_PANELS = {
    "loss": "loss",
    "L0": "l0",
    "explained variance": "explained_variance",
    "dead fraction": "dead_fraction",
}


class RunFormatError(ValueError):
    """A run directory is incomplete, was written by something else, or disagrees with itself."""


# ---------------------------------------------------------------------------------------------------
# inputs: what each SAE reads


def normalise_inputs(inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]], n: int) -> list[dict[str, Any]]:
    """``inputs`` (one dict for all N SAEs, or N dicts) checked and completed to N dicts with
    ``layer``, ``point`` and ``head`` (missing keys are None; further keys are kept as given)."""
    items = [inputs] * n if isinstance(inputs, Mapping) else list(inputs)
    if len(items) != n:
        raise RunFormatError(
            f"inputs has {len(items)} entries for a stack of {n} SAEs; give one dict per SAE "
            "(or one dict shared by all)"
        )
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise RunFormatError(
                f"inputs[{i}] is a {type(item).__name__}; expected a dict like {{'layer': 3, 'point': 'z', 'head': 5}}"
            )
        d = {**UNKNOWN_INPUT, **item}
        layer, point, head = d["layer"], d["point"], d["head"]
        for key, v in (("layer", layer), ("head", head)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
                raise RunFormatError(f"inputs[{i}]['{key}'] must be a non-negative integer or None, got {v!r}")
        if point is not None and point not in RESIDUAL_POINTS + HEAD_POINTS:
            raise RunFormatError(
                f"inputs[{i}]['point'] is {point!r}; choose one of "
                f"{', '.join(RESIDUAL_POINTS + HEAD_POINTS)} (or None for unknown activations)"
            )
        if head is not None and point not in HEAD_POINTS:
            raise RunFormatError(
                f"inputs[{i}] names head {head} but point {point!r} has no heads; heads apply to "
                f"{' and '.join(HEAD_POINTS)}"
            )
        if point is not None and layer is None:
            raise RunFormatError(f"inputs[{i}] names point {point!r} but no layer")
        d.update(layer=None if layer is None else int(layer), head=None if head is None else int(head))
        out.append(d)
    return out


def input_hook_name(inp: Mapping[str, Any]) -> str | None:
    """TransformerLens hook name of one input (None for unknown activations)."""
    return None if inp.get("point") is None else hook_name(inp["layer"], inp["point"])


def input_label(inp: Mapping[str, Any]) -> str:
    """Short name of one input: ``layer3_z_head5``, ``layer6_resid_post``, or ``unknown``."""
    if inp.get("point") is None:
        return "unknown"
    head = "" if inp.get("head") is None else f"_head{inp['head']}"
    return f"layer{inp['layer']}_{inp['point']}{head}"


# ---------------------------------------------------------------------------------------------------
# run directories and the one JSON writer


def new_run_dir(root: str | Path, name: str) -> Path:
    """``root/<name>-YYYYmmdd-HHMMSS`` (suffixed ``-1``, ``-2``, ... if it exists), created."""
    base = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    path.mkdir(parents=True)
    return path


def to_jsonable(x: Any) -> Any:
    """Plain JSON values: mappings to dicts (keys as strings), tuples and arrays (numpy, jax, numpy scalars) to
    lists and numbers, dataclasses through their ``to_json()`` (else their fields), paths to strings, and
    NaN/inf to ``None`` -- strict JSON has neither, so a missing or undefined number reads back as null."""
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array, np.generic)):
        return to_jsonable(np.asarray(x).tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        to_json = getattr(x, "to_json", None)
        return to_jsonable(to_json() if callable(to_json) else dataclasses.asdict(x))
    if isinstance(x, Path):
        return str(x)
    return x


def _dumps(x: Any, indent: int = 0) -> str:
    """JSON with objects indented and lists of numbers (or of such lists) kept on one line each; strict
    (``allow_nan=False``): a NaN or inf that reached here is an error, never invalid JSON in a file."""
    pad = "  " * (indent + 1)
    if isinstance(x, dict) and x:
        items = (f"{pad}{json.dumps(k)}: {_dumps(v, indent + 1)}" for k, v in x.items())
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(x, list) and any(isinstance(v, dict) for v in x):
        return "[\n" + ",\n".join(pad + _dumps(v, indent + 1) for v in x) + "\n" + "  " * indent + "]"
    return json.dumps(x, allow_nan=False, default=str)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (through :func:`to_jsonable`: NaN/inf become null) to ``path``; returns it.
    The one JSON writer of run directories, results and experiments."""
    path = Path(path)
    path.write_text(_dumps(to_jsonable(obj)) + "\n")
    return path


def _tuples(x: Any) -> Any:
    """JSON lists back to the tuples equinox static fields hold (e.g. Matryoshka's prefixes)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


# ---------------------------------------------------------------------------------------------------
# architecture record


def _architecture(sae: SAE) -> str:
    """The registry name of a stack's architecture (its record, ``jsae.sae.registry.of``)."""
    try:
        return registry.of(sae).name
    except TypeError as e:
        raise RunFormatError(f"save_run saves registered architectures ({', '.join(registry.names())}): {e}") from None


def _fields(cls) -> tuple[list[str], list[str]]:
    """Names of a module class's array fields and of its static fields."""
    fields = dataclasses.fields(cls)
    return (
        [f.name for f in fields if not f.metadata.get("static", False)],
        [f.name for f in fields if f.metadata.get("static", False)],
    )


def _host(a) -> np.ndarray | jax.Array:
    """A whole array on this host (gathered across processes when the stack is sharded over hosts)."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(a, tiled=True)
    return jax.device_get(a)


# ---------------------------------------------------------------------------------------------------
# metrics


def _history_json(history: Mapping[str, np.ndarray], n: int) -> dict[str, Any]:
    if "step" not in history:
        raise RunFormatError("history lacks 'step' (the step at each chunk's end), as in TrainResult.history")
    steps = np.asarray(history["step"])
    if steps.ndim != 1:
        raise RunFormatError(f"history['step'] has shape {steps.shape}; expected [n_chunks]")
    out = {}
    for name, v in history.items():
        if name == "step":
            continue
        v = np.asarray(v, np.float64)
        if v.ndim < 2 or v.shape[:2] != (len(steps), n):
            raise RunFormatError(
                f"history[{name!r}] has shape {v.shape}; expected [n_chunks={len(steps)}, N={n}] "
                "(one value per chunk and SAE, as in TrainResult.history)"
            )
        finite = np.where(np.isfinite(v), v, np.nan)
        with warnings.catch_warnings():  # an all-NaN chunk gives null in the JSON, which is right
            warnings.simplefilter("ignore", RuntimeWarning)
            out[name] = {
                "mean": np.nanmean(finite, axis=1),
                "min": np.nanmin(finite, axis=1),
                "max": np.nanmax(finite, axis=1),
                "per_sae": v,
            }
    return {"steps": steps, "history": out}


def _final_json(metrics: Mapping[str, np.ndarray], n: int) -> dict[str, Any]:
    out = {}
    for name, v in metrics.items():
        v = np.asarray(v, np.float64)
        if v.ndim < 1 or v.shape[0] != n:
            raise RunFormatError(f"metrics[{name!r}] has shape {v.shape}; expected [N={n}] (one value per SAE)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[name] = {"mean": np.nanmean(np.where(np.isfinite(v), v, np.nan), axis=0), "per_sae": v}
    return out


def _plot_curves(path: Path, history: Mapping[str, np.ndarray], n: int, arch: str) -> None:
    from jsae.plots import band_curves

    panels = {title: history.get(key) for title, key in CURVE_PANELS.items()}
    band_curves(path, np.asarray(history["step"]), panels, title=f"{n} {arch} SAEs")


# ---------------------------------------------------------------------------------------------------
# save / load


def save_run(
    run_dir: str | Path,
    sae_stack: SAE,
    *,
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    model_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    history: Mapping[str, np.ndarray] | None = None,
    metrics: Mapping[str, np.ndarray] | None = None,
    sae_metadata: Mapping[str, Any] | None = None,
    input_scale: np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a trained stack of N SAEs as a run directory (module docstring); returns ``run_dir``.

    sae_stack: N SAEs of any jsae architecture (leading axis N), reading raw activations
      (``TrainResult.sae`` is: the trainer folds its input normalisation back into the weights).
    inputs: what each SAE reads, N dicts ``{"layer", "point", "head"}`` or one shared by all
      (``{"layer": None, "point": None, "head": None}`` for unknown activations).
    model_name: the model the activations came from (a name or path ``jsae.models.load`` accepts).
    config: the run's configuration, written as ``config.json`` as given (a TrainConfig is converted).
    history: ``TrainResult.history`` (``step [n_chunks]`` and ``[n_chunks, N]`` per metric);
      metrics: ``TrainResult.metrics`` (``[N]`` per metric). Without a history no ``curves.png`` is drawn.
    sae_metadata: extra keys for every SAELens ``cfg.json`` metadata block (e.g. ``context_size``,
      ``prepend_bos``, ``dataset_path``).
    input_scale: ``[N]`` factors c, only for a stack trained on ``c * x`` whose weights do not yet
      include them: they are folded in (``sae.fold_scale(c)``) before anything is written.
    overwrite: replace a run already saved in ``run_dir`` (its SAELens folders are removed first).

    In a multi-host run every process must call it (a stack sharded over hosts is gathered); only
    process 0 writes.
    """
    n = n_saes(sae_stack)
    arch = _architecture(sae_stack)
    cls = type(sae_stack)
    array_names, static_names = _fields(cls)
    inputs = normalise_inputs(inputs, n)
    if input_scale is not None:
        c = np.asarray(input_scale, np.float32)
        if c.shape != (n,) or not np.all(np.isfinite(c)) or np.any(c <= 0):
            raise RunFormatError(f"input_scale must be {n} positive finite factors, got {c!r}")
        sae_stack = eqx.filter_vmap(lambda s, ci: s.fold_scale(ci))(sae_stack, jax.numpy.asarray(c))
    history_json = None if history is None else _history_json(history, n)
    final_json = None if metrics is None else _final_json(metrics, n)
    host = jax.tree.map(_host, sae_stack)
    if jax.process_index() != 0:
        return Path(run_dir)

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    old = run_dir / STACK_JSON
    if old.exists():
        if not overwrite:
            raise RunFormatError(
                f"{run_dir} already holds a saved run ({STACK_JSON}); choose a new directory or pass overwrite=True"
            )
        _remove_saved(run_dir)
    write_json(run_dir / CONFIG_JSON, {} if config is None else config)
    if history_json is not None or final_json is not None:
        write_json(
            run_dir / METRICS_JSON,
            {"n_saes": n, **(history_json or {"steps": [], "history": {}}), "final": final_json or {}},
        )
    if history is not None and len(np.asarray(history["step"])):
        _plot_curves(run_dir / CURVES_PNG, history, n, arch)

    width = max(3, len(str(n - 1)))
    dirs = []
    for i, inp in enumerate(inputs):
        d = Path(SAES_DIR) / f"sae_{i:0{width}d}_{input_label(inp)}"
        one = jax.tree.map(lambda a, i=i: a[i], host)
        save_saelens(
            one,
            run_dir / d,
            hook_name=input_hook_name(inp),
            model_name=model_name,
            hook_head_index=inp["head"],
            metadata={**(sae_metadata or {}), "jsae_stack_index": i},
        )
        dirs.append(str(d))

    from safetensors.flax import save_file

    arrays = {name: jax.numpy.asarray(getattr(host, name)) for name in array_names}
    save_file(arrays, str(run_dir / STACK_WEIGHTS), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
    record = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": arch,
        "class": cls.__name__,
        "n_saes": n,
        "d_in": int(sae_stack.d_in),
        "d_sae": int(sae_stack.d_sae),
        "static": {name: getattr(sae_stack, name) for name in static_names},
        "arrays": {name: {"shape": list(arrays[name].shape), "dtype": str(arrays[name].dtype)} for name in array_names},
        "model_name": model_name,
        "inputs": inputs,
        "saelens_dirs": dirs,
    }
    write_json(run_dir / STACK_JSON, record)
    return run_dir


def _remove_saved(run_dir: Path) -> None:
    """Remove what an earlier :func:`save_run` wrote into ``run_dir`` (only the files it lists)."""
    try:
        old_dirs = json.loads((run_dir / STACK_JSON).read_text()).get("saelens_dirs", [])
    except (json.JSONDecodeError, AttributeError):
        old_dirs = []
    (run_dir / STACK_JSON).unlink()
    root = (run_dir / SAES_DIR).resolve()
    for d in old_dirs:
        p = (run_dir / d).resolve()
        if p.parent == root and p.is_dir():
            shutil.rmtree(p)
    for name in (STACK_WEIGHTS, METRICS_JSON, CURVES_PNG):
        (run_dir / name).unlink(missing_ok=True)


def is_run_dir(path: str | Path) -> bool:
    """True if ``path`` holds a run saved by :func:`save_run` (its ``sae_stack.json``)."""
    return (Path(path) / STACK_JSON).is_file()


def read_run_record(run_dir: str | Path) -> dict[str, Any]:
    """``sae_stack.json`` of a run directory, checked to be one jsae wrote."""
    run_dir = Path(run_dir)
    path = run_dir / STACK_JSON
    if not path.is_file():
        hint = (
            " It holds SAELens folders: load them with jsae.io.load_saelens_stack."
            if (run_dir / SAES_DIR).is_dir()
            else ""
        )
        raise RunFormatError(
            f"{run_dir} is not a complete jsae run directory: no {STACK_JSON} (written last by "
            f"jsae.io.save_run, so the save may have been interrupted).{hint}"
        )
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunFormatError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise RunFormatError(f"{path} was not written by jsae.io.save_run (format is not {FORMAT!r})")
    if record.get("version") != FORMAT_VERSION:
        raise RunFormatError(
            f"{path} has format version {record.get('version')!r}; this jsae reads version "
            f"{FORMAT_VERSION}: upgrade jsae"
        )
    return record


def load_run(run_dir: str | Path) -> tuple[SAE, list[dict[str, Any]], dict[str, Any]]:
    """Read a run directory written by :func:`save_run`: ``(sae_stack, inputs, meta)``.

    sae_stack: the stack as saved (same class, static fields, array dtypes and bits).
    inputs: N dicts ``{"layer", "point", "head", ...}``.
    meta: ``sae_stack.json`` without ``inputs`` (architecture, class, n_saes, d_in, d_sae, static,
      model_name, saelens_dirs), plus ``run_dir`` and ``config`` (config.json, or None if absent).
    """
    from safetensors import safe_open

    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    arch, cls_name = record.get("architecture"), record.get("class")
    known = registry.names()
    if arch not in known or registry.get(str(arch)).cls.__name__ != cls_name:
        raise RunFormatError(
            f"{run_dir / STACK_JSON}: unknown architecture {arch!r} / class {cls_name!r}; registered "
            f"architectures: {', '.join(known)} (register a record with jsae.sae.registry.register first)"
        )
    cls = registry.get(str(arch)).cls
    array_names, static_names = _fields(cls)
    static = record.get("static") or {}
    if sorted(static) != sorted(static_names):
        raise RunFormatError(
            f"{run_dir / STACK_JSON}: static fields {sorted(static)} do not match {cls_name}'s "
            f"{sorted(static_names)}; was it saved by another jsae version?"
        )
    weights = run_dir / STACK_WEIGHTS
    if not weights.is_file():
        raise RunFormatError(f"{run_dir} has {STACK_JSON} but no {STACK_WEIGHTS}")
    try:
        with safe_open(str(weights), framework="flax") as f:
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise RunFormatError(f"cannot read {weights}: {e}") from e
    if sorted(arrays) != sorted(array_names):
        raise RunFormatError(f"{weights} holds {sorted(arrays)} but a {cls_name} needs {sorted(array_names)}")
    n = record.get("n_saes")
    if not isinstance(n, int):
        raise RunFormatError(f"{run_dir / STACK_JSON} has no integer n_saes (got {n!r}); the run is incomplete")
    for name, a in arrays.items():
        want = record.get("arrays", {}).get(name, {})
        if a.ndim < 1 or a.shape[0] != n or list(a.shape) != want.get("shape"):
            raise RunFormatError(
                f"{weights}: {name} has shape {tuple(a.shape)} but {STACK_JSON} says {want.get('shape')} for {n} SAEs"
            )
    sae = cls(**arrays, **{k: _tuples(v) for k, v in static.items()})
    inputs = normalise_inputs(record.get("inputs") or [], n)
    meta = {k: v for k, v in record.items() if k != "inputs"}
    config_path = run_dir / CONFIG_JSON
    meta.update(run_dir=str(run_dir), config=json.loads(config_path.read_text()) if config_path.is_file() else None)
    return sae, inputs, meta
