"""The ``jsae`` subcommands, one public module each with ``register(subparsers)`` and ``run(args)``; jsae.cli
imports them by name, in this order. Helpers they share are private modules."""

__all__ = ["demo", "train", "cache", "circuits", "absorption", "eval", "bench", "plan", "browse"]
