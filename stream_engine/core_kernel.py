"""The engine core's per-batch passes as compiled loops (numba): push, ready-slot selection, take, commit.

`EngineCore.push_audio_many`, `take_batch` and `commit_batch` in numpy are a few dozen array operations per
call plus a Python loop over the chunks (the checks and the ring scatter); at the engine's sizes (512 chunks of
320 samples a round, batches of 64) most of their cost is numpy's and Python's per-call overhead, not the
arithmetic: push 4.4, take 2.7, commit 1.4 us per frame in the engine at 512 streams
(benchmarks/results/engine_14j.md). The loops here do the same recipe slot by slot in one compiled call each,
reading and writing the core's per-slot arrays in place. The numpy code in `core` stays the reference and the
fallback; both give the same state arrays, batches and frames bit for bit (tests/test_core_kernel.py). What
needs Python objects (errors, the overflow and next-epoch queues, the state store's row inits, returning pages
to the OS, stream ids) stays in `core`: a loop reports the slots that need it by a code.

Per-slot arrays as the loops take them: `ints` (len(INT_FIELDS), slots) int64 and `bools` (len(BOOL_FIELDS),
slots) bool, one row per field (the core's `_epoch`, `_ring_w`, ... are views of these rows); the audio ring
(slots, ring_steps, samples_per_frame) float32 and its flat view (slots, ring_steps x samples_per_frame);
`ready_ns` / `fill_mark` (slots, ring_steps); `lvl` (slots, L + 1) float64 and `lvl_stalled` (slots, L + 1).

Levels (the RMS of each taken step) are left to the caller (`core._levels_dbfs`, numpy's float32 einsum): a
compiled sum would add in another order and differ in the last bits.

Compilation and cache: `numba_jit`'s policy, as for `signal_kernel` (its cache directory, `MSYNC_NO_NUMBA=1`
for numpy, a broken numba logged and skipped); the first use in a process compiles (a few seconds cold, then
loaded from the cache); `EngineCore.warm_up` (run by `Engine.start`) does it before any live frame.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from stream_engine import numba_jit

log = logging.getLogger(__name__)

#: rows of `ints`, in order (the core's per-slot int64 arrays are `_<name>`)
INT_FIELDS = (
    "epoch",  # epochs begun before the current one
    "ring_w",  # samples of the epoch written into the ring
    "taken",  # steps of the epoch handed to the runner (the ring's read position is taken x spf)
    "committed",  # steps of the epoch committed
    "epoch_start",  # stream sample index where the epoch began
    "seq",  # next frame's sequence number
    "ending",  # flush: the epoch ends after this many steps (-1: not flushing)
    "base",  # the step of the epoch in ring row 0
    "runout",  # when the real audio received so far would have played out at 1x (core._NO_RUNOUT: none yet)
    "over_n",  # samples waiting in the overflow queue
    "received",  # samples accepted over the stream's life (real + stall silence: the sample clock)
    "epoch_in",  # samples of the epoch pushed (real, stall silence, flush padding; ring + overflow)
    "epoch_real",  # real samples of the epoch
    "stall_filled",  # silence added in the current stall (samples)
)
#: rows of `bools`, in order
BOOL_FIELDS = (
    "open",  # a stream holds the slot
    "in_flight",  # a step of the slot is in a taken batch
    "needs_init",  # reset while in flight: the state store's row is initialised at commit
    "stalled",  # being fed silence (`EngineCore.fill_stalls`)
)
EPOCH, RING_W, TAKEN, COMMITTED, EPOCH_START, SEQ, ENDING, BASE, RUNOUT, OVER_N = range(10)
RECEIVED, EPOCH_IN, EPOCH_REAL, STALL_FILLED = range(10, 14)
OPEN, IN_FLIGHT, NEEDS_INIT, STALLED = range(4)

#: `push_pass` codes per chunk: taken; for `core` to do as `push_audio` does (overflow, flush, stall, the same
#: stream twice in the call, over the pending limit); unknown stream; nothing to do (empty, or refused before
#: the loop)
PUSH_DONE, PUSH_SLOW, PUSH_UNKNOWN, PUSH_SKIP = range(4)
#: `commit_pass` codes per batch row: committed; slot closed meanwhile; reset meanwhile (stale output);
#: non-finite landmarks
COMMIT_OK, COMMIT_CLOSED, COMMIT_STALE, COMMIT_NOT_FINITE = range(4)


def push_pass(
    rows: np.ndarray,
    flat: np.ndarray,
    offsets: np.ndarray,
    sizes: np.ndarray,
    times: np.ndarray,
    ints: np.ndarray,
    bools: np.ndarray,
    ring_flat: np.ndarray,
    ready_ns: np.ndarray,
    spf: int,
    ring_steps: int,
    max_pending: int,
    rate: int,
    codes: np.ndarray,
) -> None:
    """`EngineCore.push_audio_many`'s common case for K chunks: chunk i is samples flat[offsets[i]:offsets[i] +
    sizes[i]] (finite: checked by the caller) for slot rows[i] (-1: unknown stream, -2: refused before the loop)
    arriving at times[i] (ns).
    Writes codes[i] (PUSH_*); the chunks coded PUSH_DONE are in the rings with their counters updated, the
    others untouched. The fast case is decided on the state before the call, as the numpy code does: room in
    the ring within the pending limit, nothing in overflow, not flushing, not stalled, and no slot twice among
    the chunks to take (then every chunk goes the slow way, in order)."""
    k = rows.size
    seen = np.zeros(bools.shape[1], dtype=np.int64)
    twice = False
    for i in range(k):  # the checks, in `_checked`'s order
        row = rows[i]
        if row == -2:
            codes[i] = PUSH_SKIP
            continue
        if row < 0:
            codes[i] = PUSH_UNKNOWN
            continue
        if sizes[i] == 0:
            codes[i] = PUSH_SKIP
            continue
        codes[i] = PUSH_DONE
        seen[row] += 1
        if seen[row] > 1:
            twice = True
    R = ring_steps * spf
    limit = min(R, max_pending)
    for i in range(k):
        if codes[i] != PUSH_DONE:
            continue
        row = rows[i]
        if twice:
            codes[i] = PUSH_SLOW
            continue
        n = sizes[i]
        w = ints[RING_W, row]
        over = ints[OVER_N, row]
        pending = w - ints[TAKEN, row] * spf + over
        if pending + n > limit or ints[ENDING, row] >= 0 or over != 0 or bools[STALLED, row]:
            codes[i] = PUSH_SLOW
            continue
        t = times[i]
        runout = ints[RUNOUT, row]
        ints[RUNOUT, row] = (t if t > runout else runout) + n * 1_000_000_000 // rate
        ints[RECEIVED, row] += n
        ints[EPOCH_IN, row] += n
        ints[EPOCH_REAL, row] += n
        base = ints[BASE, row]
        pos = (w - base * spf) % R
        o = offsets[i]
        head = min(n, R - pos)
        ring_flat[row, pos : pos + head] = flat[o : o + head]  # slices: numba copies them 2x faster than a loop
        if head < n:
            ring_flat[row, : n - head] = flat[o + head : o + n]
        for step in range(w // spf, (w + n) // spf):  # steps whose last sample is in this chunk
            ready_ns[row, (step - base) % ring_steps] = t
        ints[RING_W, row] = w + n


def select_pass(
    ints: np.ndarray, bools: np.ndarray, spf: int, rr_row: int, limit: int, cut_at_end: bool = False
) -> tuple[np.ndarray, int]:
    """The slots `take_batch` takes: open, not in flight, a full step in the ring; all of them ascending when
    at most `limit`, else round robin: `limit` of them in slot order from the first at or after `rr_row`,
    wrapping to the first slots, returned ascending. With `cut_at_end` (a double-buffered store) and at least
    half of `limit` left from there to the last ready slot, the call stops at the last one instead of
    wrapping, so it is one ascending run (one contiguous range of the store when every slot is ready, which
    the runner steps with no copy of the state); a shorter tail wraps, so no call is small. It costs more
    calls (a backlog of 1.5 calls' streams alternates full and half calls), which only a store that steps
    ranges in place repays. Either way calls follow slot order round the store. Returns (rows int64, the next
    rr_row: the slot after the last one picked in that order)."""
    cap = bools.shape[1]
    ready = np.empty(cap, dtype=np.int64)
    count = 0
    for row in range(cap):
        if bools[OPEN, row] and not bools[IN_FLIGHT, row] and ints[RING_W, row] - ints[TAKEN, row] * spf >= spf:
            ready[count] = row
            count += 1
    if count <= limit:
        return ready[:count].copy(), rr_row
    start = 0
    while start < count and ready[start] < rr_row:
        start += 1
    if start == count:
        start = 0
    tail = count - start
    if tail >= limit or (cut_at_end and 2 * tail >= limit):  # no wrap: one ascending run of at most `limit`
        stop = start + min(limit, tail)
        return ready[start:stop].copy(), ready[stop - 1] + 1
    wrapped = limit - tail  # the tail, then the first `wrapped` ready slots: returned ascending
    out = np.empty(limit, dtype=np.int64)
    for m in range(wrapped):
        out[m] = ready[m]
    for m in range(tail):
        out[wrapped + m] = ready[start + m]
    return out, ready[wrapped - 1] + 1


def take_pass(
    rows: np.ndarray,
    ints: np.ndarray,
    bools: np.ndarray,
    ring: np.ndarray,
    ready_ns: np.ndarray,
    fill_mark: np.ndarray,
    lvl_stalled: np.ndarray,
    spf: int,
    release_after: int,
    audio: np.ndarray,
    cols: np.ndarray,
    flags: np.ndarray,
) -> None:
    """`take_batch`'s pass over its rows (ascending, distinct): each slot's next step into audio[i] (clipped to
    [-1, 1]); cols (3, B) int64 gets the epochs, step indices and audio-ready times; the step's stall mark into
    `lvl_stalled`, the take counted, the slot in flight; then, when less than a step is left, the partial step
    to ring row 0 and the base to the next step. flags[i]: -1 the slot has overflow audio (the caller refills
    it and does the base move itself), 0 done, s > 0 the base moved after s ring rows were used, more than
    `release_after` (the caller gives their pages back)."""
    S = ring.shape[1]
    A = lvl_stalled.shape[1]
    for i in range(rows.size):
        row = rows[i]
        k = ints[TAKEN, row]
        base = ints[BASE, row]
        ks = (k - base) % S
        for m in range(spf):  # clipped to [-1, 1] (np.minimum(np.maximum(x, -1), 1))
            audio[i, m] = min(max(ring[row, ks, m], np.float32(-1.0)), np.float32(1.0))
        stalled = fill_mark[row, ks]
        fill_mark[row, ks] = False
        cols[0, i] = ints[EPOCH, row]
        cols[1, i] = k
        cols[2, i] = ready_ns[row, ks]
        lvl_stalled[row, k % A] = stalled
        ints[TAKEN, row] = k + 1
        bools[IN_FLIGHT, row] = True
        flags[i] = 0
        if ints[OVER_N, row] > 0:
            flags[i] = -1
            continue
        nxt = (ks + 1) % S
        if nxt != 0 and ints[RING_W, row] - (k + 1) * spf < spf:
            ring[row, 0] = ring[row, nxt]
            fill_mark[row, 0] = fill_mark[row, nxt]
            fill_mark[row, nxt] = False
            span = k + 1 - base
            ints[BASE, row] = k + 1
            if span > release_after:
                flags[i] = span


def commit_pass(
    rows: np.ndarray,
    cols: np.ndarray,
    landmarks: np.ndarray,
    ints: np.ndarray,
    bools: np.ndarray,
    lvl: np.ndarray,
    lvl_stalled: np.ndarray,
    lookahead: int,
    spf: int,
    rate: int,
    codes: np.ndarray,
    done: np.ndarray,
    keep: np.ndarray,
    out_ints: np.ndarray,
    out_floats: np.ndarray,
    out_stalled: np.ndarray,
) -> int:
    """`commit_batch`'s pass over a batch's rows (cols (3, B): epochs, step indices, audio-ready times as in
    `take_pass`; landmarks (B, N, D) float32). codes[i] (COMMIT_*): only COMMIT_OK rows are changed here (the
    others are the caller's: free a closed slot, initialise a reset one, restart a non-finite one); every slot
    of a live row leaves flight. For each COMMIT_OK row the step is counted, and when it makes a frame
    (step >= look-ahead) the frame's batch position goes to keep[m], its seq, epoch, index j, pts (ns) and
    audio-ready time to out_ints[:, m], its level and look-ahead level to out_floats[:, m], its stall mark to
    out_stalled[m], and the slot's seq moves on. done[i]: a flushed epoch has now committed its last step.
    Returns m, the number of frames."""
    A = lvl.shape[1]
    m = 0
    for i in range(rows.size):
        row = rows[i]
        done[i] = False
        if not bools[OPEN, row]:
            codes[i] = COMMIT_CLOSED
            continue
        bools[IN_FLIGHT, row] = False
        if bools[NEEDS_INIT, row] or ints[EPOCH, row] != cols[0, i]:
            codes[i] = COMMIT_STALE
            continue
        finite = True
        for a in range(landmarks.shape[1]):
            for b in range(landmarks.shape[2]):
                if not np.isfinite(landmarks[i, a, b]):
                    finite = False
        if not finite:
            codes[i] = COMMIT_NOT_FINITE
            continue
        codes[i] = COMMIT_OK
        committed = ints[COMMITTED, row] + 1
        ints[COMMITTED, row] = committed
        k = cols[1, i]
        if k >= lookahead:
            j = k - lookahead
            level = lvl[row, j % A]
            ahead = level
            if lookahead:
                ahead = lvl[row, (j + 1) % A]
                for a in range(2, A):
                    x = lvl[row, (j + a) % A]
                    if x > ahead:
                        ahead = x
            seq = ints[SEQ, row]
            ints[SEQ, row] = seq + 1
            start = ints[EPOCH_START, row] + j * spf
            keep[m] = i
            out_ints[0, m] = seq
            out_ints[1, m] = ints[EPOCH, row]
            out_ints[2, m] = j
            out_ints[3, m] = (start // rate) * 1_000_000_000 + (start % rate) * 1_000_000_000 // rate
            out_ints[4, m] = cols[2, i]
            out_floats[0, m] = level
            out_floats[1, m] = ahead
            out_stalled[m] = lvl_stalled[row, j % A]
            m += 1
        ending = ints[ENDING, row]
        done[i] = ending >= 0 and committed >= ending
    return m


class Kernels:
    """The compiled passes (numba dispatchers): push, select, take, commit."""

    def __init__(self, push: Any, select: Any, take: Any, commit: Any) -> None:
        self.push, self.select, self.take, self.commit = push, select, take, commit


@functools.cache
def load() -> Kernels | None:
    """The compiled passes, or None when numba is not installed, MSYNC_NO_NUMBA=1 is set, or numba cannot be
    used (`numba_jit.compile_with_numba`); decided once per process. Compiled lazily at their first call (per
    argument types): `EngineCore.warm_up` calls each once."""
    return numba_jit.compile_with_numba(_decorate, "the core's passes", "the core's passes run in numpy")


def _decorate(numba: Any, opts: dict[str, Any]) -> Kernels:
    return Kernels(
        numba.njit(**opts)(push_pass),
        numba.njit(**opts)(select_pass),
        numba.njit(**opts)(take_pass),
        numba.njit(**opts)(commit_pass),
    )
