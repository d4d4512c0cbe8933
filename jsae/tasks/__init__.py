"""Prompt generators for circuit tasks (IOI, greater-than, docstring), for any tokenizer, and the task
metric; :mod:`jsae.tasks.first_letter` builds the first-letter prompts of the absorption metrics.

The generators are functions (``ioi(tokenizer, n, seed=...)`` -> :class:`Task`), implemented in the private
modules ``_ioi``, ``_greater_than`` and ``_docstring``; ``_base`` holds :class:`Task` and the metric.
"""

from jsae.tasks import first_letter
from jsae.tasks._base import (
    Metric,
    Task,
    held_out,
    pad_answers,
    predicts_correctly,
    single_token_id,
    single_tokens,
    task_metric,
    token_ids,
)
from jsae.tasks._docstring import docstring
from jsae.tasks._greater_than import greater_than
from jsae.tasks._ioi import ioi

TASKS = {"ioi": ioi, "greater_than": greater_than, "docstring": docstring}

__all__ = [
    "TASKS",
    "first_letter",
    "Metric",
    "Task",
    "docstring",
    "greater_than",
    "held_out",
    "ioi",
    "pad_answers",
    "predicts_correctly",
    "single_token_id",
    "single_tokens",
    "task_metric",
    "token_ids",
]
