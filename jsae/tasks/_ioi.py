"""Indirect object identification (Wang et al. 2022, "Interpretability in the Wild", arXiv:2211.00593).

Clean: ``"Then, Mary and John went to the store. John gave a drink to"`` -> `` Mary`` (the indirect
object, IO); the subject (S, ``John``) is repeated. Templates come in two orders, ABBA (IO first) and
BABA (S first). Negatives use Wang et al.'s ABC corruption: the first-clause names are replaced by two
other names, so the sentence no longer says who the indirect object is. Metric: logit(IO) - logit(S).

Names, places and objects are filtered to the ones that are a single token (with a leading space) for
the tokenizer at hand, so clean and corrupted prompts tokenize to the same length.
"""

from __future__ import annotations

import numpy as np

from jsae.tasks._base import Task, pad_answers, single_token_id, single_tokens, token_ids

NAMES = (
    "Mary John Tom James Dan Sarah Anna Paul Kate Mike Alice Bob Emma Jack Lisa Mark David Laura Peter "
    "Susan Chris Ryan Amy Steve Rachel Eric Helen Kevin Linda Adam Jane Brian Emily Frank Grace Henry "
    "Julia Sam Lucy George Rose Tim Martin Jessica Andrew Sophie Joe Nick Ben Matt Alex Jennifer Victoria "
    "Daniel Michael Robert William Richard Thomas Charles Joseph Anthony Edward Jason Jeff Scott Gary"
).split()
PLACES = "store park school house station office hospital restaurant garden beach library market church".split()
OBJECTS = "drink ball book ring bone kiss computer basketball necklace snack bag hat letter phone key".split()

# {A} = indirect object (answer), {B} = subject, {S} = the repeated subject (B in clean prompts).
# ABBA: A first; BABA: B first.
TEMPLATES_ABBA = (
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "Then, {A} and {B} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave it to",
)
TEMPLATES_BABA = tuple(t.replace("{A} and {B}", "{B} and {A}", 1) for t in TEMPLATES_ABBA)


def ioi(tokenizer, n: int, *, seed: int = 0, order: str = "mixed") -> Task:
    """``n`` IOI prompts for ``tokenizer`` (jsae or ``tokenizers``), ABBA/BABA and their ABC corruptions.

    order: ``"ABBA"``, ``"BABA"`` or ``"mixed"`` (alternating).
    Returns a :class:`Task` with ``correct = [[IO]]``, ``incorrect = [[S]]``, metric ``logit_diff``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if order not in ("ABBA", "BABA", "mixed"):
        raise ValueError(f"order must be 'ABBA', 'BABA' or 'mixed', got {order!r}")
    names = single_tokens(tokenizer, NAMES)
    places = single_tokens(tokenizer, PLACES)
    objects = single_tokens(tokenizer, OBJECTS)
    if len(names) < 4 or not places or not objects:
        raise ValueError(
            f"this tokenizer has too few single-token words for IOI: {len(names)} names (need 4), "
            f"{len(places)} places, {len(objects)} objects"
        )
    rng = np.random.default_rng(seed)
    clean, corrupted, correct, incorrect = [], [], [], []
    while len(clean) < n:
        i = len(clean)
        use_abba = order == "ABBA" or (order == "mixed" and i % 2 == 0)
        templates = TEMPLATES_ABBA if use_abba else TEMPLATES_BABA
        template = templates[rng.integers(len(templates))]
        a, b, c, d = rng.choice(names, 4, replace=False)
        place, obj = places[rng.integers(len(places))], objects[rng.integers(len(objects))]
        good = template.format(A=a, B=b, S=b, PLACE=place, OBJECT=obj)
        # ABC: the first clause's names become C and D; the repeated subject stays B
        bad = template.format(A=c, B=d, S=b, PLACE=place, OBJECT=obj)
        if len(token_ids(tokenizer, good)) != len(token_ids(tokenizer, bad)):
            continue  # a name merges with its neighbour for this tokenizer; draw again
        clean.append(good)
        corrupted.append(bad)
        correct.append([single_token_id(tokenizer, " " + a)])
        incorrect.append([single_token_id(tokenizer, " " + b)])
    note = (
        f"{len(names)} single-token names, {len(places)} places, {len(objects)} objects; "
        "negatives: ABC corruption (first-clause names replaced)"
    )
    return Task("ioi", clean, corrupted, pad_answers(correct), pad_answers(incorrect), "logit_diff", note)
