"""A circuit task: clean and corrupted prompts, answer tokens and the metric that grades a prediction.

Generators (``ioi``, ``greater_than``, ``docstring``) build a :class:`Task` for whatever tokenizer they
are given: every word that has to be one token (names, digits, parameter names) is checked against
that tokenizer, and each corrupted prompt has exactly as many tokens as its clean prompt, so patching
position by position is well defined.

Answer sets are padded ``[n, A]`` integer arrays (``-1`` = padding) so one code path serves a single
answer token (IOI: the indirect object) and a set of them (greater-than: every digit above the start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Metric = Literal["logit_diff", "prob_diff"]


class TokenizerLike(Protocol):
    """Anything with ``encode(text)``: a :class:`jsae.models.Tokenizer` or a ``tokenizers.Tokenizer``."""

    def encode(self, text: str): ...


def token_ids(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` without special tokens (BOS), for jsae and ``tokenizers`` tokenizers alike."""
    backend = getattr(tokenizer, "backend", tokenizer)
    enc = backend.encode(text, add_special_tokens=False) if hasattr(backend, "get_vocab_size") else backend.encode(text)
    return list(enc.ids) if hasattr(enc, "ids") else list(enc)


def single_token_id(tokenizer, text: str) -> int | None:
    """The id of ``text`` if it is exactly one token for ``tokenizer``, else None."""
    ids = token_ids(tokenizer, text)
    return ids[0] if len(ids) == 1 else None


def single_tokens(tokenizer, words: Sequence[str], prefix: str = " ") -> list[str]:
    """The words of ``words`` that are one token with ``prefix`` (default a leading space), in order."""
    return [w for w in words if single_token_id(tokenizer, prefix + w) is not None]


def pad_answers(sets: Sequence[Sequence[int]]) -> np.ndarray:
    """Answer-id sets -> ``[n, A]`` int32 padded with -1."""
    width = max(1, max((len(s) for s in sets), default=1))
    out = np.full((len(sets), width), -1, np.int32)
    for i, s in enumerate(sets):
        out[i, : len(s)] = s
    return out


@dataclass(frozen=True)
class Task:
    """A circuit task for one tokenizer.

    Attributes:
      name: ``"ioi"``, ``"greater_than"`` or ``"docstring"``.
      clean: ``n`` prompts on which the model can predict the answer (next token).
      corrupted: ``n`` prompts of the same token length with the information removed (negatives).
      correct: ``[n, A]`` ids counted as right for each clean prompt (-1 padded).
      incorrect: ``[n, A']`` ids counted as wrong (the metric's baseline; -1 padded).
      metric: ``"logit_diff"`` (mean logit of ``correct`` minus mean logit of ``incorrect``) or
        ``"prob_diff"`` (total probability of ``correct`` minus that of ``incorrect``).
      note: how the task was adapted to this tokenizer (printed and saved with results).
    """

    name: str
    clean: list[str]
    corrupted: list[str]
    correct: np.ndarray
    incorrect: np.ndarray
    metric: Metric
    note: str = ""

    def __post_init__(self):
        n = len(self.clean)
        if n == 0:
            raise ValueError(f"task {self.name!r} has no prompts")
        if len(self.corrupted) != n or self.correct.shape[0] != n or self.incorrect.shape[0] != n:
            raise ValueError(
                f"task {self.name!r}: {n} clean prompts but {len(self.corrupted)} corrupted, "
                f"{self.correct.shape[0]} correct-answer rows and {self.incorrect.shape[0]} incorrect-answer rows"
            )
        if self.metric not in ("logit_diff", "prob_diff"):
            raise ValueError(f"task metric must be 'logit_diff' or 'prob_diff', got {self.metric!r}")
        if (self.correct < 0).all(axis=1).any():
            raise ValueError(f"task {self.name!r}: a prompt has no correct answer token")

    def __len__(self) -> int:
        return len(self.clean)

    def subset(self, idx) -> Task:
        """The prompts at ``idx`` (an index array or boolean mask)."""
        idx = np.arange(len(self))[np.asarray(idx)]
        return Task(
            self.name,
            [self.clean[i] for i in idx],
            [self.corrupted[i] for i in idx],
            self.correct[idx],
            self.incorrect[idx],
            self.metric,
            self.note,
        )

    def sample(self, n: int, seed: int) -> Task:
        """``n`` distinct prompts drawn from this task's prompts by ``np.random.default_rng(seed)`` (each
        clean prompt stays with its own corruption and answers): the same ``(n, seed)`` always gives the
        same prompts, and the draws for growing ``n`` under one seed are nested (a prefix of one
        permutation), so an AUC-against-``n`` curve adds prompts instead of redrawing them."""
        if not 1 <= n <= len(self):
            raise ValueError(f"cannot sample {n} prompts from a task of {len(self)}; choose n in 1..{len(self)}")
        return self.subset(np.random.default_rng(seed).permutation(len(self))[:n])


def _masked_gather(values, ids):
    """``values [n, V]`` at ``ids [n, A]`` (-1 padded) -> (gathered [n, A], mask [n, A])."""
    import jax.numpy as jnp

    mask = ids >= 0
    got = jnp.take_along_axis(values, jnp.where(mask, ids, 0), axis=-1)
    return got, mask


def task_metric(logits, correct, incorrect, metric: Metric):
    """Per-prompt metric from last-position logits ``[n, V]`` -> ``[n]`` (differentiable, jax).

    ``logit_diff``: mean logit over ``correct`` minus mean logit over ``incorrect``.
    ``prob_diff``: probability mass on ``correct`` minus mass on ``incorrect`` (softmax over the vocab).
    """
    import jax
    import jax.numpy as jnp

    values = logits if metric == "logit_diff" else jax.nn.softmax(logits, axis=-1)
    good, gm = _masked_gather(values, jnp.asarray(correct))
    bad, bm = _masked_gather(values, jnp.asarray(incorrect))
    if metric == "logit_diff":
        g = (good * gm).sum(-1) / jnp.maximum(gm.sum(-1), 1)
        b = (bad * bm).sum(-1) / jnp.maximum(bm.sum(-1), 1)
    else:
        g, b = (good * gm).sum(-1), (bad * bm).sum(-1)
    return g - b


def predicts_correctly(logits: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """``[n]`` bool: the top-1 token of each row of ``logits [n, V]`` is in that row's ``correct`` set."""
    top = np.asarray(logits).argmax(-1)
    return (np.asarray(correct) == top[:, None]).any(-1)


def held_out(tokenizer, generator, n: int, seed: int, exclude: Sequence[tuple[int, int]]) -> Task:
    """``n`` prompts of ``generator(tokenizer, 4 n, seed=seed)`` whose clean text is in none of the draws
    ``exclude`` (``(seed, n)`` pairs, e.g. the discovery pool and the reference), in draw order."""
    seen: set = set()
    for s, m in exclude:
        seen |= set(generator(tokenizer, m, seed=s).clean)
    task = generator(tokenizer, 4 * n, seed=seed)
    keep = [i for i, p in enumerate(task.clean) if p not in seen][:n]
    if len(keep) < n:
        raise ValueError(f"only {len(keep)} of {4 * n} prompts of seed {seed} are outside the excluded draws; need {n}")
    return task.subset(np.asarray(keep))
