"""Training-curve and report plots on tiny runs: panels without labelled artists get no legend and no warning."""

from __future__ import annotations

import json
import warnings

import pytest


def test_empty_panel_gets_no_legend_and_no_warning(tmp_path):
    from training.run import curves

    fig, axes = curves.panels(2, 6)
    axes[0].plot([0, 1], [1, 0], label="train L0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curves.save(fig, axes, ("loss", "accuracy"), "step", tmp_path / "c.png")
    assert (tmp_path / "c.png").is_file()
    assert axes[0].get_legend() is not None and axes[1].get_legend() is None


def test_syncer_curves_of_a_run_without_records_do_not_warn(tmp_path):
    """A run stopped before its first log record (or a metrics file with only a val record) plots silently."""
    from training.train_syncers import plot_curves

    metrics = tmp_path / "metrics.jsonl"
    for lines in ([], [{"step": 1, "split": "val", "loss_l0": 1.0, "acc_l0": 0.1}]):
        metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plot_curves(metrics, tmp_path / "curves.png")
        assert (tmp_path / "curves.png").is_file()


@pytest.mark.parametrize("rows", [0, 1])
def test_report_drift_plot_without_rollouts_does_not_warn(tmp_path, rows):
    from training.eval.plots import plot_drift

    curves = {"t_min": [0.0, 1.0], "plausible": [1.0, 0.9], "velocity": [0.004, 0.004], "scale_ratio": [1.0, 1.0]}
    result = {
        "long_rollout": {"m": {"curves": curves}} if rows else {},
        "meta": {"shape_space": {"quantile": 99.0}, "gt_velocity": float("nan")},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_drift(result, tmp_path / "drift.png")
    assert (tmp_path / "drift.png").is_file()
