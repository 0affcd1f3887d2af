"""The trainer base both training commands use (in the spirit of minGPT's `Trainer`): the base owns the loop,
DDP, seeding, resume, metrics, progress bar, provenance and checkpoints; a subclass supplies only its set-up
and its training step, and hooks into events with callbacks.

    class MyTrainer(Trainer):
        def setup(self, progress): ...              # data, models, optimisers; fills self.checkpointed
        def train_step(self, rng): return {...}     # one update; returns scalar metrics

    trainer = MyTrainer(cfg, out_dir)
    trainer.add_callback("on_checkpoint", lambda t: plot(t.metrics_path, t.out_dir / "curves.png"))
    result = trainer.run()

The config must have `seed`, `device`, `threads`, `steps`, `log_every`, `eval_every`, `checkpoint_every`.
Events: "on_log", "on_checkpoint", "on_step_end" (called on every process; check `trainer.ctx.is_main`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream_engine.dataclass_io import to_dict
from training.run import context
from training.run.metrics import append_record, mean_record
from training.run.provenance import config_changes, dump_config, write_run_info

EVENTS = ("on_log", "on_checkpoint", "on_step_end")


@dataclasses.dataclass
class Checkpointed:
    """One module saved at every checkpoint as `OUT/<stem>.{safetensors,json}` (+ its optimiser), and loaded
    back on resume. `meta(step)` gives the JSON side; the first entry's meta holds the run's step."""

    stem: str
    module: Any
    optimizer: Any
    meta: Callable[[int], dict]


class ResumeError(ValueError):
    """A run folder whose checkpoint cannot be read back (the message says which file and what to do)."""


class TrainingDataError(ValueError):
    """Data a run cannot train on (an empty training split); the message says what to change."""


class Trainer:
    """Subclass and implement `setup` and `train_step`; override the other hooks where the defaults do not fit."""

    desc = "train"  # progress bar label
    unit = "step"
    rate_key = "steps_per_s"
    seed_per_rank = True  # torch seed = seed + rank (False: the same seed on every rank)

    def __init__(self, cfg: Any, out_dir: str | Path) -> None:
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.callbacks: dict[str, list[Callable[[Any], None]]] = defaultdict(list)
        self.checkpointed: list[Checkpointed] = []
        self.step = 0
        self.ctx = context.RunContext("cpu")

    # ------------------------------------------------------------------ subclass hooks
    def setup(self, progress: bool) -> None:
        """Build data, models and optimisers (after the context and the seed); fill `self.checkpointed`."""
        raise NotImplementedError

    def train_step(self, rng) -> dict[str, float]:
        """One update at `self.step` (0-based, before the increment); returns scalar metrics to average."""
        raise NotImplementedError

    def validate(self) -> dict | None:
        """Validation metrics logged at every `eval_every` (None: nothing to log)."""
        return None

    def log_record(self, records: list[dict[str, float]], rate: float) -> dict:
        """The train record written at every `log_every`: the mean of the step metrics since the last one."""
        return {**mean_record(records), "step": self.step, "split": "train", self.rate_key: rate}

    def postfix(self, record: dict) -> dict[str, str]:
        """What the progress bar shows after a log record."""
        return {}

    def on_fresh_start(self) -> None:
        """Called when the run does not resume (e.g. a warm start from another run)."""

    def finish(self, rate: float | None) -> dict:
        """Final outputs on the main process; the returned dict is written to `OUT/result.json`."""
        return {"steps": self.step, "device": self.ctx.device, "world_size": self.ctx.world, self.rate_key: rate}

    # ------------------------------------------------------------------ callbacks
    def add_callback(self, event: str, fn: Callable[[Any], None]) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; one of {EVENTS}")
        self.callbacks[event].append(fn)

    def trigger(self, event: str) -> None:
        for fn in self.callbacks[event]:
            fn(self)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        from training.checkpoint import save_module, save_optimizer

        for c in self.checkpointed:
            save_module(self.out_dir / c.stem, c.module, c.meta(self.step))
            if c.optimizer is not None:
                save_optimizer(self.out_dir / c.stem, c.optimizer)

    def resume(self) -> int:
        """Load every checkpointed module and optimiser when `OUT/<first stem>.json` exists; returns its step.

        Raises:
            ResumeError: a checkpoint file of the run folder cannot be read (truncated, corrupt, another model's).
        """
        from safetensors import SafetensorError

        from training.checkpoint import load_meta, load_optimizer, load_state

        if not self.checkpointed:
            return 0
        first = self.out_dir / self.checkpointed[0].stem
        if not first.with_suffix(".json").is_file():
            return 0
        stem = first
        try:
            for c in self.checkpointed:
                stem = self.out_dir / c.stem
                c.module.load_state_dict(load_state(stem, self.ctx.device))
                if c.optimizer is not None:
                    load_optimizer(stem, c.optimizer)
            return int(load_meta(first)["step"])
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            raise ResumeError(
                f"cannot resume from {stem}.* in {self.out_dir} ({type(exc).__name__}: {str(exc)[:200]}); rerun "
                "with --no-resume to start afresh there, or give another --out"
            ) from None

    # ------------------------------------------------------------------ the loop
    def _begin(self, resume: bool, progress: bool) -> None:
        cfg = self.cfg
        self.ctx = context.start(cfg.device, cfg.threads)
        context.seed_torch(cfg.seed + (self.ctx.rank if self.seed_per_rank else 0))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.setup(progress)
        self.step = self.resume() if resume else 0
        self.done_before = bool(self.step) and self.step >= cfg.steps
        if self.done_before:  # nothing to train: leave the run's files (config, checkpoints, result) as they are
            if self.ctx.is_main:
                print(
                    f"{self.out_dir} is already at step {self.step} >= steps={cfg.steps}: nothing to train (raise "
                    "steps to continue, or --no-resume to start afresh)"
                )
            return
        if not resume and self.ctx.is_main and self.metrics_path.exists():
            self.metrics_path.unlink()  # --no-resume starts the log over too (it used to append to the old run's)
        if not self.step:
            self.on_fresh_start()
        if self.ctx.is_main:
            changed: dict[str, list[Any]] = {}
            if self.step:
                print(f"resuming from {self.out_dir / self.checkpointed[0].stem} at step {self.step}")
                changed = self._config_changes()
                if changed:
                    print(
                        "config changed since the previous invocation (run_info.json keeps both): "
                        + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
                    )
            dump_config(cfg, self.out_dir / "config.json")  # what this invocation runs with
            write_run_info(self.out_dir, self.step, self.ctx.world, self.ctx.device, changed)

    def _config_changes(self) -> dict[str, list[Any]]:
        path = self.out_dir / "config.json"
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return config_changes(old, to_dict(self.cfg))

    def _periodic(self, every: int) -> bool:
        return self.ctx.is_main and (self.step % every == 0 or self.step == self.cfg.steps)

    def run(self, resume: bool = True, progress: bool = True) -> dict:
        """Set up, resume or start, train to `cfg.steps`, finish. Returns the result (empty on other ranks)."""
        self._begin(resume, progress)
        cfg = self.cfg
        if self.done_before:
            context.finish(self.ctx)
            path = self.out_dir / "result.json"
            try:
                return dict(json.loads(path.read_text()))
            except (OSError, ValueError):
                return {"steps": self.step}
        rng = context.step_rng(cfg.seed, self.ctx, self.step)
        bar = None
        if self.ctx.is_main and progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=self.desc, unit=self.unit)
        t0, timed, acc = time.perf_counter(), 0, []
        while self.step < cfg.steps:
            acc.append(self.train_step(rng))
            self.step += 1
            timed += 1
            if bar is not None:
                bar.update(1)
            if self._periodic(cfg.log_every):
                rec = self.log_record(acc, timed / max(time.perf_counter() - t0, 1e-9))
                acc.clear()
                append_record(self.metrics_path, rec)
                if bar is not None and self.postfix(rec):
                    bar.set_postfix(self.postfix(rec))
                self.trigger("on_log")
            if self._periodic(cfg.eval_every):
                val = self.validate()
                if val is not None:
                    append_record(self.metrics_path, {"step": self.step, "split": "val", **val})
            if self._periodic(cfg.checkpoint_every):
                self.save()
                self.trigger("on_checkpoint")
            self.trigger("on_step_end")
        if bar is not None:
            bar.close()
        result: dict = {}
        if self.ctx.is_main:
            result = self.finish(timed / max(time.perf_counter() - t0, 1e-9) if timed else None)
            (self.out_dir / "result.json").write_text(json.dumps(result, indent=2))
        context.finish(self.ctx)
        return result
