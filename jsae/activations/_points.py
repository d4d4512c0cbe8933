"""Which activations a stack of SAEs reads: one :class:`HookInput` per SAE.

A stack trains N SAEs of one input width ``d``, so its inputs must agree on ``d``: all heads' ``z``
(``d_head``), or any mix of ``result`` heads and residual-width points (``d_model``).

Spelling (the CLI's ``--points``, ``--heads`` and ``--layers``):

- points: hook point names from :data:`jsae.models.hooks.POINTS` except ``pattern``, comma-separated,
  e.g. ``"z"``, ``"resid_post,mlp_out"``.
- heads (head points ``z``/``result``): ``"all"``, or ``"L.H"`` pairs such as ``"3.5,4.2"``, or
  ``"L.*"`` for every head of layer L.
- layers (residual points): ``"all"`` or a comma-separated list such as ``"3,6,9"``.

SAE ``i`` of the stack reads ``inputs[i]``: head points come layer-major (``l * H + h``, the order of
:func:`jsae.models.harvest`), then the residual points in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from jsae.models import HookError, ModelConfig
from jsae.models.hooks import HEAD_AXIS, POINTS, hook_width

TRAINABLE_POINTS = tuple(p for p in POINTS if p != "pattern")


@dataclass(frozen=True)
class HookInput:
    """One SAE's input: ``point`` at ``layer`` (and ``head`` for per-head points, else None)."""

    layer: int
    point: str
    head: int | None = None

    def to_json(self) -> dict:
        return asdict(self)


def input_width(cfg: ModelConfig, point: str) -> int:
    """Features per token of one input at ``point`` (one head for ``z``/``result``): ``d_head`` for ``z``,
    ``d_model`` for every other point."""
    return hook_width(cfg, point, head_given=True)


def _parse_heads(cfg: ModelConfig, heads: str | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    if not isinstance(heads, str):
        pairs = [(int(layer), int(head)) for layer, head in heads]
    elif heads.strip() == "all":
        pairs = [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    else:
        pairs = []
        for item in (s.strip() for s in heads.split(",") if s.strip()):
            layer_s, _, head_s = item.partition(".")
            try:
                layer = int(layer_s)
                pairs += [(layer, h) for h in range(cfg.n_heads)] if head_s == "*" else [(layer, int(head_s))]
            except ValueError:
                raise HookError(
                    f"cannot read head {item!r}; write heads as 'all', 'L.H' pairs like '3.5,4.2' "
                    "or 'L.*' for every head of layer L"
                ) from None
    for layer, head in pairs:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise HookError(
                f"head {layer}.{head} is out of range: {cfg.name or 'the model'} has layers "
                f"0..{cfg.n_layers - 1} and heads 0..{cfg.n_heads - 1}"
            )
    if len(set(pairs)) != len(pairs):
        raise HookError("a head is listed twice in --heads; give each (layer, head) once")
    return sorted(pairs)


def _parse_layers(cfg: ModelConfig, layers: str | Sequence[int]) -> list[int]:
    if isinstance(layers, str):
        if layers.strip() == "all":
            return list(range(cfg.n_layers))
        try:
            out = [int(s) for s in layers.split(",") if s.strip()]
        except ValueError:
            raise HookError(f"cannot read layers {layers!r}; write 'all' or a list such as '3,6,9'") from None
    else:
        out = [int(x) for x in layers]
    for layer in out:
        if not 0 <= layer < cfg.n_layers:
            raise HookError(f"layer {layer} is out of range: the model has layers 0..{cfg.n_layers - 1}")
    return out


def parse_inputs(
    cfg: ModelConfig,
    points: str | Sequence[str],
    *,
    heads: str | Sequence[tuple[int, int]] = "all",
    layers: str | Sequence[int] = "all",
) -> tuple[HookInput, ...]:
    """The stack's inputs for ``points`` (see the module docstring for the spelling).

    Raises HookError for an unknown point, an out-of-range layer or head, or points of different widths.
    """
    names = [p.strip() for p in points.split(",")] if isinstance(points, str) else [str(p) for p in points]
    names = [p for p in names if p]
    if not names:
        raise HookError(f"no hook point given; choose from {', '.join(TRAINABLE_POINTS)}")
    for p in names:
        if p not in TRAINABLE_POINTS:
            raise HookError(f"unknown hook point {p!r}; SAEs can read {', '.join(TRAINABLE_POINTS)}")
    widths = {p: input_width(cfg, p) for p in names}
    if len(set(widths.values())) > 1:
        raise HookError(
            f"points {names} have different widths {widths}: one stack trains SAEs of one input "
            "width; train z (d_head) and d_model points in separate runs"
        )
    out: list[HookInput] = []
    for p in names:
        if p in HEAD_AXIS:
            out += [HookInput(layer, p, head) for layer, head in _parse_heads(cfg, heads)]
        else:
            out += [HookInput(layer, p) for layer in _parse_layers(cfg, layers)]
    return tuple(out)


def last_layer(inputs: Sequence[HookInput]) -> int:
    """The deepest layer any input reads (the forward can stop after it)."""
    return max(i.layer for i in inputs)
