"""Max-activating examples: the contexts in a token stream where a latent fires most, activating token marked.

>>> tokens, lengths = contexts_from_stream(stream, context=64)
>>> examples = max_activating_examples(model, tok, sae, tokens, lengths, latents=[7, 42], layer=6)
>>> print(examples[7][0].text)      # "... the «cat» sat ..."
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Int

from jsae.analysis._evals import SPLICE_POINTS, hook_width, sae_input
from jsae.models import Tokenizer, Transformer, capture, forward, map_batches, split_tokens
from jsae.sae import SAE


@dataclasses.dataclass(frozen=True)
class ActivatingExample:
    """One context: latent ``latent`` fired with ``activation`` at ``tokens[sequence, position]``."""

    latent: int
    activation: float
    sequence: int
    position: int
    text: str  # the context window, the activating token between the markers


def contexts_from_stream(stream: Sequence[int] | np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a 1-D token stream ``[n]`` into ``tokens [ceil(n / context), context]`` + ``lengths`` (last row
    right-padded with 0)."""
    stream = np.asarray(stream, np.int32).reshape(-1)
    if stream.size == 0 or context < 1:
        raise ValueError(f"need a non-empty stream and context >= 1, got {stream.size} tokens, context={context}")
    rows = -(-stream.size // context)
    tokens = np.zeros((rows, context), np.int32)
    tokens.reshape(-1)[: stream.size] = stream
    lengths = np.full(rows, context, np.int32)
    lengths[-1] = stream.size - (rows - 1) * context
    return tokens, lengths


@eqx.filter_jit
def _encode_at_hook(model, tokens, lengths, *, sae, latents, layer: int, point: str, head):
    _, cache = forward(model, tokens, hooks=capture(point), lengths=lengths, logits=False)
    return sae.encode(sae_input(cache[point][layer], head))[..., latents]


def latent_activations(
    model: Transformer,
    sae: SAE,
    tokens: Int[np.ndarray, "S T"],
    lengths: Int[np.ndarray, " S"] | None = None,
    *,
    latents: Sequence[int],
    layer: int,
    point: str = "resid_post",
    head: int | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """Activations ``[S, T, len(latents)]`` of one SAE's chosen latents at its hook (0 past each length)."""
    if sae.W_enc.ndim != 2:
        raise ValueError("latent_activations takes one SAE; pick one from a stack with jsae.sae.index(stack, i)")
    wanted = np.asarray(latents, np.int32).reshape(-1)
    if wanted.size == 0 or wanted.min() < 0 or wanted.max() >= sae.d_sae:
        raise ValueError(f"latents must be in 0..{sae.d_sae - 1}, got {wanted.tolist()}")
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{model.cfg.n_layers - 1}")
    if point not in SPLICE_POINTS:
        raise ValueError(f"cannot read an SAE's input at {point!r}; choose one of {', '.join(SPLICE_POINTS)}")
    want = hook_width(model.cfg, point, head is not None)
    if sae.d_in != want:
        raise ValueError(f"the SAE reads d_in={sae.d_in} but {point!r} has width {want} in this model")
    tokens = np.asarray(tokens, np.int32)
    S, T = tokens.shape
    lengths = np.full(S, T, np.int32) if lengths is None else np.asarray(lengths, np.int32)
    head_arr = None if head is None else jnp.asarray(head, jnp.int32)
    fn = functools.partial(
        _encode_at_hook, sae=sae, latents=jnp.asarray(wanted), layer=layer, point=point, head=head_arr
    )
    # every bucket padded to T: one compilation, as for a fixed-length batch
    flat = map_batches(fn, model, tokens, lengths, batch_size=batch_size, pad_multiple=T, per_token=True)
    return split_tokens(np.asarray(flat, np.float32), lengths, pad_to=T)


def top_positions(acts: np.ndarray, lengths: np.ndarray, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` largest entries of ``acts [S, T]`` among real positions: ``[(sequence, position, value)]``,
    largest first (only positive activations: a latent that never fires gives an empty list)."""
    acts = np.asarray(acts, np.float64)
    masked = np.where(np.arange(acts.shape[1])[None, :] < np.asarray(lengths)[:, None], acts, -np.inf)
    flat = masked.reshape(-1)
    k = min(k, flat.size)
    top = np.argpartition(-flat, k - 1)[:k]
    top = top[np.argsort(-flat[top], kind="stable")]
    return [(int(j // acts.shape[1]), int(j % acts.shape[1]), float(flat[j])) for j in top if flat[j] > 0]


def format_context(
    tokenizer: Tokenizer,
    row: np.ndarray,
    position: int,
    length: int,
    *,
    left: int = 12,
    right: int = 4,
    marker: tuple[str, str] = ("«", "»"),
) -> str:
    """Text of ``row[position-left : position+right+1]`` with the token at ``position`` between markers."""
    lo, hi = max(0, position - left), min(length, position + right + 1)
    before = tokenizer.decode(row[lo:position]) if position > lo else ""
    after = tokenizer.decode(row[position + 1 : hi]) if hi > position + 1 else ""
    return f"{before}{marker[0]}{tokenizer.decode(row[position : position + 1])}{marker[1]}{after}"


def max_activating_examples(
    model: Transformer,
    tokenizer: Tokenizer,
    sae: SAE,
    tokens: np.ndarray,
    lengths: np.ndarray | None = None,
    *,
    latents: Sequence[int],
    layer: int,
    point: str = "resid_post",
    head: int | None = None,
    k: int = 10,
    left: int = 12,
    right: int = 4,
    batch_size: int = 8,
) -> dict[int, list[ActivatingExample]]:
    """For each latent, its top-``k`` contexts in ``tokens [S, T]`` (largest activation first)."""
    tokens = np.asarray(tokens, np.int32)
    lengths = np.full(tokens.shape[0], tokens.shape[1], np.int32) if lengths is None else np.asarray(lengths, np.int32)
    acts = latent_activations(
        model, sae, tokens, lengths, latents=latents, layer=layer, point=point, head=head, batch_size=batch_size
    )
    return {
        int(lat): [
            ActivatingExample(
                int(lat), v, s, t, format_context(tokenizer, tokens[s], t, int(lengths[s]), left=left, right=right)
            )
            for s, t, v in top_positions(acts[..., j], lengths, k)
        ]
        for j, lat in enumerate(latents)
    }
