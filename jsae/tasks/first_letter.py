"""The first-letter task (Chanin et al. 2024): does the model know how a token is spelled?

Vocabulary: every token whose text is alphabetic with an optional leading space (``" cat"``, ``"Cat"``;
no byte or punctuation tokens) and that encodes back to itself. Split 80/20 into train/test over
tokens. Each word gets an in-context prompt of ``n_examples`` (10) random *train* words, one per line,
then the target::

    {word} has the first letter: {LETTER}        (x 10, joined by "\\n")
    {target} has the first letter:

The target never appears among its examples. The activation of interest sits at the target word's
token: its position is found from the tokenisation (the token whose character span is the target's),
not from a fixed offset. The answer token is ``" " + LETTER``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import numpy as np

from jsae.models import Tokenizer

LETTERS = string.ascii_uppercase
TEMPLATE = "{word} has the first letter:"
ANSWER = " {letter}"
_ALPHABETIC = re.compile(r" ?[A-Za-z]+")


@dataclass(frozen=True)
class Vocabulary:
    """Alphabetic single tokens: ids [n], texts (with their leading space, if any), letters [n] in 0..25."""

    ids: np.ndarray
    words: tuple[str, ...]
    letters: np.ndarray

    def __len__(self) -> int:
        return len(self.words)

    def subset(self, rows: np.ndarray) -> Vocabulary:
        rows = np.asarray(rows)
        return Vocabulary(self.ids[rows], tuple(self.words[i] for i in rows), self.letters[rows])


@dataclass(frozen=True)
class Prompts:
    """tokens [B, T] right-padded; lengths [B]; word_pos [B] the target word's token; letters [B];
    word_ids [B] the target token ids; texts the prompt strings."""

    tokens: np.ndarray
    lengths: np.ndarray
    word_pos: np.ndarray
    letters: np.ndarray
    word_ids: np.ndarray
    texts: tuple[str, ...]


def first_letter(word: str) -> int:
    """0..25 for the first letter of ``word`` (leading space ignored)."""
    return LETTERS.index(word.lstrip(" ")[0].upper())


def alphabetic_vocabulary(tokenizer: Tokenizer, min_letters: int = 1) -> Vocabulary:
    """Every token whose text matches ``" ?[A-Za-z]+"`` (at least ``min_letters`` letters) and encodes
    back to exactly that one token."""
    backend = tokenizer.backend
    ids, words = [], []
    for i in range(tokenizer.vocab_size):
        s = backend.decode([i], skip_special_tokens=False)
        if _ALPHABETIC.fullmatch(s) and len(s.lstrip(" ")) >= min_letters:
            ids.append(i)
            words.append(s)
    encoded = backend.encode_batch(words, add_special_tokens=False)
    keep = [j for j, e in enumerate(encoded) if e.ids == [ids[j]]]
    if not keep:
        raise ValueError("the tokenizer has no alphabetic single tokens; the first-letter task needs some")
    return Vocabulary(
        np.asarray(ids)[keep],
        tuple(words[j] for j in keep),
        np.asarray([first_letter(words[j]) for j in keep], np.int32),
    )


def train_test_split(vocab: Vocabulary, seed: int = 0, train_fraction: float = 0.8) -> tuple[Vocabulary, Vocabulary]:
    """Random split over tokens (``train_fraction`` for training)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    order = np.random.default_rng(seed).permutation(len(vocab))
    n_train = int(round(train_fraction * len(vocab)))
    return vocab.subset(np.sort(order[:n_train])), vocab.subset(np.sort(order[n_train:]))


def icl_prompt(target: str, examples: list[str]) -> str:
    """The in-context prompt for ``target`` (see the module docstring)."""
    lines = [TEMPLATE.format(word=w) + ANSWER.format(letter=LETTERS[first_letter(w)]) for w in examples]
    return "\n".join(lines + [TEMPLATE.format(word=target)])


def word_token_position(tokenizer: Tokenizer, text: str, target: str) -> tuple[list[int], int]:
    """Token ids of ``text`` (the prompt ending in ``TEMPLATE.format(word=target)``) and the index of
    the token spanning exactly ``target``'s characters; -1 if no token does."""
    start = len(text) - len(TEMPLATE.format(word=target))
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    ids, offsets = list(enc.ids), list(enc.offsets)
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        ids, offsets = [tokenizer.bos_id] + ids, [(0, 0)] + offsets
    end = start + len(target)
    for i, (a, b) in enumerate(offsets):
        if b == end and a <= start + (1 if target.startswith(" ") else 0):
            return ids, i
    return ids, -1


def build_prompts(
    tokenizer: Tokenizer,
    targets: Vocabulary,
    example_pool: Vocabulary,
    *,
    n_examples: int = 10,
    seed: int = 0,
    pad_multiple: int = 8,
) -> Prompts:
    """ICL prompts for every target word (examples drawn from ``example_pool``, never the target).

    Targets whose token cannot be located in the prompt's tokenisation, or is not the target's own
    token id, are dropped (rare: a merge across the line break).
    """
    if len(example_pool) <= n_examples:
        raise ValueError(f"the example pool holds {len(example_pool)} words; need more than n_examples={n_examples}")
    rng = np.random.default_rng(seed)
    seqs, pos, letters, word_ids, texts = [], [], [], [], []
    for tid, word, letter in zip(targets.ids, targets.words, targets.letters):
        picks = rng.choice(len(example_pool), n_examples + 1, replace=False)
        examples = [example_pool.words[j] for j in picks if example_pool.ids[j] != tid][:n_examples]
        text = icl_prompt(word, examples)
        ids, i = word_token_position(tokenizer, text, word)
        if i < 0 or ids[i] != tid:
            continue
        seqs.append(ids)
        pos.append(i)
        letters.append(letter)
        word_ids.append(tid)
        texts.append(text)
    if not seqs:
        raise ValueError("no prompt could be built: the target words were not found in their tokenisation")
    lengths = np.array([len(s) for s in seqs], np.int32)
    T = int(-(-lengths.max() // pad_multiple) * pad_multiple)
    tokens = np.full((len(seqs), T), tokenizer.pad_id, np.int32)
    for r, s in enumerate(seqs):
        tokens[r, : len(s)] = s
    return Prompts(
        tokens,
        lengths,
        np.asarray(pos, np.int32),
        np.asarray(letters, np.int32),
        np.asarray(word_ids, np.int32),
        tuple(texts),
    )


def answer_token_ids(tokenizer: Tokenizer) -> np.ndarray:
    """[26] token ids of ``" A" .. " Z"`` (each must be one token)."""
    return np.asarray([tokenizer.token_id(ANSWER.format(letter=c)) for c in LETTERS], np.int32)
