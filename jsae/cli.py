"""The ``jsae`` command line. Every subcommand writes a run directory (config, JSON, PNG plots).

Each subcommand lives in ``jsae/commands/<name>.py`` (listed in ``jsae.commands.__all__``) with two
functions: ``register(subparsers)`` adds its parser (with ``--help`` text for every option) and ``run(args)``
does the work. Errors the user can
fix (ValueError and its kin) print as one line plus what to do, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import jsae.commands

COMMANDS = tuple(jsae.commands.__all__)


def _parser() -> tuple[argparse.ArgumentParser, dict]:
    ap = argparse.ArgumentParser(prog="jsae", description="Sparse autoencoders for interpretability, in JAX.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name in COMMANDS:
        module = importlib.import_module(f"jsae.commands.{name.replace('-', '_')}")
        module.register(sub)
        modules[name] = module
    return ap, modules


def main(argv: list[str] | None = None) -> int:
    from jsae.runtime import prepare_process

    prepare_process()  # one CPU device per core, persistent compilation cache
    ap, modules = _parser()
    args = ap.parse_args(argv)
    try:
        modules[args.command].run(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:  # CheckpointError, ModelError are ValueErrors
        print(f"jsae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jsae {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
