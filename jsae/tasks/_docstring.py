"""Docstring (Heimersheim & Janiak 2023, "A circuit for Python docstrings in a 4-layer attention-only
transformer", Alignment Forum).

Clean: a function whose docstring documents its parameters in order; the prompt stops at the next
``:param`` and the model should name the next argument from the ``def`` line::

    def port(self, load, size, files, last):
        \"\"\"oil column piece

        :param load: crime population
        :param size: unit dark
        :param            -> " files"

Negatives: the ``def`` line's argument names are replaced by random other names (Heimersheim &
Janiak's "random def" corruption), so the docstring no longer says which name comes next.
Metric: logit of the right name minus the mean logit of the other ``def`` arguments.
All names and words are single tokens (with a leading space) for the tokenizer at hand.
"""

from __future__ import annotations

import numpy as np

from jsae.tasks._base import Task, pad_answers, single_token_id, single_tokens, token_ids

WORDS = (
    "load size files last port file data user name value key item text line page node mode type path "
    "state model image input output result index count shape order group table field color source target "
    "token label query score window event message number option config level limit range scale width "
    "height offset format style block frame point state step time rate price money crime population unit "
    "dark oil column piece task job role host port code test case list map tree root child parent"
).split()
N_ARGS = 4  # arguments after self; the prompt documents the first two and asks for the third


def docstring(tokenizer, n: int, *, seed: int = 0) -> Task:
    """``n`` docstring prompts and their random-def corruptions for ``tokenizer``; metric ``logit_diff``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words = list(dict.fromkeys(single_tokens(tokenizer, WORDS)))
    if len(words) < 2 * N_ARGS + 6:
        raise ValueError(f"this tokenizer has only {len(words)} single-token words for the docstring task")
    rng = np.random.default_rng(seed)
    clean, corrupted, correct, incorrect = [], [], [], []
    tries = 0
    while len(clean) < n:
        tries += 1
        if tries > 100 * n:
            raise ValueError("could not build docstring prompts whose clean and corrupted forms tokenize alike")
        picks = list(rng.choice(words, 2 * N_ARGS + 6, replace=False))
        fn, args, other = picks[0], picks[1 : 1 + N_ARGS], picks[1 + N_ARGS : 1 + 2 * N_ARGS]
        desc = picks[1 + 2 * N_ARGS :]
        body = (
            f'    """{desc[0]} {desc[1]}\n\n'
            f"    :param {args[0]}: {desc[2]} {desc[3]}\n"
            f"    :param {args[1]}: {desc[4]}\n"
            f"    :param"
        )
        good = f"def {fn}(self, {', '.join(args)}):\n" + body
        bad = f"def {fn}(self, {', '.join(other)}):\n" + body
        if len(token_ids(tokenizer, good)) != len(token_ids(tokenizer, bad)):
            continue
        ids = {w: single_token_id(tokenizer, " " + w) for w in args}
        clean.append(good)
        corrupted.append(bad)
        correct.append([ids[args[2]]])
        incorrect.append([ids[args[0]], ids[args[1]], ids[args[3]]])
    note = f"{len(words)} single-token words; negatives: every argument name in the def line replaced (random def)"
    return Task("docstring", clean, corrupted, pad_answers(correct), pad_answers(incorrect), "logit_diff", note)
