"""training.data.prefetch: batches drawn in a worker are the batches drawn inline, in order; failures surface in
the trainer with the worker's traceback; close() stops the worker."""

from __future__ import annotations

import numpy as np
import pytest

from stream_engine.features import FrontEndConfig
from training.data.augment import AugmentConfig
from training.data.clips import Segment
from training.data.generator_batches import WindowSampler
from training.data.nonspeech import RestMixConfig
from training.data.prefetch import Prefetcher


def _segments(n: int = 3, frames: int = 120) -> list[Segment]:
    rng = np.random.default_rng(7)
    spf = FrontEndConfig().samples_per_landmark_frame
    return [
        Segment(
            clip_id=f"c{i}",
            identity=f"id{i % 2}",
            start_frame=0,
            landmarks=rng.uniform(0.2, 0.8, (frames, 68, 2)).astype(np.float32),
            audio=(0.1 * rng.standard_normal(frames * spf)).astype(np.float32),
            logmel=np.zeros((4 * frames, 40), np.float32),
        )
        for i in range(n)
    ]


def test_the_worker_draws_the_inline_batches_in_order():
    sampler = WindowSampler(_segments(), num_frames=40, lookahead_frames=2, warmup_frames=8, frontend=FrontEndConfig())
    mean_face = np.full((68, 2), 0.5, np.float32)

    def draw(rng):
        return sampler.sample(6, rng, AugmentConfig(), RestMixConfig(fraction=0.34), mean_face)

    inline_rng = np.random.default_rng(123)
    inline = [draw(inline_rng) for _ in range(4)]
    prefetcher = Prefetcher(draw, np.random.default_rng(123), depth=2)
    try:
        ahead = [prefetcher.next() for _ in range(4)]
    finally:
        prefetcher.close()
    for a, b in zip(inline, ahead):
        for field in ("audio", "valid", "landmarks", "segment_index", "start_frame", "speech", "rest", "mixed"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert inline[0].mixed.any(), "the batches must exercise non-speech mixing too"
    assert not np.array_equal(inline[0].audio, inline[1].audio)


def _fails_on_third(rng, calls=[0]):  # noqa: B006 - counts calls inside the forked worker only
    calls[0] += 1
    if calls[0] == 3:
        raise ValueError("planted failure in draw")
    return rng.integers(0, 100, 4)


def test_a_failure_in_the_worker_is_raised_by_next_with_its_traceback():
    prefetcher = Prefetcher(_fails_on_third, np.random.default_rng(0), depth=1)
    try:
        prefetcher.next(), prefetcher.next()
        with pytest.raises(RuntimeError, match="planted failure in draw"):
            prefetcher.next()
    finally:
        prefetcher.close()


def test_close_stops_a_worker_blocked_on_a_full_queue():
    prefetcher = Prefetcher(lambda rng: rng.standard_normal(1000), np.random.default_rng(0), depth=1)
    prefetcher.next()
    prefetcher.close()
    assert not prefetcher.alive


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(lambda rng: 0, np.random.default_rng(0), depth=0)


def test_the_worker_exits_when_its_parent_is_killed(tmp_path):
    """A training run killed by a signal (SIGKILL here: no cleanup at all) must not leave its worker behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys, time, numpy as np\n"
        "from training.data.prefetch import Prefetcher\n"
        "p = Prefetcher(lambda rng: rng.standard_normal(1000), np.random.default_rng(0), depth=1)\n"
        "p.next()\n"
        "print(p._proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        os.kill(worker, 0)  # alive while the parent is
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                return
            # reaped by init once it exits; a zombie still answers kill(0), so read its state
            try:
                with open(f"/proc/{worker}/stat") as f:
                    if f.read().split(")")[-1].split()[0] == "Z":
                        return
            except FileNotFoundError:
                return
            time.sleep(0.1)
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the batch worker outlived its killed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
