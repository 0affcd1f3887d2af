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
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
