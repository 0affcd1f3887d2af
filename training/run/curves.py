"""Training curves as a PNG: a row of panels against steps, drawn headless (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def panels(count: int, width_in: float) -> tuple[Any, Any]:
    """(figure, axes) of `count` panels in a row, `width_in` inches wide, 4 high."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, count, figsize=(width_in, 4))


def save(fig: Any, axes: Any, titles: tuple[str, ...], xlabel: str, png_path: Path) -> None:
    """Title, label and legend every panel, write the PNG and free the figure."""
    import matplotlib.pyplot as plt

    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        legend(ax, fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


def legend(ax: Any, **kwargs: Any) -> None:
    """`ax.legend(**kwargs)` when the panel has a labelled artist. An empty panel (a tiny run with no record of
    that kind yet, a report without that row) gets none: matplotlib would log "No artists with labels found to
    put in legend"."""
    if ax.get_legend_handles_labels()[1]:
        ax.legend(**kwargs)
