"""SAELens format: a directory with ``cfg.json`` + ``sae_weights.safetensors`` (safetensors and JSON only).

Architectures and their tensors (SAELens 6.x names; ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``):

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

from jsae.sae import BatchTopKSAE, GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE, concat, n_saes, to_jumprelu, unstack
from jsae.sae.auxk import resolve_k_aux
from jsae.sae.base import SAE

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
SAELENS_VERSION = "6.0.0"  # the cfg.json layout written here (metadata block, architecture key)
TENSORS: dict[str, tuple[str, ...]] = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"),
}
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


def _architecture_and_tensors(sae: SAE) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """SAELens architecture name, tensors and extra cfg keys of one (unstacked) SAE."""
    if isinstance(sae, BatchTopKSAE):  # also Matryoshka: inference is a JumpReLU with a global threshold
        sae = to_jumprelu(sae)
    base = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if isinstance(sae, JumpReLUSAE):
        return "jumprelu", {**base, "threshold": sae.threshold}, {}
    if isinstance(sae, TopKSAE):
        return "topk", base, {"k": sae.k, "rescale_acts_by_decoder_norm": False}
    if isinstance(sae, GatedSAE):
        tensors = {
            "W_enc": sae.W_enc,
            "b_gate": sae.b_enc,
            "b_mag": sae.b_mag,
            "r_mag": sae.r_mag,
            "W_dec": sae.W_dec,
            "b_dec": sae.b_dec,
        }
        return "gated", tensors, {}
    if isinstance(sae, ReLUSAE):
        return "standard", base, {}
    raise SAELensFormatError(
        f"cannot save a {type(sae).__name__} in the SAELens format; supported: ReLUSAE (standard), TopKSAE, "
        "JumpReLUSAE, GatedSAE, BatchTopKSAE and MatryoshkaSAE (saved as jumprelu)"
    )


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
    (path / CFG_FILENAME).write_text(json.dumps(cfg, indent=2))
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
    out = dict(cfg, path=str(path))
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
            return {k: jnp.asarray(f.get_tensor(k), jnp.float32) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise SAELensFormatError(f"cannot read {weights}: {e}") from e


def _int_field(cfg: dict, key: str, path: Path) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SAELensFormatError(f"{path / CFG_FILENAME}: {key} must be a positive integer, got {v!r}")
    return v


def _check_tensors(arch: str, t: dict[str, jax.Array], d_in: int, d_sae: int, path: Path) -> None:
    expected = TENSORS[arch]
    if "log_threshold" in t and arch == "jumprelu" and "threshold" not in t:
        t["threshold"] = jnp.exp(t.pop("log_threshold"))
    if "scaling_factor" in t:  # SAELens drops an all-ones finetuning scale and refuses any other
        if not bool(jnp.all(t["scaling_factor"] == 1.0)):
            raise SAELensFormatError(f"{path}: a finetuning scaling_factor other than 1 is not supported")
        del t["scaling_factor"]
    missing = [k for k in expected if k not in t]
    if missing:
        raise SAELensFormatError(
            f"{path / WEIGHTS_FILENAME} lacks {', '.join(missing)} needed by a {arch!r} SAE "
            f"(it has {', '.join(sorted(t)) or 'no tensors'})"
        )
    extra = sorted(set(t) - set(expected))
    if extra:
        raise SAELensFormatError(
            f"{path / WEIGHTS_FILENAME} has tensors {', '.join(extra)} that a {arch!r} SAE "
            f"does not use; is cfg.json's architecture right?"
        )
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for k in expected:
        want = shapes.get(k, (d_sae,))
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
    if arch not in ARCHITECTURES:
        raise SAELensFormatError(
            f"{path / CFG_FILENAME}: architecture {arch!r} is not supported; jsae reads {', '.join(ARCHITECTURES)}"
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
    _check_tensors(arch, t, d_in, d_sae, path)
    b_in = bool(cfg.get("apply_b_dec_to_input", True))
    if arch == "standard":
        sae = ReLUSAE(
            W_enc=t["W_enc"],
            b_enc=t["b_enc"],
            W_dec=t["W_dec"],
            b_dec=t["b_dec"],
            apply_b_dec_to_input=b_in,
            unit_norm_decoder=False,
        )
    elif arch == "topk":
        k = _int_field(cfg, "k", path)
        if k > d_sae:
            raise SAELensFormatError(f"{path / CFG_FILENAME}: k={k} exceeds d_sae={d_sae}")
        W_enc, b_enc, W_dec = t["W_enc"], t["b_enc"], t["W_dec"]
        if cfg.get("rescale_acts_by_decoder_norm", False):  # encode scales pre by |W_dec|, decode divides
            norms = jnp.linalg.norm(W_dec, axis=-1)
            W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
        sae = TopKSAE(
            W_enc=W_enc,
            b_enc=b_enc,
            W_dec=W_dec,
            b_dec=t["b_dec"],
            apply_b_dec_to_input=b_in,
            k=k,
            k_aux=resolve_k_aux(None, d_in, d_sae),
        )
    elif arch == "jumprelu":
        if bool(jnp.any(t["threshold"] < 0)):
            raise SAELensFormatError(
                f"{path}: negative JumpReLU thresholds; SAELens then applies a ReLU first, "
                "jsae's JumpReLU assumes threshold >= 0"
            )
        sae = JumpReLUSAE(
            W_enc=t["W_enc"],
            b_enc=t["b_enc"],
            W_dec=t["W_dec"],
            b_dec=t["b_dec"],
            apply_b_dec_to_input=b_in,
            threshold=t["threshold"],
            bandwidth=0.001,
            unit_norm_decoder=False,
            l0_grad_to_pre=True,
        )
    else:
        sae = GatedSAE(
            W_enc=t["W_enc"],
            b_enc=t["b_gate"],
            W_dec=t["W_dec"],
            b_dec=t["b_dec"],
            apply_b_dec_to_input=b_in,
            r_mag=t["r_mag"],
            b_mag=t["b_mag"],
            unit_norm_decoder=False,
        )
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
