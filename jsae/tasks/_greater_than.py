"""Greater-than (Hanna, Liu & Variengien 2023, "How does GPT-2 compute greater-than?", arXiv:2305.00586).

Clean: ``"The war lasted from the year 1732 to the year 17"``; a model that knows the end comes after
the start puts its probability on end years above 32. Negatives: the start year ends in ``01``
(``"... from the year 1701 to the year 17"``), which tells nothing about which end years are valid.
Metric: probability of the valid continuations minus probability of the invalid ones.

Two tokenizations, chosen automatically:
  * **two-digit tokens** (GPT-2): the next token is the two-digit end ``YY'``; correct = ``YY' > YY``,
    incorrect = ``YY' <= YY`` (ACDC's variant of Hanna et al.'s metric), start years 1102..1798 whose
    ``" XXYY"`` splits as ``[" XX", "YY"]``.
  * **one digit per token** (SmolLM2, Llama 3 style): the next token is only the *tens* digit of the
    end year. So that a tens digit alone decides validity, the start year always ends in 9
    (``YY = 10 t + 9``, t = 1..8): an end year is later iff its tens digit is > t. Correct = digits
    ``t+1..9``, incorrect = digits ``0..t``. Everything else is as in Hanna et al.
"""

from __future__ import annotations

import numpy as np

from jsae.tasks._base import Task, pad_answers, single_token_id, token_ids

NOUNS = (
    "war accord affair agreement assessment attack campaign case challenge clash coma competition "
    "conflict construction contract cooperation custody deal decline development dispute dynasty effort "
    "expedition journey kingdom marriage negotiation operation outbreak plague project quest reign "
    "relationship riot rivalry rule siege study tour treaty trial trip voyage war work"
).split()
TEMPLATE = "The {noun} lasted from the year {start} to the year {century}"
CENTURIES = tuple(range(11, 18))


def tokenization(tokenizer) -> str:
    """``"two_digit"`` if ``"32"`` is one token that ends ``" 1732"``, ``"digits"`` if digits are split."""
    two = single_token_id(tokenizer, "32")
    if two is not None and token_ids(tokenizer, " 1732")[-1:] == [two]:
        return "two_digit"
    if all(single_token_id(tokenizer, str(d)) is not None for d in range(10)) and token_ids(tokenizer, " 1732")[
        -2:
    ] == [single_token_id(tokenizer, "3"), single_token_id(tokenizer, "2")]:
        return "digits"
    raise ValueError(
        "greater-than needs years that split into a two-digit token or into single digits; "
        f"this tokenizer splits ' 1732' as {token_ids(tokenizer, ' 1732')}"
    )


def greater_than(tokenizer, n: int, *, seed: int = 0) -> Task:
    """``n`` greater-than prompts and their ``XX01`` corruptions for ``tokenizer``; metric ``prob_diff``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    mode = tokenization(tokenizer)
    rng = np.random.default_rng(seed)
    clean, corrupted, correct, incorrect = [], [], [], []
    two: dict[int, int | None] = {}
    if mode == "two_digit":
        two = {yy: single_token_id(tokenizer, f"{yy:02d}") for yy in range(100)}
        if any(v is None for v in two.values()):
            raise ValueError("a two-digit number 00..99 is not a single token for this tokenizer")
    digit = {d: single_token_id(tokenizer, str(d)) for d in range(10)}
    tries = 0
    while len(clean) < n:
        tries += 1
        if tries > 100 * n:
            raise ValueError("could not build greater-than prompts whose clean and corrupted forms tokenize alike")
        noun = NOUNS[rng.integers(len(NOUNS))]
        cc = int(CENTURIES[rng.integers(len(CENTURIES))])
        if mode == "two_digit":
            yy = int(rng.integers(2, 99))
            good_ids = [two[y] for y in range(yy + 1, 100)]
            bad_ids = [two[y] for y in range(0, yy + 1)]
        else:
            tens = int(rng.integers(1, 9))
            yy = 10 * tens + 9
            good_ids = [digit[d] for d in range(tens + 1, 10)]
            bad_ids = [digit[d] for d in range(0, tens + 1)]
        good = TEMPLATE.format(noun=noun, start=f"{cc}{yy:02d}", century=cc)
        bad = TEMPLATE.format(noun=noun, start=f"{cc}01", century=cc)
        if len(token_ids(tokenizer, good)) != len(token_ids(tokenizer, bad)):
            continue
        clean.append(good)
        corrupted.append(bad)
        correct.append(good_ids)
        incorrect.append(bad_ids)
    note = (
        "two-digit year tokens (Hanna et al.): next token YY', correct YY' > YY"
        if mode == "two_digit"
        else "digits are single tokens: the next token is the end year's tens digit; start years end in 9 "
        "(YY = 10t+9) so tens digit > t <=> later year; correct = digits > t, incorrect = digits <= t"
    )
    return Task("greater_than", clean, corrupted, pad_answers(correct), pad_answers(incorrect), "prob_diff", note)
