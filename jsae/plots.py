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


def grouped_bars(
    path: str | Path,
    groups: list[str],
    series: dict[str, list[float | None]],
    *,
    ylabel: str,
    title: str = "",
    log: bool = False,
) -> Path:
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


def band_curves(
    path: str | Path, steps: np.ndarray, panels: dict[str, np.ndarray | None], *, xlabel: str = "step", title: str = ""
) -> Path:
    """One row of panels, one per entry of ``panels``: the mean over SAEs of a ``[n_points, N]`` history
    against ``steps [n_points]``, with the band between the smallest and largest SAE shaded.

    A ``None`` entry draws an empty panel that says the quantity was not recorded; non-finite values
    are left out of the mean and the band.
    """
    steps = np.asarray(steps, float)
    fig, axes = figure(3.6 * len(panels), 3.2, ncols=len(panels))
    for ax, (name, values) in zip(np.atleast_1d(axes), panels.items()):
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if values is None:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
            continue
        v = np.asarray(values, float).reshape(len(steps), -1)
        v = np.where(np.isfinite(v), v, np.nan)
        ok = ~np.all(np.isnan(v), axis=1)
        lo, hi = np.nanmin(v[ok], axis=1), np.nanmax(v[ok], axis=1)
        ax.fill_between(steps[ok], lo, hi, alpha=0.25, linewidth=0, label=f"min-max of {v.shape[1]} SAEs")
        ax.plot(steps[ok], np.nanmean(v[ok], axis=1), marker="." if ok.sum() < 30 else None, label="mean")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def line_panels(
    path: str | Path,
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]],
    *,
    xlabel: str,
    ylabel: str,
    xlog: bool = False,
    hline: float | None = None,
    title: str = "",
) -> Path:
    """One row of panels; each panel a set of named series ``(x, y, yerr or None)`` drawn as lines with
    markers (and error bars where given). ``xlog`` uses a symlog x axis (so x = 0 stays on the plot);
    ``hline`` draws a dotted reference level."""
    from matplotlib import colormaps

    fig, axes = figure(4.6 * len(panels), 3.8, ncols=len(panels))
    for ax, (name, series) in zip(np.atleast_1d(axes), panels.items()):
        # qualitative maps are ListedColormaps (with .colors); the stubs type the lookup as Colormap
        palette = colormaps["tab10" if len(series) <= 10 else "tab20"].colors  # pyright: ignore[reportAttributeAccessIssue]  # tab10/tab20 are ListedColormaps; the stubs say Colormap
        for i, (label, (x, y, err)) in enumerate(series.items()):
            color = palette[i % len(palette)]
            if err is None:
                ax.plot(x, y, marker=".", label=label, color=color)
            else:
                ax.errorbar(x, y, yerr=err, marker=".", capsize=2, label=label, color=color)
        if hline is not None:
            ax.axhline(hline, linestyle=":", color="gray")
        if xlog:
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlim(left=0)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save(fig, path)
