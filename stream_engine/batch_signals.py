"""Derived signals over a batch of streams: arrays in, arrays out (the batched twin of `signals.SignalExtractor`).

A `BatchSignalExtractor` keeps the per-stream state of `SignalExtractor` (adaptive mouth range, neutral width,
One-Euro filters, silence gate, blink schedule, blendshape neutral) as arrays indexed by slot, so a step of B
streams is one pass of numpy over (B, ...) arrays instead of B Python calls::

    bx = BatchSignalExtractor(SignalConfig(), capacity=64)
    bx.open(slot=3, reference_face=face, seed=stream_seed(seed, "alice"))
    out = bx.update(slots, landmarks (B, 68, 2), t_s (B,), audio_dbfs (B,), audio_ahead_dbfs (B,))
    out.mouth_open (B,), out.visemes (B, 5), out.blendshapes (B, 52), out.signals(i) -> Signals

For every slot the result equals what a `SignalExtractor` with the same config, reference face and seed gives
for the same frames (tested to 1e-9): the recipe is the same, only the layout differs. Each slot keeps its own
random generator for the procedural blinks, drawn in the same order, so seeds reproduce across the two.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from stream_engine import fast_init, signal_kernel
from stream_engine.blendshapes import blendshapes_from_features, face_features
from stream_engine.noise_floor import BatchNoiseFloor
from stream_engine.signals import (
    DIGITAL_SILENCE_DBFS,
    GATED_SHAPES,
    MEASURED_PAIRS,
    MODEL_RIGID_PINV,
    OPENING_FEATURES,
    QUIET_INPUT_MESSAGE,
    RIGID_INDEX,
    VISEMES,
    HeadPose,
    OneEuroConfig,
    SignalConfig,
    Signals,
    head_rotation,
    noise_floor_config,
)

log = logging.getLogger(__name__)
_MAKE_SIGNALS = fast_init.maker(Signals)
_MAKE_HEAD_POSE = fast_init.maker(HeadPose)

_YZX, _ZXY = np.array([1, 2, 0]), np.array([2, 0, 1])  # component orders of a cross product


def _clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`np.clip(x, lo, hi)` as two ufunc calls (np.clip's Python wrapper costs more than the work at small B)."""
    out: np.ndarray = np.minimum(np.maximum(x, lo), hi)
    return out


@dataclasses.dataclass(frozen=True)
class SignalBatch:
    """Signals of B frames (row i = the i-th slot passed to `update`).

    Attributes:
        mouth_open: (B,); visemes: (B, 5) in `VISEMES` order; blink: (B,); head_deg: (B, 3) yaw, pitch, roll;
        audio_dbfs: (B,); silent: (B,) bool; blendshapes: (B, 52) float32 or None.
    """

    mouth_open: np.ndarray
    visemes: np.ndarray
    blink: np.ndarray
    head_deg: np.ndarray
    audio_dbfs: np.ndarray
    silent: np.ndarray
    blendshapes: np.ndarray | None

    def rows(self) -> list[Signals]:
        """Every row as a per-stream `Signals` object (the same values as `signals(i)` for each i, converted
        to Python numbers in one pass per array instead of one element at a time)."""
        visemes = [dict(zip(VISEMES, row)) for row in self.visemes.tolist()]
        head_pose = _MAKE_HEAD_POSE
        heads = [head_pose(*row) for row in self.head_deg.tolist()]
        blend = None if self.blendshapes is None else self.blendshapes.copy()
        signals = _MAKE_SIGNALS  # the dataclass, built without its frozen __init__ (fast_init)
        return [
            signals(mouth, vis, blink, head, dbfs, silent, None if blend is None else blend[i])
            for i, (mouth, vis, blink, head, dbfs, silent) in enumerate(
                zip(
                    self.mouth_open.tolist(),
                    visemes,
                    self.blink.tolist(),
                    heads,
                    self.audio_dbfs.tolist(),
                    self.silent.tolist(),
                )
            )
        ]

    def vectors(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The listed rows as (n, 12) float32 in `SIGNAL_NAMES` order (`Signals.as_vector`; silent as 0/1)."""
        r = np.asarray(rows, dtype=np.intp)
        out = np.empty((r.size, 12), dtype=np.float32)
        out[:, 0] = self.mouth_open[r]
        out[:, 1:6] = self.visemes[r]
        out[:, 6] = self.blink[r]
        out[:, 7:10] = self.head_deg[r]
        out[:, 10] = self.audio_dbfs[r]
        out[:, 11] = self.silent[r]
        return out

    def signals(self, i: int) -> Signals:
        """Row i as the per-stream `Signals` object."""
        return Signals(
            mouth_open=float(self.mouth_open[i]),
            visemes={v: float(w) for v, w in zip(VISEMES, self.visemes[i])},
            blink=float(self.blink[i]),
            head=HeadPose(*(float(a) for a in self.head_deg[i])),
            audio_dbfs=float(self.audio_dbfs[i]),
            silent=bool(self.silent[i]),
            blendshapes=None if self.blendshapes is None else self.blendshapes[i].copy(),
        )


class _BatchOneEuro:
    """One-Euro filters of `channels` channels for `capacity` slots (Casiez et al. 2012; `signals.OneEuroFilter`)."""

    def __init__(self, cfgs: list[OneEuroConfig], capacity: int) -> None:
        self.min_cutoff = np.array([c.min_cutoff_hz for c in cfgs])
        self.beta = np.array([c.beta for c in cfgs])
        self.d_tau = np.array([1.0 / (2.0 * math.pi * c.d_cutoff_hz) for c in cfgs])
        n = len(cfgs)
        self.x = np.zeros((capacity, n))
        self.dx = np.zeros((capacity, n))
        self.t = np.zeros(capacity)
        self.ready = np.zeros(capacity, dtype=bool)

    def reset(self, slot: int) -> None:
        self.ready[slot] = False

    def __call__(self, slots: np.ndarray, x: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        ready = self.ready[slots]
        out: np.ndarray | None = None
        if ready.all():  # the steady state: every slot already has a value (same arithmetic, fewer calls)
            s, x_r, t_r = slots, x, t_s
        else:
            out = x.copy()
            first = slots[~ready]
            self.x[first], self.dx[first], self.t[first] = x[~ready], 0.0, t_s[~ready]
            self.ready[first] = True
            rows = np.flatnonzero(ready)
            if not rows.size:
                return out
            s, x_r, t_r = slots[rows], x[rows], t_s[rows]
        dt = t_r - self.t[s]
        hold = dt <= 0
        dt_safe = np.where(hold, 1.0, dt)[:, None]
        a_d = 1.0 / (1.0 + self.d_tau / dt_safe)
        dx = a_d * (x_r - self.x[s]) / dt_safe + (1.0 - a_d) * self.dx[s]
        cutoff = self.min_cutoff + self.beta * np.abs(dx)
        a = 1.0 / (1.0 + 1.0 / (2.0 * math.pi * cutoff * dt_safe))
        new_x = a * x_r + (1.0 - a) * self.x[s]
        if hold.any():
            move = ~hold
            self.x[s[move]], self.dx[s[move]], self.t[s[move]] = new_x[move], dx[move], t_r[move]
        else:
            self.x[s], self.dx[s], self.t[s] = new_x, dx, t_r
        if out is None:
            result: np.ndarray = self.x[s]
            return result
        out[rows] = self.x[s]
        return out


class BatchSignalExtractor:
    """Per-slot signal state as arrays; `update` derives the signals of a batch of frames at once.

    Args:
        cfg: `SignalConfig` (one for every slot).
        capacity: number of slots (0 .. capacity - 1).
        compiled: run `update` as one compiled loop over the batch (`signal_kernel`, numba; the same values
            to float64 rounding, about a tenth of the CPU at B = 64); None = when numba is installed, False =
            always the numpy code below (the reference), True = numba or `RuntimeError`.
    """

    def __init__(self, cfg: SignalConfig = SignalConfig(), capacity: int = 64, compiled: bool | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.cfg = cfg
        self.capacity = int(capacity)
        self._kernel = signal_kernel.load() if compiled is not False else None
        self._kargs: tuple[object, ...] | None = None  # `_kernel_args()`, kept until `grow` replaces the arrays
        self._require_compiled = bool(compiled)
        if compiled and self._kernel is None:
            raise RuntimeError("compiled signals need numba (pip install numba; MSYNC_NO_NUMBA unset)")
        n = self.capacity
        self._rng: list[np.random.Generator | None] = [None] * n
        self._names: list[str] = [""] * n
        self._neutral_rot = np.repeat(np.eye(3)[None], n, 0)
        self._neutral_face_feats = np.zeros((n, len(OPENING_FEATURES)))
        self._has_face = np.zeros(n, dtype=bool)
        self._neutral_feats = np.zeros((n, len(OPENING_FEATURES)))
        self._has_neutral_feats = np.zeros(n, dtype=bool)
        self._low = np.zeros(n)
        self._high = np.zeros(n)
        self._range_ready = np.zeros(n, dtype=bool)
        self._width_neutral = np.zeros(n)
        self._width_ready = np.zeros(n, dtype=bool)
        self._width_dev = np.full(n, cfg.width_min_span)
        self._eye_open = np.zeros(n)
        self._eye_ready = np.zeros(n, dtype=bool)
        self._filter = _BatchOneEuro([cfg.mouth_filter] + [cfg.viseme_filter] * 2 + [cfg.head_filter] * 3, n)
        self._feature_filter = _BatchOneEuro([cfg.mouth_filter] * len(OPENING_FEATURES), n)
        self._next_blink = np.full(n, np.nan)
        self._blink_duration = np.full(n, cfg.auto_blink_duration_ms / 1e3)
        self._last_t = np.full(n, np.nan)
        self._silent_since = np.full(n, np.nan)
        self._gate = np.ones(n)
        self._noise = BatchNoiseFloor(noise_floor_config(cfg), n)
        self._quiet_s = np.zeros(n)
        #: per slot: the input has been too quiet for `cfg.quiet_warning_s` (`SignalExtractor.quiet_input`)
        self.quiet_input = np.zeros(n, dtype=bool)
        self.open_slots = np.zeros(n, dtype=bool)

    def open(self, slot: int, reference_face: np.ndarray | None = None, seed: int | None = 0, name: str = "") -> None:
        """Start a stream in `slot` (fresh state, as a new `SignalExtractor(cfg, reference_face, seed, name)`)."""
        if not 0 <= slot < self.capacity:
            raise IndexError(f"slot {slot} outside 0..{self.capacity - 1}")
        cfg = self.cfg
        self._rng[slot] = np.random.default_rng(seed)
        self._neutral_rot[slot] = np.eye(3)
        self._has_face[slot] = reference_face is not None
        if reference_face is not None:
            face = np.asarray(reference_face, dtype=np.float64)
            self._neutral_face_feats[slot] = face_features(face)
            if cfg.head_relative_to_reference:
                self._neutral_rot[slot] = head_rotation(face)
        self._has_neutral_feats[slot] = False
        self._range_ready[slot] = self._width_ready[slot] = self._eye_ready[slot] = False
        self._width_dev[slot] = cfg.width_min_span
        self._next_blink[slot] = np.nan
        self._blink_duration[slot] = cfg.auto_blink_duration_ms / 1e3
        self._noise.open(slot)
        self._quiet_s[slot] = 0.0
        self.quiet_input[slot] = False
        self._names[slot] = name
        self.open_slots[slot] = True
        self.reset(slot)

    def close(self, slot: int) -> None:
        """Free `slot` (its state is forgotten; `open` starts it afresh)."""
        self.open_slots[slot] = False
        self._rng[slot] = None

    def grow(self, capacity: int) -> None:
        """Make room for slots up to `capacity - 1`, keeping every open slot's state (new slots are closed)."""
        if capacity <= self.capacity:
            return
        fresh = BatchSignalExtractor(self.cfg, capacity, compiled=False)
        n = self.capacity
        per_slot = [name for name, value in vars(self).items() if isinstance(value, np.ndarray)]  # all by slot
        pairs: list[tuple[object, object, str]] = [(self, fresh, name) for name in per_slot]
        for mine, theirs in ((self._filter, fresh._filter), (self._feature_filter, fresh._feature_filter)):
            pairs += [(mine, theirs, name) for name in ("x", "dx", "t", "ready")]
        pairs += [
            (self._noise, fresh._noise, name) for name, v in vars(self._noise).items() if isinstance(v, np.ndarray)
        ]
        for old, new, name in pairs:
            getattr(new, name)[:n] = getattr(old, name)
            setattr(old, name, getattr(new, name))
        self._kargs = None
        self._rng = self._rng + [None] * (capacity - n)
        self._names = self._names + [""] * (capacity - n)
        self.capacity = int(capacity)

    def reset(self, slot: int) -> None:
        """A new epoch of the slot's stream: restart filters and the silence gate; learnt ranges and the noise
        floor are kept."""
        self._filter.reset(slot)
        self._feature_filter.reset(slot)
        self._last_t[slot] = np.nan
        self._silent_since[slot] = np.nan
        self._gate[slot] = 1.0

    def update(
        self,
        slots: npt.ArrayLike,
        landmarks: np.ndarray,
        t_s: npt.ArrayLike,
        audio_dbfs: npt.ArrayLike,
        audio_ahead_dbfs: npt.ArrayLike | None = None,
    ) -> SignalBatch:
        """Signals of one frame of each listed slot.

        Args:
            slots: (B,) distinct open slots; landmarks: (B, 68, 2); t_s, audio_dbfs, audio_ahead_dbfs: (B,)
                (ahead None = no look-ahead level).
        Raises:
            ValueError: shapes that do not match, repeated or unopened slots.
        """
        cfg = self.cfg
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        pts = np.asarray(landmarks, dtype=np.float64)
        B = slots.size
        if pts.shape != (B, 68, 2):
            raise ValueError(f"landmarks must be ({B}, 68, 2), got {pts.shape}")
        t = np.asarray(t_s, dtype=np.float64).reshape(B)
        dbfs = np.asarray(audio_dbfs, dtype=np.float64).reshape(B)
        ahead = (
            np.full(B, -200.0)
            if audio_ahead_dbfs is None
            else np.asarray(audio_ahead_dbfs, dtype=np.float64).reshape(B)
        )
        if self._kernel is not None:  # checks the slots itself before it changes anything
            return self._update_compiled(slots, pts, t, dbfs, ahead)
        ascending = B < 2 or bool((slots[1:] > slots[:-1]).all())  # distinct without sorting (the engine's order)
        if not ascending and np.unique(slots).size != B or not np.all(self.open_slots[slots]):
            raise ValueError("slots must be distinct open slots")
        last = self._last_t[slots]
        first = np.isnan(last)
        dt = np.where(first, 0.04, np.maximum(1e-3, t - np.where(first, 0.0, last)))
        self._last_t[slots] = t

        d = pts[:, MEASURED_PAIRS[:, 0]] - pts[:, MEASURED_PAIRS[:, 1]]
        d = np.sqrt((d * d).sum(-1))  # (B, 11)
        iod = np.maximum(d[:, 0], 1e-6)
        gap = (d[:, 1] + d[:, 2] + d[:, 3]) / 3.0 / iod
        width = d[:, 4] / iod
        openness = self._open_range(slots, gap, dt)
        wr = self._width_ready[slots]
        k = np.minimum(1.0, dt / 5.0) * (1.0 - openness)
        wn = np.where(wr, self._width_neutral[slots] + (width - self._width_neutral[slots]) * k, width)
        self._width_neutral[slots] = wn
        self._width_ready[slots] = True
        dev = width - wn
        wd = self._width_dev[slots]
        wd = np.maximum(
            np.maximum(cfg.width_min_span, wd + (np.abs(dev) - wd) * np.minimum(1.0, dt / cfg.range_decay_s)),
            np.abs(dev),
        )
        self._width_dev[slots] = wd
        spread = _clip(dev / wd, 0.0, 1.0)
        rounding = _clip(-dev / wd, 0.0, 1.0)
        pose = self._head_pose(pts, slots)

        out = self._filter(slots, np.stack([openness, spread, rounding, pose[:, 0], pose[:, 1], pose[:, 2]], 1), t)
        floor = self._noise.update(slots, dbfs, dt)
        level = np.maximum(dbfs, ahead)
        speech = level >= np.maximum(cfg.silence_dbfs, floor + cfg.noise_margin_db)
        silent = self._silence(slots, t, dt, speech)
        gate = self._gate[slots]
        opening = _clip(out[:, 0], 0.0, 1.0)
        if cfg.quiet_warning_s > 0:
            quiet = (level > DIGITAL_SILENCE_DBFS) & (level < cfg.silence_dbfs) & (opening > 0.3)
            self._watch_quiet(slots, speech, quiet, dt)
        mouth = opening * gate
        visemes = _viseme_weights(mouth, out[:, 1], out[:, 2])
        lim = cfg.max_head_deg
        head = _clip(out[:, 3:6], -lim, lim)
        blink = self._blink(slots, d, t, dt)
        shapes = None
        if cfg.blendshapes:
            feats = self._feature_filter(slots, face_features(pts), t)
            has = self._has_neutral_feats[slots]
            init = np.where(self._has_face[slots][:, None], self._neutral_face_feats[slots], feats)
            kk = (np.minimum(1.0, dt / cfg.blendshape_neutral_s) * gate)[:, None] * np.where(
                OPENING_FEATURES[None, :], (openness < 0.3)[:, None], 1.0
            )
            cur = self._neutral_feats[slots]
            neutral = np.where(has[:, None], cur + (feats - cur) * kk, init)
            self._neutral_feats[slots] = neutral
            self._has_neutral_feats[slots] = True
            shapes = blendshapes_from_features(feats, neutral, blink, cfg.blendshape_gain)
            shapes[:, GATED_SHAPES] *= gate[:, None].astype(np.float32)
        return SignalBatch(
            mouth_open=mouth,
            visemes=visemes,
            blink=blink,
            head_deg=head,
            audio_dbfs=dbfs,
            silent=silent,
            blendshapes=shapes,
        )

    @property
    def compiled(self) -> bool:
        """Whether `update` runs the compiled loop (`signal_kernel`)."""
        return self._kernel is not None

    def warm_up(self) -> None:
        """Compile the loop now (or load it from numba's cache) instead of on the first `update`: a call over
        no frames, with the argument types of every later call. Does nothing on the numpy path. If compiling
        fails (a broken numba or LLVM install), the extractor logs a warning and uses the numpy code, unless it
        was made with compiled=True (then the error propagates)."""
        if self._kernel is None:
            return
        z = np.zeros(0)
        try:
            self._update_compiled(np.zeros(0, dtype=np.int64), np.zeros((0, 68, 2)), z, z, z, run=self._kernel)
        except Exception as exc:
            if self._require_compiled:
                raise
            log.warning(
                "the compiled signals loop is unavailable (%s: %s); deriving signals with numpy",
                type(exc).__name__,
                exc,
            )
            self._kernel = None

    def _kernel_args(self) -> tuple[object, ...]:
        """The settings, tables and slot arrays `signal_kernel.frame_pass` reads and writes, in its order."""
        cfg, f, g, nf = self.cfg, self._filter, self._feature_filter, self._noise
        settings = np.array(
            [
                cfg.range_decay_s,
                cfg.mouth_min_span,
                cfg.width_min_span,
                cfg.silence_dbfs,
                cfg.noise_margin_db,
                nf.cfg.skip_below_dbfs,
                nf.cfg.smoothing,
                nf.sub_s,
                cfg.silence_hold_ms,
                max(cfg.silence_release_ms, 1e-3),
                cfg.quiet_warning_s,
                cfg.max_head_deg,
                cfg.blendshape_neutral_s,
                cfg.auto_blink_interval_s[1],
                nf.cfg.start_steady_frames,
                nf.cfg.start_steady_db,
            ],
            dtype=np.float64,
        )
        state = (
            self.open_slots,
            self._last_t,
            self._low,
            self._high,
            self._range_ready,
            self._width_neutral,
            self._width_ready,
            self._width_dev,
            self._silent_since,
            self._gate,
            self._quiet_s,
            self.quiet_input,
            self._eye_open,
            self._eye_ready,
            self._next_blink,
            self._blink_duration,
            self._neutral_rot,
            self._has_neutral_feats,
            self._has_face,
            self._neutral_face_feats,
            self._neutral_feats,
        )
        filt = (f.x, f.dx, f.t, f.ready, f.min_cutoff, f.beta, f.d_tau)
        ffilt = (g.x, g.dx, g.t, g.ready, g.min_cutoff, g.beta, g.d_tau)
        noise = (nf.smoothed, nf.minima, nf.next, nf.current, nf.elapsed, nf.measured, nf.recent, nf.heard)
        return (
            settings,
            signal_kernel.DIRECT_SCALE * cfg.blendshape_gain,
            signal_kernel.BLINK_MODES[cfg.blink_mode],
            bool(cfg.blendshapes),
            signal_kernel.TABLES,
            state,
            filt,
            ffilt,
            noise,
        )

    def _update_compiled(
        self,
        slots: np.ndarray,
        pts: np.ndarray,
        t: np.ndarray,
        dbfs: np.ndarray,
        ahead: np.ndarray,
        run: Callable[..., int] | None = None,
    ) -> SignalBatch:
        """`update` through `signal_kernel.frame_pass` (arguments already checked); `run` calls it (default
        `_run_kernel`)."""
        cfg = self.cfg
        B = slots.size
        mouth, blink, silent = np.empty(B), np.empty(B), np.empty(B, dtype=bool)
        visemes, head = np.empty((B, len(VISEMES))), np.empty((B, 3))
        shapes = np.empty((B if cfg.blendshapes else 0, signal_kernel.NUM_SHAPES), dtype=np.float32)
        flags = np.empty(B, dtype=np.int64)
        args = [np.ascontiguousarray(a) for a in (slots, pts, t, dbfs, ahead)]
        if self._kargs is None:
            self._kargs = self._kernel_args()
        outs = (mouth, visemes, blink, head, silent, shapes, flags)
        run = run or self._run_kernel
        code = run(*args, True, *self._kargs, *outs)
        if code == signal_kernel.NOT_ASCENDING and np.unique(slots).size == B:
            code = run(*args, False, *self._kargs, *outs)  # distinct, in another order
        if code != signal_kernel.OK:
            raise ValueError("slots must be distinct open slots")
        if B and flags.any():
            for i in np.flatnonzero(flags & signal_kernel.FLAG_FIRST_BLINK):  # first frame, or time went back
                self._schedule_blink(int(slots[i]), float(t[i]))
            for i in np.flatnonzero(flags & signal_kernel.FLAG_NEW_BLINK):
                self._next_blink_after(int(slots[i]), float(t[i]))
            for i in np.flatnonzero(flags & signal_kernel.FLAG_QUIET):
                self._warn_quiet(int(slots[i]))
        return SignalBatch(
            mouth_open=mouth,
            visemes=visemes,
            blink=blink,
            head_deg=head,
            audio_dbfs=dbfs,
            silent=silent,
            blendshapes=shapes if cfg.blendshapes else None,
        )

    def _run_kernel(self, *args: object) -> int:
        """The compiled call alone (a stage of its own in benchmarks.engine_stages)."""
        assert self._kernel is not None
        code: int = self._kernel(*args)
        return code

    # ------------------------------------------------------------------ pieces (each as in SignalExtractor)
    def _open_range(self, slots: np.ndarray, x: np.ndarray, dt: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        ready = self._range_ready[slots]
        low, high = self._low[slots], self._high[slots]
        kd = np.minimum(1.0, dt / cfg.range_decay_s) if cfg.range_decay_s > 0 else np.zeros_like(dt)
        low = np.where(ready, np.minimum(low + (x - low) * kd, x), x)
        high = np.where(ready, np.maximum(high + (x - high) * kd, x), x)
        self._low[slots], self._high[slots] = low, high
        self._range_ready[slots] = True
        result: np.ndarray = _clip((x - low) / np.maximum(high - low, cfg.mouth_min_span), 0.0, 1.0)
        return result

    def _head_pose(self, pts: np.ndarray, slots: np.ndarray) -> np.ndarray:
        image = pts[:, RIGID_INDEX]
        affine = MODEL_RIGID_PINV @ (image - image.mean(axis=1, keepdims=True))  # (B, 3, 2)
        r1, r2 = affine[:, :, 0], affine[:, :, 1]
        r1 = r1 / np.maximum(np.sqrt((r1 * r1).sum(1, keepdims=True)), 1e-12)
        r2 = r2 - r1 * (r1 * r2).sum(1, keepdims=True)
        r2 = r2 / np.maximum(np.sqrt((r2 * r2).sum(1, keepdims=True)), 1e-12)
        r3 = r1[:, _YZX] * r2[:, _ZXY] - r1[:, _ZXY] * r2[:, _YZX]  # r1 x r2, what np.cross computes, less overhead
        r = np.stack([r1, r2, r3], axis=1) @ np.swapaxes(self._neutral_rot[slots], 1, 2)
        yaw = np.degrees(np.arcsin(_clip(r[:, 2, 0], -1.0, 1.0)))
        pitch = np.degrees(np.arctan2(-r[:, 2, 1], r[:, 2, 2]))
        roll = np.degrees(np.arctan2(-r[:, 1, 0], r[:, 0, 0]))
        return np.stack([yaw, pitch, roll], 1)

    def _watch_quiet(self, slots: np.ndarray, speech: np.ndarray, quiet: np.ndarray, dt: np.ndarray) -> None:
        """As `SignalExtractor._watch_quiet`, for the slots not yet warned about."""
        watch = ~self.quiet_input[slots]
        q = self._quiet_s[slots]
        q = np.where(watch & quiet, q + dt, np.where(watch & speech, np.maximum(0.0, q - dt), q))
        self._quiet_s[slots] = q
        for i in np.flatnonzero(watch & (q >= self.cfg.quiet_warning_s)):
            self.quiet_input[slots[i]] = True
            self._warn_quiet(int(slots[i]))

    def _warn_quiet(self, slot: int) -> None:
        where = f" of stream {self._names[slot]}" if self._names[slot] else f" in signal slot {slot}"
        log.warning(QUIET_INPUT_MESSAGE, where, self.cfg.quiet_warning_s, self.cfg.silence_dbfs)

    def noise_floor_dbfs(self, slot: int) -> float:
        """The slot's noise floor now (`noise_floor.NoiseFloor`), dBFS."""
        return self._noise.floor_dbfs(slot)

    def _silence(self, slots: np.ndarray, t: np.ndarray, dt: np.ndarray, speech: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        since = np.where(speech, np.nan, np.where(np.isnan(self._silent_since[slots]), t, self._silent_since[slots]))
        self._silent_since[slots] = since
        holding: np.ndarray = ~speech & ((t - np.where(np.isnan(since), 0.0, since)) * 1e3 >= cfg.silence_hold_ms)
        gate = self._gate[slots]
        decayed = gate * np.exp(-dt * 1e3 / max(cfg.silence_release_ms, 1e-3))
        decayed = np.where(decayed < 0.02, 0.0, decayed)
        self._gate[slots] = np.where(speech, 1.0, np.where(holding, decayed, gate))
        return holding

    def _blink(self, slots: np.ndarray, d: np.ndarray, t: np.ndarray, dt: np.ndarray) -> np.ndarray:
        mode = self.cfg.blink_mode
        value = np.zeros(slots.size)
        if mode == "off":
            return value
        if mode in ("landmarks", "both"):
            right = (d[:, 5] + d[:, 6]) / (2.0 * np.maximum(d[:, 7], 1e-6))
            left = (d[:, 8] + d[:, 9]) / (2.0 * np.maximum(d[:, 10], 1e-6))
            ear = 0.5 * (right + left)
            eo = self._eye_open[slots]
            eo = np.where(self._eye_ready[slots], np.maximum(ear, eo + (ear - eo) * np.minimum(1.0, dt / 10.0)), ear)
            self._eye_open[slots] = eo
            self._eye_ready[slots] = True
            closure = (eo - ear) / np.maximum(0.5 * eo, 1e-6)
            value = _clip((closure - 0.2) / 0.8, 0.0, 1.0)
        if mode in ("auto", "both"):
            value = np.maximum(value, self._auto_blink(slots, t))
        return value

    def _draw_interval(self, slot: int) -> float:
        lo, hi = self.cfg.auto_blink_interval_s
        rng = self._rng[slot]
        assert rng is not None
        return float(np.clip(math.sqrt(lo * hi) * math.exp(0.5 * float(rng.standard_normal())), lo, hi))

    def _first_blinks(self, slots: np.ndarray, t: np.ndarray) -> None:
        """Schedule a blink for the slots that have none (first frame, or time went backwards)."""
        hi = self.cfg.auto_blink_interval_s[1]
        nxt = self._next_blink[slots]
        for i in np.flatnonzero(np.isnan(nxt) | (t < nxt - hi)):
            self._schedule_blink(int(slots[i]), float(t[i]))

    def _schedule_blink(self, slot: int, t: float) -> None:
        """The slot's next blink starts one drawn interval after `t`."""
        self._next_blink[slot] = t + self._draw_interval(slot)

    def _next_blink_after(self, slot: int, t: float) -> None:
        """The slot's blink ended at `t`: draw the next one's time and length."""
        self._schedule_blink(slot, t)
        rng = self._rng[slot]
        assert rng is not None
        median_s = self.cfg.auto_blink_duration_ms / 1e3
        self._blink_duration[slot] = float(np.clip(median_s * math.exp(0.25 * float(rng.standard_normal())), 0.1, 0.4))

    def _auto_blink(self, slots: np.ndarray, t: np.ndarray) -> np.ndarray:
        self._first_blinks(slots, t)
        phase = (t - self._next_blink[slots]) / self._blink_duration[slots]
        out = np.where(phase < 0.4, phase / 0.4, (1.0 - phase) / 0.6)
        out = np.where((phase < 0) | (phase >= 1.0), 0.0, out)
        for i in np.flatnonzero(phase >= 1.0):
            self._next_blink_after(int(slots[i]), float(t[i]))
        return out


def _viseme_weights(o: np.ndarray, s: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Batched `signals.viseme_weights` -> (B, 5)."""
    o, s, r = _clip(o, 0.0, 1.0), _clip(s, 0.0, 1.0), _clip(r, 0.0, 1.0)
    total = s + r
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-12), 1.0)
    s, r = s * scale, r * scale
    return np.stack([o * (1.0 - s - r), o * s * (1.0 - o), o * r * (1.0 - o), o * s * o, o * r * o], 1)
