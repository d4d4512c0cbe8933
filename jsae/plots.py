"""Figures for run directories, drawn without pyplot (no global backend switch, so notebooks keep their
inline plots): :func:`figure` gives a ``matplotlib.figure.Figure``, :func:`save` writes it as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def figure(width: float = 5.0, height: float = 4.0, ncols: int = 1):
    """A new ``(Figure, axes)``; ``axes`` is one Axes for ``ncols=1``, else an array of them."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, ncols)


def save(fig, path: str | Path, dpi: int = 120) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return Path(path)


def grouped_bars(path: str | Path, groups: list[str], series: dict[str, list[float | None]], *, ylabel: str,
                 title: str = "", log: bool = False) -> Path:
    """Bar chart: one cluster per group, one bar per series (``None`` values are left out)."""
    fig, ax = figure(1.6 + 1.4 * len(groups), 4.0)
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        v = np.array([np.nan if a is None else a for a in values], float)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, v, width, label=name)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)
