"""The per-frame pass of `batch_signals.BatchSignalExtractor` as one compiled loop over the batch (numba).

`BatchSignalExtractor.update` in numpy is some 300 array operations per step; at the engine's batch sizes
(B = 64) each costs more in numpy's per-call overhead than in arithmetic, about 13 us per frame, the largest
part of the engine around the model step (benchmarks/results/engine_stages_14g.md). `frame_pass` does the same
recipe frame by frame in one loop (pair distances, head-pose fit, face features, adaptive ranges, both One-Euro
filters, noise floor, silence gate, visemes, blink, blendshapes), reading and writing the extractor's slot
arrays in place, compiled by numba (a well-kept JIT compiler for numeric Python; LLVM) when it is installed:
1.4 us per frame in the engine at 512 streams (engine_stages_14g.md; 0.7 alone). The numpy code in
`batch_signals` stays the reference and the fallback; the two agree to float64 rounding
(tests/test_signal_kernel.py), except where a value lands exactly on a threshold.

Left to the caller: the shapes of the arguments, the procedural blinks' random draws (per-slot generators; the
loop reports which slots need a blink scheduled: a first one, whose weight at this frame is 0 as the interval
is positive, or the next one) and the quiet-input warning (the loop reports which slots crossed it).

Compilation: the first call in a process compiles, 3.9 s cold on this project's 2-core EPYC; numba caches the
machine code, and later processes load it in 0.26 s (importing numba adds about 0.1 s); where the cache lives,
and when numba is used at all (optional; MSYNC_NO_NUMBA=1; a broken numba), is `numba_jit`'s policy, shared with
`core_kernel`. The engine compiles in `Engine.start` (which `Engine.warm_up` runs), never on a live frame.
Without numba `load()` returns None and the numpy code runs.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from stream_engine import blendshapes as bs
from stream_engine import numba_jit
from stream_engine.signals import (
    DIGITAL_SILENCE_DBFS,
    GATED_SHAPES,
    MEASURED_PAIRS,
    MODEL_RIGID_PINV,
    OPENING_FEATURES,
    RIGID_INDEX,
)

log = logging.getLogger(__name__)

#: blink modes as the loop takes them
BLINK_MODES = {"off": 0, "landmarks": 1, "auto": 2, "both": 3}
#: bits of the loop's per-frame flags
FLAG_NEW_BLINK = 1  # the procedural blink ended: draw the next one (`BatchSignalExtractor._auto_blink`)
FLAG_QUIET = 2  # the slot's input has just been quiet for `quiet_warning_s`
FLAG_FIRST_BLINK = 4  # no blink scheduled (first frame, or time went back): draw one (its weight now is 0)
#: what the loop returns: done; a slot not open (nothing changed); slots not ascending (nothing changed)
OK, NOT_OPEN, NOT_ASCENDING = 0, 1, 2

# ---------------------------------------------------------------- constant tables (from the numpy recipe)
_PAIRS = np.ascontiguousarray(MEASURED_PAIRS, dtype=np.int64)  # (11, 2) signals' measured pairs
_RIGID = np.asarray(RIGID_INDEX, dtype=np.int64)
_PINV = np.ascontiguousarray(MODEL_RIGID_PINV, dtype=np.float64)  # (3, n rigid)
_BS = bs.recipe_tables()
_FEAT_PAIRS = np.ascontiguousarray(_BS["pairs"], dtype=np.int64)  # (10, 2) face-feature distance pairs
_dk, _dj = np.nonzero(_BS["dist_matrix"])  # sparse forms of the dense feature matrices (row-major order)
_DIST_NZ = (np.ascontiguousarray(_dk, np.int64), np.ascontiguousarray(_dj, np.int64), _BS["dist_matrix"][_dk, _dj])
_lm, _lj = np.nonzero(_BS["linear_matrix"])
_LIN_NZ = (np.ascontiguousarray(_lm, np.int64), np.ascontiguousarray(_lj, np.int64), _BS["linear_matrix"][_lm, _lj])
_D_SHAPE = np.ascontiguousarray(_BS["direct_shape"], dtype=np.int64)
_D_FEATURE = np.ascontiguousarray(_BS["direct_feature"], dtype=np.int64)
#: the direct shapes' +-1 / span (the loop takes it times `SignalConfig.blendshape_gain`)
DIRECT_SCALE = np.ascontiguousarray(_BS["direct_scale"], dtype=np.float64)
_I = bs.ARKIT_INDEX
#: jawOpen, mouthClose, mouthFunnel, mouthPucker, stretch/smile/press left, the same right, eyeBlink left/right
_SPECIAL = np.array(
    [_I[n] for n in ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker")]
    + [_I[f"{s}{side}"] for side in ("Left", "Right") for s in ("mouthStretch", "mouthSmile", "mouthPress")]
    + [_I["eyeBlinkLeft"], _I["eyeBlinkRight"]],
    dtype=np.int64,
)
#: the points whose face-frame coordinates the features read (the distance pairs' and the linear terms')
_FACE_POINTS = np.unique(np.concatenate([_FEAT_PAIRS.ravel(), _LIN_NZ[0] // 2])).astype(np.int64)
_GATED = np.ascontiguousarray(GATED_SHAPES, dtype=np.int64)
_OPENING = np.ascontiguousarray(OPENING_FEATURES, dtype=np.bool_)
NUM_SHAPES = len(bs.ARKIT_NAMES)
TABLES = (
    _PAIRS,
    _RIGID,
    _PINV,
    _FEAT_PAIRS,
    *_DIST_NZ,
    *_LIN_NZ,
    _D_SHAPE,
    _D_FEATURE,
    _SPECIAL,
    _GATED,
    _OPENING,
    _FACE_POINTS,
)


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _one_euro(
    s: int,
    x: np.ndarray,
    t: float,
    out: np.ndarray,
    fx: np.ndarray,
    fdx: np.ndarray,
    ft: np.ndarray,
    fready: np.ndarray,
    min_cutoff: np.ndarray,
    beta: np.ndarray,
    d_tau: np.ndarray,
) -> None:
    """One frame of slot s's One-Euro filters (`batch_signals._BatchOneEuro`): x (C,) in, out (C,) filtered."""
    if not fready[s]:
        for c in range(x.size):
            fx[s, c] = x[c]
            fdx[s, c] = 0.0
            out[c] = x[c]
        ft[s] = t
        fready[s] = True
        return
    dt = t - ft[s]
    hold = dt <= 0
    dts = 1.0 if hold else dt
    two_pi = 2.0 * math.pi
    for c in range(x.size):
        xs = fx[s, c]
        a_d = 1.0 / (1.0 + d_tau[c] / dts)
        dx = a_d * (x[c] - xs) / dts + (1.0 - a_d) * fdx[s, c]
        cutoff = min_cutoff[c] + beta[c] * abs(dx)
        a = 1.0 / (1.0 + 1.0 / (two_pi * cutoff * dts))
        if not hold:
            fx[s, c] = a * x[c] + (1.0 - a) * xs
            fdx[s, c] = dx
        out[c] = fx[s, c]
    if not hold:
        ft[s] = t


def frame_pass(
    slots: np.ndarray,
    pts: np.ndarray,
    t_s: np.ndarray,
    dbfs: np.ndarray,
    ahead: np.ndarray,
    check_order: bool,
    cfg: np.ndarray,
    shape_scale: np.ndarray,
    blink_mode: int,
    with_shapes: bool,
    tables: tuple[Any, ...],
    state: tuple[Any, ...],
    filt: tuple[Any, ...],
    ffilt: tuple[Any, ...],
    noise: tuple[Any, ...],
    mouth: np.ndarray,
    visemes: np.ndarray,
    blink: np.ndarray,
    head: np.ndarray,
    silent: np.ndarray,
    shapes: np.ndarray,
    flags: np.ndarray,
) -> int:
    """Signals of one frame of each listed slot, state updated in place (`BatchSignalExtractor.update`).

    Returns OK, or before changing anything NOT_OPEN (a slot outside the extractor or not open) or, with
    `check_order`, NOT_ASCENDING (the caller checks that they are distinct and calls again without the check).

    Args:
        slots: (B,) int64 distinct open slots; pts: (B, 68, 2) float64; t_s, dbfs, ahead: (B,) float64.
        cfg: float64 settings (`BatchSignalExtractor._kernel_args` gives their order); shape_scale: (D,) the
            direct shapes' 1 / span x gain; blink_mode: `BLINK_MODES` value; with_shapes: derive blendshapes.
        check_order: return NOT_ASCENDING for slots that are not ascending (the engine's order).
        tables: `TABLES`; state, filt, ffilt, noise: the extractor's slot arrays (`BatchSignalExtractor._kernel_args`).
        mouth, blink: (B,) out; visemes (B, 5), head (B, 3), silent (B,) bool, shapes (B, 52) float32 (untouched
            without shapes), flags (B,) int64 (`FLAG_*`), all out.
    """
    (pairs, rigid, pinv, fpairs, dk, dj, dw, lm, lj, lw, d_shape, d_feature, special, gated, opening, fpoints) = tables
    (
        open_slots,
        last_t,
        low,
        high,
        range_ready,
        width_neutral,
        width_ready,
        width_dev,
        silent_since,
        gate_arr,
        quiet_s,
        quiet_input,
        eye_open,
        eye_ready,
        next_blink,
        blink_duration,
        neutral_rot,
        has_neutral,
        has_face,
        neutral_face_feats,
        neutral_feats,
    ) = state
    fx, fdx, ft, fready, f_min, f_beta, f_tau = filt
    gx, gdx, gt, gready, g_min, g_beta, g_tau = ffilt
    n_smoothed, n_minima, n_next, n_current, n_elapsed, n_measured, n_recent, n_heard = noise
    range_decay_s, mouth_min_span, width_min_span = cfg[0], cfg[1], cfg[2]
    silence_dbfs, noise_margin_db, skip_below, smoothing, sub_s = cfg[3], cfg[4], cfg[5], cfg[6], cfg[7]
    hold_ms, release_ms, quiet_warning_s, max_head_deg = cfg[8], cfg[9], cfg[10], cfg[11]
    neutral_s, blink_hi = cfg[12], cfg[13]
    steady_n, steady_db = int(cfg[14]), cfg[15]
    for i in range(slots.size):
        if slots[i] < 0 or slots[i] >= open_slots.size or not open_slots[slots[i]]:
            return NOT_OPEN
        if check_order and i > 0 and slots[i] <= slots[i - 1]:
            return NOT_ASCENDING
    n_rigid = rigid.size
    n_feat = opening.size
    d = np.empty(pairs.shape[0])
    raw = np.empty(6)
    filtered = np.empty(6)
    f = np.empty((68, 2))
    fdist = np.empty(fpairs.shape[0])
    feat_d = np.empty(n_feat)
    feat_l = np.empty(n_feat)
    feats = np.empty(n_feat)
    feats_f = np.empty(n_feat)
    sh = np.empty(shapes.shape[1])
    mean = np.empty(2)
    centred = np.empty((n_rigid, 2))
    aff = np.empty((3, 2))
    r1 = np.empty(3)
    r2 = np.empty(3)
    r3 = np.empty(3)
    for i in range(slots.size):
        s = slots[i]
        p = pts[i]
        t = t_s[i]
        flags[i] = 0
        last = last_t[s]
        dt = 0.04 if math.isnan(last) else max(1e-3, t - last)
        last_t[s] = t
        for k in range(pairs.shape[0]):
            ax = p[pairs[k, 0], 0] - p[pairs[k, 1], 0]
            ay = p[pairs[k, 0], 1] - p[pairs[k, 1], 1]
            d[k] = math.sqrt(ax * ax + ay * ay)
        iod = max(d[0], 1e-6)
        gap = (d[1] + d[2] + d[3]) / 3.0 / iod
        width = d[4] / iod
        # adaptive openness range (`_open_range`)
        kd = min(1.0, dt / range_decay_s) if range_decay_s > 0 else 0.0
        if range_ready[s]:
            lo = min(low[s] + (gap - low[s]) * kd, gap)
            hi = max(high[s] + (gap - high[s]) * kd, gap)
        else:
            lo = hi = gap
        low[s], high[s] = lo, hi
        range_ready[s] = True
        openness = _clip((gap - lo) / max(hi - lo, mouth_min_span), 0.0, 1.0)
        # neutral width, spread and rounding
        k_w = min(1.0, dt / 5.0) * (1.0 - openness)
        wn = width_neutral[s] + (width - width_neutral[s]) * k_w if width_ready[s] else width
        width_neutral[s] = wn
        width_ready[s] = True
        dev = width - wn
        wd = width_dev[s]
        wd = max(max(width_min_span, wd + (abs(dev) - wd) * min(1.0, dt / range_decay_s)), abs(dev))
        width_dev[s] = wd
        # head pose: scaled-orthographic fit of the rigid points (`_head_pose`)
        mean[0] = 0.0
        mean[1] = 0.0
        for k in range(n_rigid):
            mean[0] += p[rigid[k], 0]
            mean[1] += p[rigid[k], 1]
        mean[0] /= n_rigid
        mean[1] /= n_rigid
        for k in range(n_rigid):
            centred[k, 0] = p[rigid[k], 0] - mean[0]
            centred[k, 1] = p[rigid[k], 1] - mean[1]
        for a in range(3):
            for c in range(2):
                acc = 0.0
                for k in range(n_rigid):
                    acc += pinv[a, k] * centred[k, c]
                aff[a, c] = acc
        n1 = max(math.sqrt(aff[0, 0] * aff[0, 0] + aff[1, 0] * aff[1, 0] + aff[2, 0] * aff[2, 0]), 1e-12)
        for a in range(3):
            r1[a] = aff[a, 0] / n1
        dot = r1[0] * aff[0, 1] + r1[1] * aff[1, 1] + r1[2] * aff[2, 1]
        for a in range(3):
            r2[a] = aff[a, 1] - r1[a] * dot
        n2 = max(math.sqrt(r2[0] * r2[0] + r2[1] * r2[1] + r2[2] * r2[2]), 1e-12)
        for a in range(3):
            r2[a] = r2[a] / n2
        r3[0] = r1[1] * r2[2] - r1[2] * r2[1]
        r3[1] = r1[2] * r2[0] - r1[0] * r2[2]
        r3[2] = r1[0] * r2[1] - r1[1] * r2[0]
        nr = neutral_rot[s]  # r = [r1; r2; r3] @ nr.T
        r20 = r3[0] * nr[0, 0] + r3[1] * nr[0, 1] + r3[2] * nr[0, 2]
        r21 = r3[0] * nr[1, 0] + r3[1] * nr[1, 1] + r3[2] * nr[1, 2]
        r22 = r3[0] * nr[2, 0] + r3[1] * nr[2, 1] + r3[2] * nr[2, 2]
        r10 = r2[0] * nr[0, 0] + r2[1] * nr[0, 1] + r2[2] * nr[0, 2]
        r00 = r1[0] * nr[0, 0] + r1[1] * nr[0, 1] + r1[2] * nr[0, 2]
        raw[0] = openness
        raw[1] = _clip(dev / wd, 0.0, 1.0)
        raw[2] = _clip(-dev / wd, 0.0, 1.0)
        raw[3] = math.degrees(math.asin(_clip(r20, -1.0, 1.0)))
        raw[4] = math.degrees(math.atan2(-r21, r22))
        raw[5] = math.degrees(math.atan2(-r10, r00))
        _one_euro(s, raw, t, filtered, fx, fdx, ft, fready, f_min, f_beta, f_tau)
        # noise floor (`noise_floor.BatchNoiseFloor.update`) and the speech gate
        level_in = dbfs[i]
        heard = level_in >= skip_below
        prev = n_smoothed[s]
        smoothed = level_in if math.isnan(prev) else smoothing * prev + (1.0 - smoothing) * level_in
        cur = n_current[s]
        if heard:
            n_smoothed[s] = smoothed
            cur = min(cur, smoothed)
        width = n_minima.shape[1]
        if steady_n > 0 and not heard:
            n_heard[s] = 0  # a steady start needs consecutive heard frames
        elif steady_n > 0 and n_measured[s] < width:  # a steady start (`noise_floor` module docstring)
            n_recent[s, n_heard[s] % steady_n] = smoothed
            n_heard[s] += 1
            if n_heard[s] >= steady_n:
                lo, hi = n_recent[s, 0], n_recent[s, 0]
                for m in range(1, steady_n):
                    lo, hi = min(lo, n_recent[s, m]), max(hi, n_recent[s, m])
                if hi - lo <= steady_db:
                    for m in range(n_measured[s], width):
                        n_minima[s, m] = lo
        floor = cur
        for m in range(width):
            floor = min(floor, n_minima[s, m])
        elapsed = n_elapsed[s] + (dt if heard else 0.0)
        if elapsed >= sub_s:
            n_minima[s, n_next[s]] = cur
            n_next[s] = (n_next[s] + 1) % width
            n_measured[s] = min(n_measured[s] + 1, width)
            cur = math.inf
            elapsed = 0.0
        n_current[s] = cur
        n_elapsed[s] = elapsed
        level = max(level_in, ahead[i])
        speech = level >= max(silence_dbfs, floor + noise_margin_db)
        # silence gate (`_silence`)
        since = silent_since[s]
        if speech:
            since = math.nan
        elif math.isnan(since):
            since = t
        silent_since[s] = since
        holding = (not speech) and (t - (0.0 if math.isnan(since) else since)) * 1e3 >= hold_ms
        g = gate_arr[s]
        if speech:
            g = 1.0
        elif holding:
            g = g * math.exp(-dt * 1e3 / release_ms)
            if g < 0.02:
                g = 0.0
        gate_arr[s] = g
        silent[i] = holding
        opening_v = _clip(filtered[0], 0.0, 1.0)
        if quiet_warning_s > 0 and not quiet_input[s]:
            quiet = level > DIGITAL_SILENCE_DBFS and level < silence_dbfs and opening_v > 0.3
            q = quiet_s[s]
            if quiet:
                q = q + dt
            elif speech:
                q = max(0.0, q - dt)
            quiet_s[s] = q
            if q >= quiet_warning_s:
                quiet_input[s] = True
                flags[i] |= FLAG_QUIET
        mo = opening_v * g
        mouth[i] = mo
        # visemes (`_viseme_weights`)
        o = _clip(mo, 0.0, 1.0)
        sp = _clip(filtered[1], 0.0, 1.0)
        ro = _clip(filtered[2], 0.0, 1.0)
        total = sp + ro
        if total > 1.0:
            scale = 1.0 / max(total, 1e-12)
            sp = sp * scale
            ro = ro * scale
        visemes[i, 0] = o * (1.0 - sp - ro)
        visemes[i, 1] = o * sp * (1.0 - o)
        visemes[i, 2] = o * ro * (1.0 - o)
        visemes[i, 3] = o * sp * o
        visemes[i, 4] = o * ro * o
        for c in range(3):
            head[i, c] = _clip(filtered[3 + c], -max_head_deg, max_head_deg)
        # blink (`_blink`, `_auto_blink`; the caller drew the first blinks and draws the next ones)
        value = 0.0
        if blink_mode == 1 or blink_mode == 3:
            right = (d[5] + d[6]) / (2.0 * max(d[7], 1e-6))
            left = (d[8] + d[9]) / (2.0 * max(d[10], 1e-6))
            ear = 0.5 * (right + left)
            eo = eye_open[s]
            eo = max(ear, eo + (ear - eo) * min(1.0, dt / 10.0)) if eye_ready[s] else ear
            eye_open[s] = eo
            eye_ready[s] = True
            closure = (eo - ear) / max(0.5 * eo, 1e-6)
            value = _clip((closure - 0.2) / 0.8, 0.0, 1.0)
        if blink_mode >= 2:
            nxt = next_blink[s]
            if math.isnan(nxt) or t < nxt - blink_hi:  # the blink the caller draws starts after t: weight 0
                flags[i] |= FLAG_FIRST_BLINK
                auto = 0.0
            else:
                phase = (t - nxt) / blink_duration[s]
                auto = phase / 0.4 if phase < 0.4 else (1.0 - phase) / 0.6
                if phase < 0 or phase >= 1.0:
                    auto = 0.0
                if phase >= 1.0:
                    flags[i] |= FLAG_NEW_BLINK
            value = max(value, auto)
        blink[i] = value
        if not with_shapes:
            continue
        # face features in the face frame (`blendshapes.face_features`)
        rx = ry = lx = ly = 0.0
        for k in range(36, 42):
            rx += p[k, 0] * (1.0 / 6.0)
            ry += p[k, 1] * (1.0 / 6.0)
        for k in range(42, 48):
            lx += p[k, 0] * (1.0 / 6.0)
            ly += p[k, 1] * (1.0 / 6.0)
        axx, axy = lx - rx, ly - ry
        norm = max(math.sqrt(axx * axx + axy * axy), 1e-12)
        cos, sin = axx / norm, axy / norm
        ex, ey = p[36, 0] - p[45, 0], p[36, 1] - p[45, 1]
        unit = max(math.sqrt(ex * ex + ey * ey), 1e-9)
        cx, cy = 0.5 * (rx + lx), 0.5 * (ry + ly)
        for k in fpoints:
            px, py = p[k, 0] - cx, p[k, 1] - cy
            f[k, 0] = (px * cos + py * sin) / unit
            f[k, 1] = (px * -sin + py * cos) / unit
        for k in range(fpairs.shape[0]):
            ax = f[fpairs[k, 0], 0] - f[fpairs[k, 1], 0]
            ay = f[fpairs[k, 0], 1] - f[fpairs[k, 1], 1]
            fdist[k] = math.sqrt(ax * ax + ay * ay)
        feat_d[:] = 0.0
        feat_l[:] = 0.0
        for k in range(dk.size):
            feat_d[dj[k]] += fdist[dk[k]] * dw[k]
        for k in range(lm.size):
            feat_l[lj[k]] += f[lm[k] // 2, lm[k] % 2] * lw[k]
        for j in range(n_feat):
            feats[j] = feat_d[j] + feat_l[j]
        _one_euro(s, feats, t, feats_f, gx, gdx, gt, gready, g_min, g_beta, g_tau)
        # the running neutral: not in silence (the gate), and opening features only while the mouth is nearly closed
        k_n = min(1.0, dt / neutral_s) * g
        for j in range(n_feat):
            if has_neutral[s]:
                w = k_n * ((1.0 if openness < 0.3 else 0.0) if opening[j] else 1.0)
                neutral_feats[s, j] = neutral_feats[s, j] + (feats_f[j] - neutral_feats[s, j]) * w
            else:
                neutral_feats[s, j] = neutral_face_feats[s, j] if has_face[s] else feats_f[j]
        has_neutral[s] = True
        # ARKit weights (`blendshapes.blendshapes_from_features`)
        sh[:] = 0.0
        for k in range(d_shape.size):
            sh[d_shape[k]] = _clip((feats_f[d_feature[k]] - neutral_feats[s, d_feature[k]]) * shape_scale[k], 0.0, 1.0)
        jaw = sh[special[0]]
        sh[special[1]] = _clip(sh[special[1]] - jaw, 0.0, 1.0)
        narrow = sh[special[2]]
        sh[special[2]] = narrow * jaw
        sh[special[3]] = narrow * (1.0 - jaw)
        for side in range(2):
            stretch, smile, press = special[4 + 3 * side], special[5 + 3 * side], special[6 + 3 * side]
            sh[stretch] = sh[stretch] * (1.0 - sh[smile])
            sh[press] = sh[press] * (1.0 - jaw)
        b = _clip(value, 0.0, 1.0)
        sh[special[10]] = b
        sh[special[11]] = b
        for k in range(sh.size):
            shapes[i, k] = np.float32(sh[k])
        g32 = np.float32(g)
        for k in range(gated.size):
            shapes[i, gated[k]] = shapes[i, gated[k]] * g32
    return OK


@functools.cache
def load() -> Callable[..., int] | None:
    """The compiled `frame_pass` (numba dispatcher, compiled lazily per argument types; `BatchSignalExtractor`
    compiles it in `warm_up`), or None when numba is not installed, MSYNC_NO_NUMBA=1 is set, or numba is
    installed but cannot be loaded (`numba_jit.compile_with_numba`: the numpy code runs). Decided once per
    process."""
    return numba_jit.compile_with_numba(_decorate, "the signals loop", "deriving signals with numpy")


def _decorate(numba: Any, opts: dict[str, Any]) -> Callable[..., int]:
    """Wrap the loop and its helpers with numba (compiled at their first call). Raises what numba raises."""
    clip = numba.njit(inline="always")(_clip)
    glb = {**globals(), "_clip": clip}
    glb["_one_euro"] = numba.njit(**opts)(_rebind(_one_euro, glb))
    kernel: Callable[..., int] = numba.njit(**opts)(_rebind(frame_pass, glb))
    return kernel


def _rebind(fn: Callable[..., Any], glb: dict[str, Any]) -> Callable[..., Any]:
    """`fn` with its globals replaced by `glb` (so the compiled loop calls the compiled helpers)."""
    import types

    new = types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__qualname__, new.__module__ = fn.__qualname__, fn.__module__
    return new
