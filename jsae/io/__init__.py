"""Reading and writing SAEs in formats shared with the PyTorch world (SAELens, Gemma Scope, Neuronpedia), and
run directories of trained stacks (:func:`save_run` / :func:`load_run`)."""

from jsae.io._run import (
    UNKNOWN_INPUT,
    RunFormatError,
    is_run_dir,
    load_run,
    new_run_dir,
    read_run_record,
    save_run,
    to_jsonable,
    write_json,
)
from jsae.io._saelens import (
    HEAD_POINTS,
    RESIDUAL_POINTS,
    SAELensFormatError,
    hook_name,
    load_saelens,
    load_saelens_stack,
    parse_hook_name,
    read_cfg,
    save_saelens,
    save_saelens_stack,
)

__all__ = [
    "HEAD_POINTS",
    "RESIDUAL_POINTS",
    "UNKNOWN_INPUT",
    "RunFormatError",
    "SAELensFormatError",
    "hook_name",
    "is_run_dir",
    "load_run",
    "load_saelens",
    "load_saelens_stack",
    "new_run_dir",
    "parse_hook_name",
    "read_cfg",
    "read_run_record",
    "save_run",
    "save_saelens",
    "save_saelens_stack",
    "to_jsonable",
    "write_json",
]
