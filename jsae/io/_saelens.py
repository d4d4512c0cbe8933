"""SAELens format: a directory with ``cfg.json`` + ``sae_weights.safetensors`` (safetensors and JSON only).

Each architecture's record (``jsae.sae.Architecture``) says how it converts: ``to_saelens``
gives the SAELens architecture name, tensors and extra cfg keys; ``saelens_reads`` names the SAELens
architectures it reads with their tensors, and ``from_saelens`` builds the module. jsae's records (SAELens
6.x names; ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``):

==========  ==========================================  =====================================
SAELens     tensors                                     jsae module
==========  ==========================================  =====================================
standard    W_enc b_enc W_dec b_dec                     :class:`jsae.sae.ReLUSAE`
topk        W_enc b_enc W_dec b_dec (cfg ``k``)         :class:`jsae.sae.TopKSAE`
jumprelu    W_enc b_enc W_dec b_dec threshold           :class:`jsae.sae.JumpReLUSAE` (Gemma Scope)
gated       W_enc b_gate b_mag r_mag W_dec b_dec        :class:`jsae.sae.GatedSAE` (b_gate = b_enc)
==========  ==========================================  =====================================

Older files store ``log_threshold`` (read as ``exp``), TopK files may set
``rescale_acts_by_decoder_norm`` (folded into the weights on load: W_enc, b_enc times the decoder row
norms, W_dec divided by them; encodings and reconstructions are unchanged). jsae's BatchTopK and
Matryoshka SAEs save as ``jumprelu`` (their inference rule, as SAELens does). The hook is
``metadata.hook_name`` (6.x) or a top-level ``hook_name`` / ``hook_point`` (older files);
:func:`parse_hook_name` maps TransformerLens names such as ``blocks.6.hook_resid_post`` to jsae's
``(layer, point)``.

A stack of N SAEs saves as N directories ``root/sae_000 ... root/sae_{N-1}`` and loads back from them
(or from any list of directories with the same architecture and shapes).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jsae.sae import SAE, concat, n_saes, registry, unstack

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SAELENS_VERSION = "6.0.0"  # the cfg.json layout written here (metadata block, architecture key)
NORMALISATIONS_OK = ("none", "expected_average_only_in")
RESIDUAL_POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")  # blocks.<l>.hook_<point>
HEAD_POINTS = ("z", "result")  # blocks.<l>.attn.hook_<point>: per-head activations [.., n_heads, d]
_HOOK_RE = re.compile(
    r"^blocks\.(\d+)\.(?:hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)|attn\.hook_(z|result))$"
)


class SAELensFormatError(ValueError):
    """A SAELens directory is missing files, has unexpected tensors, or disagrees with its cfg.json."""


def parse_hook_name(name: str) -> tuple[int, str]:
    """TransformerLens hook name -> jsae's ``(layer, point)``.

    ``"blocks.6.hook_resid_post"`` -> ``(6, "resid_post")``; ``"blocks.3.attn.hook_z"`` -> ``(3, "z")``,
    ``"blocks.3.attn.hook_result"`` -> ``(3, "result")`` (per-head points live under ``attn.``, as in
    TransformerLens; a per-head SAE names its head in ``hook_head_index``).
    """
    m = _HOOK_RE.match(name or "")
    if m is None:
        raise SAELensFormatError(
            f"hook name {name!r} is not one jsae can splice; expected blocks.<layer>.hook_<point> with point in "
            f"{', '.join(RESIDUAL_POINTS)}, or blocks.<layer>.attn.hook_<z|result>"
        )
    return int(m.group(1)), m.group(2) or m.group(3)


def hook_name(layer: int, point: str) -> str:
    """TransformerLens hook name of jsae's ``(layer, point)`` (inverse of :func:`parse_hook_name`):
    ``blocks.{layer}.attn.hook_z`` / ``.attn.hook_result`` for the per-head points, else
    ``blocks.{layer}.hook_{point}`` (``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``)."""
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
        raise SAELensFormatError(f"hook layer must be a non-negative integer, got {layer!r}")
    if point not in RESIDUAL_POINTS + HEAD_POINTS:
        raise SAELensFormatError(
            f"hook point {point!r} has no SAELens hook name; choose one of {', '.join(RESIDUAL_POINTS + HEAD_POINTS)}"
        )
    return f"blocks.{int(layer)}.attn.hook_{point}" if point in HEAD_POINTS else f"blocks.{int(layer)}.hook_{point}"


# ---------------------------------------------------------------------------------------------------
# save


def _architecture_and_tensors(sae: SAE) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """SAELens architecture name, tensors and extra cfg keys of one (unstacked) SAE (its record's
    ``to_saelens``)."""
    try:
        record = registry.of(sae)
    except TypeError as e:
        raise SAELensFormatError(f"cannot save a {type(sae).__name__} in the SAELens format: {e}") from None
    if record.to_saelens is None:
        raise SAELensFormatError(
            f"the {record.name!r} architecture has no SAELens form (its record's to_saelens is None)"
        )
    return record.to_saelens(sae)


def save_saelens(
    sae: SAE,
    path: str | Path,
    *,
    hook_name: str | None = None,
    model_name: str | None = None,
    hook_head_index: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write one SAE (no leading stack axis) as ``path/cfg.json`` + ``path/sae_weights.safetensors``.

    hook_name: TransformerLens-style hook (e.g. :func:`hook_name` ``(6, "resid_post")``), stored in
      ``metadata.hook_name`` as SAELens 6 does; ``hook_head_index`` for per-head SAEs.
    Returns the directory.
    """
    from safetensors.numpy import save_file

    if sae.W_enc.ndim != 2:
        raise SAELensFormatError(
            f"save_saelens takes one SAE (W_enc [d_in, d_sae]); got W_enc {tuple(sae.W_enc.shape)}: "
            "use save_saelens_stack for a stack"
        )
    arch, tensors, extra = _architecture_and_tensors(sae)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in tensors.items()}
    save_file(arrays, str(path / WEIGHTS_FILENAME))
    meta = {
        "sae_lens_version": SAELENS_VERSION,
        "sae_lens_training_version": SAELENS_VERSION,
        "hook_name": hook_name,
        "model_name": model_name,
        "hook_head_index": hook_head_index,
        "trained_with": "jsae",
        **(metadata or {}),
    }
    # an SAE on all heads of hook_z reads them flattened ([.., n_heads, d_head] -> [.., n_heads * d_head]), which
    # SAELens does itself when reshape_activations is "hook_z"; a per-head SAE (hook_head_index) reads one head
    all_heads_z = hook_name is not None and hook_name.endswith(".attn.hook_z") and hook_head_index is None
    cfg = {
        "architecture": arch,
        "d_in": int(sae.d_in),
        "d_sae": int(sae.d_sae),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if all_heads_z else "none",
        **extra,
        "metadata": meta,
    }
    (path / CFG_FILENAME).write_text(json.dumps(cfg, indent=2, allow_nan=False))
    return path


def save_saelens_stack(
    stack: SAE,
    root: str | Path,
    *,
    hook_names: str | Sequence[str | None] | None = None,
    model_name: str | None = None,
    hook_head_indices: Sequence[int | None] | None = None,
) -> list[Path]:
    """Write a stack of N SAEs as ``root/sae_000 ... root/sae_{N-1}`` (one SAELens directory each).

    hook_names: one hook for all SAEs, or one per SAE. hook_head_indices: one per SAE (or None).
    """
    n = n_saes(stack)
    names = [hook_names] * n if hook_names is None or isinstance(hook_names, str) else list(hook_names)
    heads = [None] * n if hook_head_indices is None else list(hook_head_indices)
    if len(names) != n or len(heads) != n:
        raise SAELensFormatError(
            f"a stack of {n} SAEs needs {n} hook names and head indices, got {len(names)} and {len(heads)}"
        )
    width = max(3, len(str(n - 1)))
    return [
        save_saelens(
            s, Path(root) / f"sae_{i:0{width}d}", hook_name=names[i], model_name=model_name, hook_head_index=heads[i]
        )
        for i, s in enumerate(unstack(stack))
    ]


# ---------------------------------------------------------------------------------------------------
# load


def read_cfg(path: str | Path) -> dict[str, Any]:
    """``cfg.json`` of a SAELens directory, with ``hook_name``/``model_name``/``hook_head_index`` lifted
    from ``metadata`` (6.x) or renamed from older keys (``hook_point``)."""
    path = Path(path)
    if not path.is_dir():
        raise SAELensFormatError(
            f"{path} is not a directory; a SAELens SAE is a folder with {CFG_FILENAME} and {WEIGHTS_FILENAME}"
        )
    cfg_path = path / CFG_FILENAME
    if not cfg_path.is_file():
        raise SAELensFormatError(
            f"{path} has no {CFG_FILENAME}; a SAELens SAE folder holds {CFG_FILENAME} and {WEIGHTS_FILENAME}"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise SAELensFormatError(f"{cfg_path} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise SAELensFormatError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
    meta = cfg.get("metadata") or {}
    out: dict[str, Any] = {**cfg, "path": str(path)}
    for key, old in (("hook_name", "hook_point"), ("model_name", None), ("hook_head_index", "hook_point_head_index")):
        out[key] = meta.get(key, cfg.get(key, cfg.get(old) if old else None))
    arch = cfg.get("architecture")
    if arch is None:  # pre-6.0 files: standard unless the activation says topk
        kwargs = cfg.get("activation_fn_kwargs") or {}
        arch = (
            "topk" if cfg.get("activation_fn", cfg.get("activation_fn_str")) == "topk" and "k" in kwargs else "standard"
        )
        if arch == "topk":
            out["k"] = kwargs["k"]
    out["architecture"] = arch
    norm = cfg.get("normalize_activations", "none")
    if norm is None or norm is False:  # pre-6.0 files stored a bool
        norm = "none"
    elif norm is True:
        norm = "expected_average_only_in"
    out["normalize_activations"] = norm
    return out


def _read_tensors(path: Path) -> dict[str, jax.Array]:
    from safetensors import safe_open

    weights = path / WEIGHTS_FILENAME
    if not weights.is_file():
        raise SAELensFormatError(f"{path} has no {WEIGHTS_FILENAME}")
    try:
        with safe_open(str(weights), framework="flax") as f:
            return {k: jnp.asarray(f.get_tensor(k), jnp.float32) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise SAELensFormatError(f"cannot read {weights}: {e}") from e


def _int_field(cfg: dict, key: str, path: Path) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SAELensFormatError(f"{path / CFG_FILENAME}: {key} must be a positive integer, got {v!r}")
    return v


def _check_tensors(
    arch: str, spec: dict[str, tuple[str, ...]], t: dict[str, jax.Array], d_in: int, d_sae: int, path: Path
) -> None:
    """``t`` holds exactly the tensors of ``spec`` (name -> dims) with the shapes cfg.json implies."""
    if "log_threshold" in t and "threshold" in spec and "threshold" not in t:  # older SAELens files
        t["threshold"] = jnp.exp(t.pop("log_threshold"))
    if "scaling_factor" in t:  # SAELens drops an all-ones finetuning scale and refuses any other
        if not bool(jnp.all(t["scaling_factor"] == 1.0)):
            raise SAELensFormatError(f"{path}: a finetuning scaling_factor other than 1 is not supported")
        del t["scaling_factor"]
    missing = [k for k in spec if k not in t]
    if missing:
        raise SAELensFormatError(
            f"{path / WEIGHTS_FILENAME} lacks {', '.join(missing)} needed by a {arch!r} SAE "
            f"(it has {', '.join(sorted(t)) or 'no tensors'})"
        )
    extra = sorted(set(t) - set(spec))
    if extra:
        raise SAELensFormatError(
            f"{path / WEIGHTS_FILENAME} has tensors {', '.join(extra)} that a {arch!r} SAE "
            f"does not use; is cfg.json's architecture right?"
        )
    sizes = {"d_in": d_in, "d_sae": d_sae}
    for k, dims in spec.items():
        want = tuple(sizes[d] for d in dims)
        if tuple(t[k].shape) != want:
            raise SAELensFormatError(
                f"{path}: {k} has shape {tuple(t[k].shape)} but cfg.json (d_in={d_in}, d_sae={d_sae}) needs {want}"
            )


def load_saelens(path: str | Path) -> tuple[SAE, dict[str, Any]]:
    """Read a SAELens directory: ``(sae, cfg)`` with ``sae`` a jsae module (no stack axis).

    ``cfg`` is cfg.json with ``architecture``, ``hook_name``, ``model_name``, ``hook_head_index`` and the
    directory (``path``) at the top level. Raises :class:`SAELensFormatError` for a missing file or tensor, a tensor
    whose shape
    disagrees with ``d_in``/``d_sae``, an unknown architecture or an unsupported normalisation.
    """
    path = Path(path)
    cfg = read_cfg(path)
    arch = cfg["architecture"]
    record = registry.reading_saelens(arch)
    if record is None or record.from_saelens is None:
        raise SAELensFormatError(
            f"{path / CFG_FILENAME}: architecture {arch!r} is not supported; jsae reads "
            f"{', '.join(registry.saelens_names())}"
        )
    d_in, d_sae = _int_field(cfg, "d_in", path), _int_field(cfg, "d_sae", path)
    norm = cfg["normalize_activations"]
    if norm not in NORMALISATIONS_OK:
        raise SAELensFormatError(
            f"{path / CFG_FILENAME}: normalize_activations={norm!r} is a run-time "
            f"normalisation jsae does not implement; supported: {', '.join(NORMALISATIONS_OK)}"
        )
    if norm == "expected_average_only_in":
        warnings.warn(
            f"{path}: normalize_activations='expected_average_only_in' -- the SAE expects inputs "
            "scaled by its training scale factor (not stored in the SAE); fold it with sae.fold_scale(c)",
            stacklevel=2,
        )
    t = _read_tensors(path)
    _check_tensors(arch, dict(record.saelens_reads[arch]), t, d_in, d_sae, path)
    try:
        sae = record.from_saelens(arch, t, cfg)
    except ValueError as e:
        raise SAELensFormatError(f"{path / CFG_FILENAME}: {e}") from e
    return sae, cfg


def _stack_dirs(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        root = Path(paths)
        if (root / CFG_FILENAME).is_file():
            return [root]
        dirs = sorted(p for p in root.iterdir() if (p / CFG_FILENAME).is_file()) if root.is_dir() else []
        if not dirs:
            raise SAELensFormatError(f"{root} holds no SAELens SAE (no {CFG_FILENAME} in it or its subfolders)")
        return dirs
    dirs = [Path(p) for p in paths]
    if not dirs:
        raise SAELensFormatError("load_saelens_stack got an empty list of directories")
    return dirs


def load_saelens_stack(paths: str | Path | Sequence[str | Path]) -> tuple[SAE, list[dict[str, Any]]]:
    """N SAELens directories -> one jsae stack ``[N, ...]`` and their N cfgs.

    paths: a list of SAE directories, or one folder whose subfolders (sorted by name) are SAEs, as
      written by :func:`save_saelens_stack`. All must share architecture, d_in, d_sae and static
      settings (k, apply_b_dec_to_input).
    """
    dirs = _stack_dirs(paths)
    loaded = [load_saelens(d) for d in dirs]
    first_sae, first_cfg = loaded[0]
    for d, (sae, cfg) in zip(dirs[1:], loaded[1:]):
        same = (
            type(sae) is type(first_sae)
            and sae.W_enc.shape == first_sae.W_enc.shape
            and jax.tree.structure(sae) == jax.tree.structure(first_sae)
        )
        if not same:
            raise SAELensFormatError(
                f"{d} ({cfg['architecture']}, d_in {sae.d_in}, d_sae {sae.d_sae}, k {cfg.get('k')}) cannot join a "
                f"stack with {dirs[0]} ({first_cfg['architecture']}, d_in {first_sae.d_in}, d_sae {first_sae.d_sae}, "
                f"k {first_cfg.get('k')}): a stack needs one architecture and one shape"
            )
    return concat([s for s, _ in loaded]), [c for _, c in loaded]
