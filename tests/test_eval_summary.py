"""benchmarks.eval_summary refuses what is not an `msync eval` report with a message, not a traceback."""

from __future__ import annotations

import json

import pytest

from benchmarks import eval_summary


@pytest.mark.parametrize("content", [None, "not json", json.dumps({"a": 1})])
def test_not_a_report_is_refused_with_a_message(tmp_path, capsys, content):
    path = tmp_path / "eval.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exc:
        eval_summary.main(["--eval", str(path), "--out", str(tmp_path / "s")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


def test_lags_need_the_predictions_folder(tmp_path, capsys):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"methods": {}}))
    with pytest.raises(SystemExit):
        eval_summary.main(["--eval", str(path), "--out", str(tmp_path / "s"), "--lags"])
    assert "predictions/" in capsys.readouterr().err
