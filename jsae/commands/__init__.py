"""The ``jsae`` subcommands, one public module each with ``register(subparsers)`` and ``run(args)``; jsae.cli
imports them by name, in this order. Helpers they share are private modules."""

# modules, imported by name when the command line starts (``import jsae.commands`` imports none of them)
__all__ = ["demo", "train", "cache", "circuits", "absorption", "eval", "bench", "plan", "browse"]  # pyright: ignore[reportUnsupportedDunderAll]
