"""The viewer-facing columns of `msync eval` on the evaluation sequences: articulation against ground truth,
head pose and motion, blinks, and lip closure on bilabial phones (pocketsphinx phone recognition, offline).

Every row is scored by the same code (:mod:`training.metrics.viewer`); the shuffled-audio control is left out
(its landmarks are ground truth's). Per-clip values are computed on the clip's evaluation sequences joined in
time order (articulation with each sequence's gap centred on its own mean: every sequence starts from its own
reference face), then summarised as the median over clips; head ranges and energies are per sequence (the same
80-frame length for every row), averaged. Ratios are against ground truth's value of the same statistic.
"""

from __future__ import annotations

import math

import numpy as np

from stream_engine.signals import stream_seed
from training.eval.sequences import GT, SHUFFLED
from training.metrics import viewer as vm

SPF = 640  # audio samples per landmark frame
WINDOWS_S = (0.8, 1.6)  # head speed vs speech envelope
CLOSED_AT = 0.04  # IOD: a bilabial counts as closed when the gap gets this small (GT closed mouth ~0.025)


def references(inputs) -> list[np.ndarray]:
    """The reference face of every evaluation sequence (the GT frame before it, as generation uses), (68, 2)."""
    out = []
    for s in inputs.sequences:
        seg = inputs.segment_of(s.clip_id, s.start_frame)
        k = s.start_frame - seg.start_frame
        out.append(seg.landmarks[k - 1] if k >= 1 else s.landmarks[0])
    return out


def frame_dbfs(pcm: np.ndarray, start: int, num_frames: int) -> np.ndarray:
    """(num_frames,) RMS level in dBFS of landmark frames [start, start + num_frames) of `pcm` (-120 past its end)."""
    seg = np.zeros(num_frames * SPF)
    part = np.asarray(pcm[start * SPF : (start + num_frames) * SPF], np.float64)
    seg[: len(part)] = part
    rms = np.sqrt((seg.reshape(num_frames, SPF) ** 2).mean(axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-6))


def phone_recogniser():
    """pocketsphinx's English phone recogniser (acoustic model and phone language model ship in its wheel), or
    None when pocketsphinx is not installed."""
    import os

    try:
        import pocketsphinx
    except ImportError:
        return None

    mp = pocketsphinx.get_model_path()
    cfg = pocketsphinx.Config(
        hmm=os.path.join(mp, "en-us", "en-us"),
        allphone=os.path.join(mp, "en-us", "en-us-phone.lm.bin"),
        lw=2.0,
        beam=1e-20,
        pbeam=1e-20,
        loglevel="FATAL",
    )
    return pocketsphinx.Decoder(cfg)


def phones(dec, pcm: np.ndarray) -> list[tuple[str, int, int]]:
    """Phone segments of 16 kHz PCM by the recogniser `dec` (:func:`phone_recogniser`): [(phone, first frame,
    last frame)] at 25 fps. Phone recognition without a transcript: expect errors, use for statistics."""
    dec.start_utt()
    dec.process_raw((np.clip(pcm, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
    dec.end_utt()
    return [(s.word, s.start_frame // 4, s.end_frame // 4) for s in dec.seg()]


def engine_blinks(
    x: np.ndarray, reference: np.ndarray, level_dbfs: np.ndarray, blink_mode: str | None = None, seed: int = 0
) -> tuple[int, int]:
    """(blinks, frames with blink > 0.5) of the engine's `blink` signal over one stream: `SignalExtractor` with
    the default `SignalConfig` (what `msync stream` sends: procedural blinks, mode "auto"), or with
    `blink_mode` ("landmarks", "both": the eye aspect ratio of the landmarks counts too); `seed` seeds the
    procedural blinks."""
    import dataclasses

    from stream_engine.signals import SignalConfig, SignalExtractor

    cfg = SignalConfig() if blink_mode is None else dataclasses.replace(SignalConfig(), blink_mode=blink_mode)
    ex = SignalExtractor(cfg, reference_face=reference, seed=seed)
    closed = np.array([ex.update(p, t * 0.04, float(level_dbfs[t])).blink > 0.5 for t, p in enumerate(x)])
    edges = np.diff(np.concatenate([[0], closed.astype(int), [0]]))
    return int((edges == 1).sum()), int(closed.sum())


def _clip_groups(items, sequences) -> dict[str, list]:
    by_clip: dict[str, list] = {}
    for i, lm, _ in items:
        by_clip.setdefault(sequences[i].clip_id, []).append((sequences[i].start_frame, i, lm))
    return {c: sorted(v, key=lambda t: t[0]) for c, v in by_clip.items()}


def _median(values) -> float:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    return float(np.median(v)) if len(v) else math.nan


def _mean(values) -> float:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    return float(v.mean()) if len(v) else math.nan


def history_pieces(group, history_frames: int) -> tuple[list[int], list[int]]:
    """Frames of one clip's joined sequences whose stream had real audio for its whole receptive field.

    `group`: [(start frame, sequence index, landmarks (T, 68, 2))] sorted by start, as `_clip_groups` gives;
    `history_frames`: the receptive field in frames (a frame f < history_frames of the clip is generated from
    audio padded with digital silence before the clip's first sample, while ground truth's face there was made
    by speech that is not in the clip). Returns (kept frame indices into the joined clip, lengths of the kept
    pieces); a piece left with fewer than 10 frames is dropped.
    """
    keep: list[int] = []
    pieces: list[int] = []
    offset = 0
    for s, _, lm in group:
        drop = min(len(lm), max(0, history_frames - s))
        if len(lm) - drop >= 10:
            keep.extend(range(offset + drop, offset + len(lm)))
            pieces.append(len(lm) - drop)
        offset += len(lm)
    return keep, pieces


def method_columns(
    items, inputs, refs, phone_cache: dict, num_levels: int = 4, kernel: int = 7, history_frames: int = 0
) -> dict:
    """Raw viewer statistics of one row (before ratios to ground truth). `items`: [(sequence index, landmarks,
    mfcc)] as in `method_inputs`; `refs`: per-sequence reference faces; `phone_cache`: clip id -> phones;
    `history_frames`: receptive field in frames for the `*_history` articulation columns (see `history_pieces`;
    0 = every frame, the same as `r_lag0`)."""
    seqs = inputs.sequences
    gt_by_index = {i: s.landmarks for i, s in enumerate(seqs)}
    art, art_h, bias, blink_runs, bil = [], [], [], [], []
    corr: dict[float, list[float]] = {w: [] for w in WINDOWS_S}
    total_blinks = total_frames = sig_blinks = sig_closed = 0
    gaps_all = []
    for cid, group in _clip_groups(items, seqs).items():
        pred = np.concatenate([lm for _, _, lm in group])
        gt = np.concatenate([gt_by_index[i] for _, i, _ in group])
        art.append(vm.articulation(pred, gt, pieces=[len(lm) for _, _, lm in group]))
        keep, kept_pieces = history_pieces(group, history_frames)
        if kept_pieces:
            art_h.append(vm.articulation(pred[keep], gt[keep], pieces=kept_pieces))
        angles = np.concatenate([vm.head_angles(lm, refs[i]) for _, i, lm in group])
        bias.append(np.median(angles, axis=0))
        speed = np.concatenate([vm.head_speed(lm, refs[i]) for _, i, lm in group])
        level = np.concatenate([frame_dbfs(inputs.pcm[cid], s, len(lm)) for s, _, lm in group])
        for w in WINDOWS_S:
            corr[w].append(vm.smoothed_correlation(speed, np.maximum(level, -60.0), int(round(w * vm.FPS))))
        # One stream per clip (its sequences joined, seeded by the clip): 80-frame streams of one seed would all
        # end before their first procedural blink (2-8 s apart).
        nb, nc = engine_blinks(pred, refs[group[0][1]], level, seed=stream_seed(0, cid) or 0)
        sig_blinks, sig_closed = sig_blinks + nb, sig_closed + nc
        b = vm.blinks(pred)
        total_blinks += int(b["count"])
        total_frames += len(pred)
        if b["count"]:
            blink_runs.append((b["blink_ms"], b["count"]))
        ph = phone_cache.get(cid)
        gaps = [vm.lip_gap(lm) for _, _, lm in group]
        gaps_all.append(np.concatenate(gaps))
        if ph is not None:
            for (s, _, _), g in zip(group, gaps):
                bil += vm.bilabial_closure(g, [(p, a - s, b_ - s) for p, a, b_ in ph])["min_gap"]
    pose = [vm.head_pose_stats(vm.head_angles(lm, refs[i])) for i, lm, _ in items]
    energy = np.array([vm.head_energy(lm, num_levels, kernel) for _, lm, _ in items]) if items else np.zeros((0, 4))
    minutes = total_frames / vm.FPS / 60.0
    out = {
        "clips": len(art),
        "r_lag0": _median([a["r_lag0"] for a in art]),
        "r_best": _median([a["r_best"] for a in art]),
        "best_lag_frames": _median([a["best_lag_frames"] for a in art]),
        "amplitude_ratio": _median([a["amplitude_ratio"] for a in art]),
        "history_frames": history_frames,
        "clips_history": len(art_h),
        "r_lag0_history": _median([a["r_lag0"] for a in art_h]),
        "r_best_history": _median([a["r_best"] for a in art_h]),
        "gap_p5": _median([a["gap_p5"] for a in art]),
        "gap_p95": _median([a["gap_p95"] for a in art]),
        "head_energy": [_mean(energy[:, lvl]) for lvl in range(energy.shape[1])],
        # per sequence, by index, for the paired ratio of `with_ratios`
        "head_energy_by_sequence": {int(i): [float(x) for x in e] for (i, _, _), e in zip(items, energy)},
        "yaw_range": _mean([p["yaw_range"] for p in pose]),
        "pitch_range": _mean([p["pitch_range"] for p in pose]),
        "roll_range": _mean([p["roll_range"] for p in pose]),
        "yaw_bias": _median([b[0] for b in bias]),
        "pitch_bias": _median([b[1] for b in bias]),
        "roll_bias": _median([b[2] for b in bias]),
        **{f"speed_envelope_r_{w:g}s": _median(corr[w]) for w in WINDOWS_S},
        "blinks_per_min": total_blinks / minutes if minutes > 0 else math.nan,
        "blink_ms": (sum(ms * n for ms, n in blink_runs) / sum(n for _, n in blink_runs) if blink_runs else math.nan),
        "signal_blinks_per_min": sig_blinks / minutes if minutes > 0 else math.nan,
        "signal_blink_closed_share": sig_closed / total_frames if total_frames else math.nan,
        "bilabial_events": len(bil),
        "bilabial_min_gap_median": _median(bil),
        "bilabial_closed_share": float(np.mean(np.array(bil) <= CLOSED_AT)) if bil else math.nan,
        "gap_median_all": float(np.median(np.concatenate(gaps_all))) if gaps_all else math.nan,
    }
    return out


RATIO_KEYS = ("yaw_range", "pitch_range", "roll_range")


def with_ratios(cols: dict[str, dict]) -> dict[str, dict]:
    """Add `*_ratio` entries (row / ground truth) for the head energies and ranges.

    `head_energy_ratio` is the ratio of the means over sequences; a few sequences with large head movements
    dominate both means. `head_energy_ratio_median` is the median over sequences of the row's energy ÷ ground
    truth's on the same sequence (sequences where ground truth's is 0 left out): how a typical sequence moves.
    """
    gt = cols[GT]
    gt_seq = gt.get("head_energy_by_sequence", {})
    for c in cols.values():
        c["head_energy_ratio"] = [
            v / g if g and np.isfinite(g) and g > 0 else math.nan for v, g in zip(c["head_energy"], gt["head_energy"])
        ]
        paired = [
            [e / g if g > 0 else math.nan for e, g in zip(c["head_energy_by_sequence"][i], gt_seq[i])]
            for i in c.get("head_energy_by_sequence", {})
            if i in gt_seq
        ]
        c["head_energy_ratio_median"] = [_median([p[lvl] for p in paired]) for lvl in range(len(c["head_energy"]))]
        for k in RATIO_KEYS:
            c[f"{k}_ratio"] = c[k] / gt[k] if gt[k] and np.isfinite(gt[k]) and gt[k] > 0 else math.nan
    return cols


def viewer_columns(
    rows: dict, inputs, num_levels: int = 4, kernel: int = 7, use_phones: bool = True, history_frames: int = 0
) -> dict:
    """{method: columns} for every row but the shuffled-audio control, plus `"_phones"` (recogniser status).
    `history_frames`: the receptive field (frames) for the `*_history` articulation columns, the same for
    every row so that all are scored on the same frames (see `history_pieces`)."""
    refs = references(inputs)
    phone_cache: dict = {}
    status = "off"
    if use_phones:
        dec = phone_recogniser()
        status = "not installed" if dec is None else "pocketsphinx"
        if dec is not None:
            for cid in sorted({s.clip_id for s in inputs.sequences}):
                phone_cache[cid] = phones(dec, inputs.pcm[cid])
    cols = {
        m: method_columns(items, inputs, refs, phone_cache, num_levels, kernel, history_frames)
        for m, items in rows.items()
        if m != SHUFFLED
    }
    return {"methods": with_ratios(cols), "phones": status, "closed_at": CLOSED_AT}
