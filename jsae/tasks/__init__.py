"""Prompt generators for circuit tasks (IOI, greater-than, docstring), for any tokenizer."""

from jsae.tasks.base import Task, predicts_correctly, task_metric
from jsae.tasks.docstring import docstring
from jsae.tasks.greater_than import greater_than
from jsae.tasks.ioi import ioi

TASKS = {"ioi": ioi, "greater_than": greater_than, "docstring": docstring}

__all__ = ["TASKS", "Task", "docstring", "greater_than", "ioi", "predicts_correctly", "task_metric"]
