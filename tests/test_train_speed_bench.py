"""benchmarks.train_speed: the steady-rate arithmetic, the report and the argument checks (the runs themselves are
`msync train` processes; the GPU rows come from benchmarks/gpu_run.sh on a lent GPU)."""

from __future__ import annotations

import pytest

from benchmarks import train_speed


def _log(step: int, seconds: float) -> dict:
    return {"split": "train", "step": step, "it_per_s": step / seconds}


def test_steady_rate_leaves_out_the_warm_up():
    # 5 slow warm-up steps (10 s), then 2 it/s: the cumulative rate at the end is 35/25 = 1.4, the steady rate 2.
    records = [_log(5, 10.0), {"split": "val", "step": 5}, _log(15, 15.0), _log(35, 25.0)]
    rate, spanned = train_speed.steady_rate(records)
    assert rate == pytest.approx(2.0)
    assert spanned == 30


def test_steady_rate_needs_two_logs():
    assert train_speed.steady_rate([_log(5, 1.0)]) == (None, 0)
    assert train_speed.steady_rate([]) == (None, 0)


def test_report_lists_failed_rows_with_their_error():
    report = {
        "machine": {"cpu": "x", "logical_cpus": 2, "load_avg_1m": 0.1},
        "gpu": None,
        "conditions": {"config": "c.json", "device": "cpu", "threads": 1, "steps": 10, "log_every": 5, "data": "",
                       "max_clips": 0},
        "rows": [
            {"batch": 8, "rc": 0, "steady_it_per_s": 2.0, "windows_per_s": 16.0, "s_per_1000_steps": 500.0,
             "setup_s": 3.0},
            {"batch": 64, "rc": 1, "steady_it_per_s": None, "error": "no segment holds 83 frames"},
        ],
    }  # fmt: skip
    text = train_speed.markdown(report)
    assert "| cpu | 8 | 0 | 2.00 | 16 | 500 | 3 | 0 |" in text
    assert "| cpu | 64 | 0 | - | - | - | - | 1 |" in text
    assert "no segment holds 83 frames" in text


@pytest.mark.parametrize(
    "argv", [["--batches", "8,x"], ["--batches", "0"], ["--steps", "5", "--log-every", "5"], ["--prefetch", "-1"]]
)
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        train_speed.parse_args(argv)
    assert "error" in capsys.readouterr().err
