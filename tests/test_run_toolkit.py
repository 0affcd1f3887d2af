"""The run toolkit (`training/run/`): the Trainer base drives a toy subclass through logging, validation,
checkpoints, callbacks, provenance and resume, with no dataset (the real trainers are covered by
test_syncers.py and test_train_generator.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")

from training.run.metrics import read_records  # noqa: E402
from training.run.trainer import Checkpointed, Trainer  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    steps: int = 4
    log_every: int = 2
    eval_every: int = 2
    checkpoint_every: int = 2
    lr: float = 0.1


class ToyTrainer(Trainer):
    """Fits y = 3x with one weight; data from the trainer's numpy generator."""

    desc = "toy"

    def setup(self, progress: bool) -> None:
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr)
        self.checkpointed = [Checkpointed("checkpoint", self.model, self.opt, lambda step: {"step": step})]
        self.events: list[tuple[str, int]] = []
        for event in ("on_log", "on_checkpoint", "on_step_end"):
            self.add_callback(event, lambda t, e=event: t.events.append((e, t.step)))

    def train_step(self, rng) -> dict[str, float]:
        x = torch.from_numpy(rng.standard_normal((8, 1)).astype("float32"))
        loss = ((self.model(x) - 3 * x) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach())}

    def validate(self) -> dict:
        return {"weight": float(self.model.weight.detach())}


def test_loop_logs_validates_checkpoints_and_calls_back(tmp_path):
    t = ToyTrainer(ToyConfig(), tmp_path)
    result = t.run(progress=False)
    assert result["steps"] == 4 and result["device"] == "cpu" and result["world_size"] == 1
    assert json.loads((tmp_path / "result.json").read_text()) == result
    recs = read_records(tmp_path / "metrics.jsonl")
    assert [(r["split"], r["step"]) for r in recs] == [("train", 2), ("val", 2), ("train", 4), ("val", 4)]
    assert recs[0]["loss"] > recs[2]["loss"] and "steps_per_s" in recs[0]
    assert ("on_checkpoint", 2) in t.events and ("on_log", 4) in t.events
    assert [s for e, s in t.events if e == "on_step_end"] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "config.json").read_text()) == dataclasses.asdict(ToyConfig())
    (info,) = json.loads((tmp_path / "run_info.json").read_text())["invocations"]
    assert info["start_step"] == 0 and "git_commit" in info and info["world_size"] == 1
    assert (tmp_path / "checkpoint.safetensors").is_file() and (tmp_path / "checkpoint.optim.json").is_file()


def test_resume_continues_from_the_checkpoint(tmp_path):
    first = ToyTrainer(ToyConfig(steps=2), tmp_path)
    first.run(progress=False)
    t = ToyTrainer(ToyConfig(steps=4), tmp_path)
    result = t.run(progress=False)
    assert result["steps"] == 4
    assert [s for e, s in t.events if e == "on_step_end"] == [3, 4]  # only the new steps ran
    # provenance stays honest: config.json is what the resumed invocation ran with, run_info.json keeps both
    first_run, resumed = json.loads((tmp_path / "run_info.json").read_text())["invocations"]
    assert (first_run["start_step"], resumed["start_step"]) == (0, 2)
    assert resumed["config_changed"] == {"steps": [2, 4]}
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 4
    recs = read_records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs if r["split"] == "val"] == [2, 4]  # appended, not restarted
    fresh = ToyTrainer(ToyConfig(steps=4), tmp_path / "fresh")
    fresh.run(progress=False)
    assert [s for e, s in fresh.events if e == "on_step_end"] == [1, 2, 3, 4]
    no_resume = ToyTrainer(ToyConfig(steps=4), tmp_path)
    no_resume.run(resume=False, progress=False)
    assert [s for e, s in no_resume.events if e == "on_step_end"] == [1, 2, 3, 4]
    # the log starts over with the run: no step goes backwards in metrics.jsonl
    steps = [r["step"] for r in read_records(tmp_path / "metrics.jsonl") if r["split"] == "val"]
    assert steps == sorted(steps) and steps[-1] == 4


def test_a_finished_run_rerun_with_fewer_steps_trains_nothing_and_rewrites_nothing(tmp_path, capsys):
    """Rerunning a run folder already at or past `steps` (a smaller steps, or another setting) leaves its
    checkpoint, config and result alone: before, the files were rewritten with the new settings (a look-ahead
    the weights were not trained with) without a step run."""
    ToyTrainer(ToyConfig(steps=4), tmp_path).run(progress=False)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    again = ToyTrainer(ToyConfig(steps=2, lr=0.5), tmp_path)
    result = again.run(progress=False)
    assert result["steps"] == 4 and not [e for e in again.events if e[0] == "on_step_end"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == files
    assert "already at step 4 >= steps=2: nothing to train" in capsys.readouterr().out


@pytest.mark.parametrize("victim", ["checkpoint.safetensors", "checkpoint.json", "checkpoint.optim.safetensors"])
def test_a_corrupt_run_folder_is_a_clear_error_naming_the_way_out(tmp_path, victim):
    from training.run.trainer import ResumeError

    ToyTrainer(ToyConfig(steps=2), tmp_path).run(progress=False)
    path = tmp_path / victim
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])
    with pytest.raises(ResumeError, match="--no-resume"):
        ToyTrainer(ToyConfig(steps=4), tmp_path).run(progress=False)


def test_unknown_event_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown event"):
        ToyTrainer(ToyConfig(), tmp_path).add_callback("on_epoch", lambda t: None)


@pytest.mark.parametrize("setting", ["syncer.nonexistent=3", "steps=abc"])
def test_a_bad_set_value_is_a_clear_error_not_a_traceback(tmp_path, capsys, setting):
    from stream_engine.cli import main

    code = main(
        ["train-syncers", "--config", "training/configs/syncers.json", "--out", str(tmp_path), "--set", setting]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("msync train-syncers: bad configuration:") and "Traceback" not in err
    assert not (tmp_path / "config.json").exists()  # nothing started
