"""The report's plots: AV-Conf and FD-motion per level and method, and the long rollout's drift curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.run.curves import legend


def plot_sync_levels(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = result["methods"]
    names = list(methods)
    num_levels = len(next(iter(methods.values()))["levels"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    width = 0.8 / len(names)
    xs = np.arange(num_levels)
    for k, name in enumerate(names):
        lv = methods[name]["levels"]
        mean = [l["confidence"]["mean"] for l in lv]
        std = [l["confidence"]["std"] for l in lv]
        axes[0].bar(xs + k * width, mean, width, yerr=std, capsize=2, label=name)
        fd = [e["fd"] for e in methods[name]["fd_motion"]]
        axes[1].bar(
            xs + k * width, [v if v is not None and np.isfinite(v) and v > 0 else np.nan for v in fd], width, label=name
        )
    for ax, title in zip(
        axes, ("AV-Conf per level (higher = more in sync)", "FD-motion per level (lower = closer to GT)")
    ):
        ax.set_xticks(xs + 0.4 - width / 2, [f"{int(200 * 2**l)} ms" for l in range(num_levels)])
        ax.set_title(title)
    axes[1].set_yscale("log")
    legend(axes[0], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_drift(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, r in result["long_rollout"].items():
        c = r["curves"]
        axes[0].plot(c["t_min"], [100 * v for v in c["plausible"]], "o-", label=name)
        axes[1].plot(c["t_min"], [1e3 * v for v in c["velocity"]], "o-", label=name)
        axes[2].plot(c["t_min"], c["scale_ratio"], "o-", label=name)
    q = result["meta"]["shape_space"]["quantile"]
    axes[0].axhline(q, color="grey", ls="--", label=f"GT ({q:g} % by construction)")
    gv = result["meta"]["gt_velocity"]
    if gv is not None and np.isfinite(gv):
        axes[1].axhline(1e3 * gv, color="grey", ls="--", label="GT mean")
    axes[2].axhline(1.0, color="grey", ls="--", label="reference face")
    for ax, title, yl in zip(
        axes, ("plausible frames", "mean velocity", "face size"), ("%", "×10⁻³ units / frame", "ratio to reference")
    ):
        ax.set_title(title)
        ax.set_xlabel("rollout time (min)")
        ax.set_ylabel(yl)
        legend(ax, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_viewer(result: dict, path: Path) -> None:
    """Viewer-facing columns per row: articulation (r, amplitude ratio), head (range and energy ratios to ground
    truth, biases) and the raw mouth in each non-speech kind (p90 of the inner-lip gap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = result["viewer"]
    cols = v["methods"]
    names = list(cols)
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    width = 0.8 / max(len(names), 1)

    def bars(ax, keys, labels, get):
        xs = np.arange(len(keys))
        for k, n in enumerate(names):
            vals = [get(cols[n], key) for key in keys]
            ax.bar(xs + k * width, [x if x is not None and np.isfinite(x) else np.nan for x in vals], width, label=n)
        ax.set_xticks(xs + 0.4 - width / 2, labels, fontsize=8)

    bars(
        axes[0],
        ["r_lag0", "r_best", "amplitude_ratio"],
        ["r lag 0", "r best lag", "amplitude ratio"],
        lambda c, k: c[k],
    )
    axes[0].axhline(1.0, color="grey", ls="--")
    axes[0].set_title("articulation vs ground truth (median over clips)")
    nl = len(cols[names[0]]["head_energy"])
    bars(
        axes[1],
        list(range(nl)) + ["yaw_range", "pitch_range", "roll_range"],
        [f"E {int(200 * 2**l)} ms" for l in range(nl)] + ["yaw", "pitch", "roll"],
        lambda c, k: c["head_energy_ratio"][k] if isinstance(k, int) else c[f"{k}_ratio"],
    )
    axes[1].axhline(1.0, color="grey", ls="--")
    axes[1].set_title("head: energy and range / ground truth")
    bars(axes[2], ["yaw_bias", "pitch_bias", "roll_bias"], ["yaw", "pitch", "roll"], lambda c, k: c[k])
    axes[2].set_title("head: median angle vs reference face (deg)")
    rest = (v.get("rest") or {}).get("rows") or {}
    if rest:
        kinds = [k for k in next(iter(rest.values())) if k != "all"]
        xs = np.arange(len(kinds))
        rn = list(rest)
        w = 0.8 / len(rn)
        for k, n in enumerate(rn):
            axes[3].bar(xs + k * w, [rest[n][kd]["gap_p90"] for kd in kinds], w, label=n)
        axes[3].set_xticks(xs + 0.4 - w / 2, kinds, fontsize=7, rotation=20)
        axes[3].axhline(0.03, color="grey", ls="--", label="rest (0.03 IOD)")
        legend(axes[3], fontsize=7)
    axes[3].set_title("raw inner-lip gap p90 in non-speech (IOD)")
    legend(axes[0], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
