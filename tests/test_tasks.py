"""Task generators give valid prompts for SmolLM2's tokenizer and for a GPT-2-style byte-level BPE.

GPT-2's own tokenizer.json cannot be downloaded here, so the GPT-2-style tokenizer is a byte-level BPE
(GPT-2's pre-tokenizer regex, two-digit number tokens) trained in a fraction of a second on the task
vocabularies, numbers and the stdlib source of ``argparse``.
"""

from __future__ import annotations

import importlib
import inspect
import re

import numpy as np
import pytest

from jsae.tasks import docstring, greater_than, ioi, predicts_correctly, task_metric, token_ids

ioi_mod = importlib.import_module("jsae.tasks._ioi")
gt_mod = importlib.import_module("jsae.tasks._greater_than")
doc_mod = importlib.import_module("jsae.tasks._docstring")


@pytest.fixture(scope="module")
def gpt2_style():
    import argparse

    from tokenizers import ByteLevelBPETokenizer

    words = ioi_mod.NAMES + ioi_mod.PLACES + ioi_mod.OBJECTS + gt_mod.NOUNS + doc_mod.WORDS
    corpus = [" ".join(words)] * 50 + [f"from {y} to {y % 100:02d}" for y in range(1000, 2000)]
    corpus += [" ".join(f"{i:02d}" for i in range(100))] * 20 + [inspect.getsource(argparse)]
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(corpus, vocab_size=3000, min_frequency=2, show_progress=False)
    return tok


@pytest.fixture(params=["smollm2", "gpt2_style"])
def tokenizer(request):
    if request.param == "smollm2":
        return request.getfixturevalue("smollm2")[1]
    return request.getfixturevalue("gpt2_style")


def _decode(tok, i):
    backend = getattr(tok, "backend", tok)
    return backend.decode([int(i)])


def _same_lengths(tok, task):
    for good, bad in zip(task.clean, task.corrupted):
        assert len(token_ids(tok, good)) == len(token_ids(tok, bad)), (good, bad)


def test_ioi_prompts_are_valid(tokenizer):
    task = ioi(tokenizer, 24, seed=3)
    assert len(task) == 24 and task.metric == "logit_diff"
    _same_lengths(tokenizer, task)
    for good, bad, io, s in zip(task.clean, task.corrupted, task.correct[:, 0], task.incorrect[:, 0]):
        io_name, s_name = _decode(tokenizer, io).strip(), _decode(tokenizer, s).strip()
        words = re.findall(r"[A-Z][a-z]+", good)
        assert words.count(io_name) == 1 and words.count(s_name) == 2  # IO once, subject twice
        assert io_name not in re.findall(r"[A-Z][a-z]+", bad)  # ABC: the answer is gone
        assert bad.split(",")[-1] == good.split(",")[-1] or bad.split(".")[-1] == good.split(".")[-1]
    orders = [
        good.index(_decode(tokenizer, io).strip()) < good.index(_decode(tokenizer, s).strip())
        for good, io, s in zip(task.clean, task.correct[:, 0], task.incorrect[:, 0])
    ]
    assert any(orders) and not all(orders)  # ABBA and BABA both present


def test_greater_than_prompts_are_valid(tokenizer):
    task = greater_than(tokenizer, 16, seed=2)
    _same_lengths(tokenizer, task)
    two_digit = gt_mod.tokenization(tokenizer) == "two_digit"
    for good, bad, corr, inc in zip(task.clean, task.corrupted, task.correct, task.incorrect):
        start = re.search(r"year (\d{4}) to", good).group(1)
        assert re.search(r"year (\d{4}) to", bad).group(1) == start[:2] + "01"
        assert good.endswith(start[:2])
        right = [int(_decode(tokenizer, i)) for i in corr if i >= 0]
        wrong = [int(_decode(tokenizer, i)) for i in inc if i >= 0]
        yy = int(start[2:])
        if two_digit:  # the next token is the two-digit end
            assert sorted(right + wrong) == list(range(100)) and min(right) == yy + 1
        else:  # the next token is the tens digit; start years end in 9
            assert yy % 10 == 9 and sorted(right + wrong) == list(range(10)) and min(right) == yy // 10 + 1


def test_docstring_prompts_are_valid(tokenizer):
    task = docstring(tokenizer, 12, seed=1)
    _same_lengths(tokenizer, task)
    for good, bad, corr in zip(task.clean, task.corrupted, task.correct[:, 0]):
        answer = _decode(tokenizer, corr).strip()
        args = re.search(r"\(self, (.*)\):", good).group(1).split(", ")
        documented = re.findall(r":param (\w+):", good)
        assert args[: len(documented)] == documented and answer == args[len(documented)]
        assert answer not in bad.split("\n")[0] and good.endswith(":param")


def test_bad_inputs():
    with pytest.raises(ValueError, match="n must be"):
        ioi(None, 0)


def test_task_metric_and_correctness_hand_computed():
    logits = np.log(np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
    correct = np.array([[1, -1], [1, 2]])
    incorrect = np.array([[0, 2], [0, -1]])
    np.testing.assert_allclose(task_metric(logits, correct, incorrect, "prob_diff"), [0.6 - 0.4, 0.5 - 0.5], atol=1e-6)
    ld = task_metric(logits, correct, incorrect, "logit_diff")
    np.testing.assert_allclose(
        ld, [np.log(0.6) - (np.log(0.1) + np.log(0.3)) / 2, (np.log(0.2) + np.log(0.3)) / 2 - np.log(0.5)], atol=1e-6
    )
    np.testing.assert_array_equal(predicts_correctly(logits, correct), [True, False])


def test_sample_is_deterministic_nested_and_keeps_pairs():
    from jsae.tasks import Task

    n = 30
    clean = [f"clean {i}" for i in range(n)]
    task = Task(
        "t", clean, [f"corrupted {i}" for i in range(n)], np.arange(n)[:, None], -np.ones((n, 1), int), "logit_diff"
    )
    a, b = task.sample(10, seed=4), task.sample(10, seed=4)
    assert a.clean == b.clean and len(set(a.clean)) == 10
    assert task.sample(5, seed=4).clean == a.clean[:5]  # nested in n under one seed
    assert task.sample(10, seed=5).clean != a.clean
    for c, x, r in zip(a.clean, a.corrupted, a.correct[:, 0]):
        assert c.split()[1] == x.split()[1] == str(r)
    with pytest.raises(ValueError, match="choose n in 1..30"):
        task.sample(31, seed=0)


def test_held_out_prompts_avoid_every_excluded_draw(tokenizer):
    from jsae.tasks import held_out

    exclude = ((0, 60), (3, 40))
    task = held_out(tokenizer, ioi, 10, 4, exclude)
    seen = {p for s, m in exclude for p in ioi(tokenizer, m, seed=s).clean}
    draw = ioi(tokenizer, 40, seed=4).clean  # brute force: the first 10 of the seed-4 draw outside `seen`
    assert list(task.clean) == [p for p in draw if p not in seen][:10]
    with pytest.raises(ValueError, match="outside the excluded draws"):
        held_out(tokenizer, ioi, 10, 0, ((0, 40),))  # a draw that is its own exclusion has no prompt left
