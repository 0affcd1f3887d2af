"""The Markdown reports of `msync eval` and `msync eval-sync`: the shared tables (synchrony per level, motion)
and checks, the conditions, and the JSON writer (strict JSON: NaN -> null)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from training.eval.scoring import MIN_CHECK_SEQUENCES
from training.eval.sequences import GT

REFERENCE_TEXT = {
    "previous": "the GT frame before each sequence",
    "first": "the clip's first frame, one stream per clip",
}


def finite_json(obj):
    """JSON-safe copy: NaN/inf become null (strict JSON has no NaN), numpy scalars become Python ones."""
    if isinstance(obj, dict):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, result: dict) -> None:
    path.write_text(json.dumps(finite_json(result), indent=1, allow_nan=False))


# ----------------------------------------------------------------------------------------------- shared pieces


def pm(s: dict | None, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    """ "mean±std" of a `mean_std` summary times `scale`, or "–" when it has no finite values."""
    if not s or not s.get("n") or s.get("mean") is None or not np.isfinite(s["mean"]):
        return "–"
    return f"{fmt.format(s['mean'] * scale)}±{fmt.format(s['std'] * scale)}"


def num(v, fmt: str = "{:.3g}") -> str:
    """A number formatted with `fmt`, or "–" for None / non-finite."""
    return "–" if v is None or not np.isfinite(v) else fmt.format(v)


def fd_cells(s: dict) -> list[str]:
    return [num(e["fd"]) for e in s["fd_motion"]]


def sync_table(rows: dict, num_levels: int) -> list[str]:
    head = ["Method", "n"]
    for lvl in range(num_levels):
        head += [f"\\|AV-Off{lvl + 1}\\| ↓ ({int(200 * 2**lvl)} ms)", f"AV-Conf{lvl + 1} ↑"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows.items():
        row = [name, str(s["n"]) + (f" ({s['non_finite_sequences']} NaN)" if s.get("non_finite_sequences") else "")]
        for lv in s["levels"]:
            row += [pm(lv["abs_offset"]), pm(lv["confidence"])]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def dyn_table(rows: dict, num_levels: int, with_lmd: bool) -> list[str]:
    head = (
        ["Method"]
        + (["M-LMD (px) ↓", "F-LMD (px) ↓"] if with_lmd else [])
        + ["velocity", "accel.", "E_0", f"E_{num_levels - 1}", "mouth open", "mouth open std"]
        + [f"FD-motion L{l} ↓" for l in range(num_levels)]
        + ["plausible ↑"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows.items():
        mo = s["motion"]
        row = [name]
        if with_lmd:
            row += [pm(s["lmd"].get("m_lmd_px")), pm(s["lmd"].get("f_lmd_px"))]
        row += [
            pm(mo.get("velocity"), 1e3),
            pm(mo.get("acceleration"), 1e3),
            pm(mo.get("head_energy_l0"), 1e6),
            pm(mo.get(f"head_energy_l{num_levels - 1}"), 1e6),
            pm(mo.get("mouth_open_mean"), 1e2),
            pm(mo.get("mouth_open_std"), 1e2),
        ]
        row += fd_cells(s) + [num(100 * s["plausible"], "{:.1f} %")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def checks_lines(c: dict, heading: str, all_pass_label: str, valid: dict | None = None) -> list[str]:
    """The checks section (see `training.eval.scoring.checks`), as both reports print it; failures in bold.
    `valid`: the same checks with valid padding, shown too when `c` used another padding (zero padding lets a
    static face's padded windows score, so its checks pass more easily)."""

    def block(c: dict, title: str) -> list[str]:
        def flags(key: str) -> str:
            ratios = c.get(f"gt_conf_ratio_{key}")
            if ratios is None:  # results written before the margin existed
                return str(c[f"gt_conf_above_{key}"])
            return ", ".join(
                (f"{r:.2f}×" if ok else f"**{r:.2f}× FAIL**") for r, ok in zip(ratios, c[f"gt_conf_margin_{key}"])
            )

        off_ok = c["gt_median_abs_offset_l0_le_1"]
        n = c.get("sequences")
        few = (
            [
                f"- **Only {n} sequences**: fewer than {MIN_CHECK_SEQUENCES}, so these ratios are too noisy to pass or "
                "fail the metric; the targets are stated for ../shared's whole test split (42 sequences of 80 frames)."
            ]
            if n is not None and n < MIN_CHECK_SEQUENCES
            else []
        )
        return [
            f"{title}:",
            *few,
            f"- GT AV-Conf ÷ static face, per level (target ≥ 1.10×): {flags('static_face')}",
            f"- GT AV-Conf ÷ shuffled audio, per level (target ≥ 1.10×): {flags('shuffled_audio')}",
            f"- GT median |AV-Off| at 200 ms = {num(c['gt_median_abs_offset_l0'], '{:g}')} "
            + ("(≤ 1: pass)" if off_ok else "(**> 1: FAIL**)"),
            f"- {all_pass_label}: " + ("pass" if c["all_pass"] else "**FAIL**"),
        ]

    used = c.get("padding")
    lines = ["", heading, ""] + block(c, f"With the padding of the tables above ({used or 'as configured'!r})")
    if valid is not None:
        lines += [""] + block(valid, "With valid padding (only real audio in every shifted window: the issue's target)")
    return lines


# ----------------------------------------------------------------------------------------------- msync eval


def _levels_text(meta: dict) -> str:
    """ " Levels: 200 ms: pooled, trained; ..." from the meta of a report (empty for reports older than it)."""
    levels = meta.get("syncer_levels")
    return f" Levels: {'; '.join(levels)}." if levels else ""


def _clips(meta: dict) -> str:
    """The "N clips" text (clips with a scored sequence), with how many --max-clips selected when some gave none."""
    n, selected = meta["num_clips"], meta.get("clips_selected")
    return f"{n} clips" if selected in (None, n) else f"{n} clips (of {selected} selected; the rest too short)"


def _conditions(meta: dict, cfg: dict) -> list[str]:
    mach = meta["machine"]
    lines = [
        "# msync eval: synchrony, dynamics and drift",
        "",
        "## Conditions",
        "",
        f"- Data: split `{meta['split']}` of `{meta['data_dir']}` (speaker-disjoint): {_clips(meta)}, "
        f"{meta['num_identities']} identities, {meta['num_sequences']} sequences of {meta['seq_frames'] or 'whole-segment'} "
        f"frames ({meta['segments_too_short']} segments too short).",
        f"- Metric syncers: `{meta['metric_syncers']}` (loss {meta['syncer_loss']}, step {meta['syncer_step']}, "
        f"centring {meta['landmark_centering']!r}); vshift {cfg['vshift']}, padding {cfg['padding']!r}."
        + _levels_text(meta),
        f"- Generation: reference face = {REFERENCE_TEXT[cfg['reference']]}; "
        "audio from W frames before (receptive field, silence before the clip), look-ahead L from each model's config; "
        f"initial LSTM noise seeded per sequence (seed {cfg['seed']}, identical for every model).",
        f"- Machine: {mach.get('cpu')} ({mach.get('logical_cpus')} logical CPUs, load {num(mach.get('load_avg_1m'), '{:.2f}')}), "
        f"device {meta['device']}, torch {mach.get('torch')}, {mach.get('time_utc')}; "
        f"total wall time {num(meta['wall_s'], '{:.0f}')} s.",
    ]
    for name, m in meta["models"].items():
        td = m.get("training_data") or {}
        lines.append(
            f"- Model `{name}`: `{m['path']}` (step {m['step']}, L = {m['lookahead_frames']} frames = "
            f"{m['lookahead_ms']} ms, {m['parameters'] / 1e6:.2f} M parameters, trained on "
            f"{td.get('minutes', '?')} min / {td.get('identities', '?')} identities; generation "
            f"{meta['generation_seconds'].get(name, float('nan')):.1f} s)."
        )
    for w in meta["warnings"]:
        lines.append(f"- **Warning**: {w}")
    return lines


def _how_to_read(meta: dict) -> list[str]:
    sp = meta["shape_space"]
    return [
        "",
        "## How to read",
        "",
        "Ground truth is the ceiling and the static face / shuffled audio rows are the floor: a useful model sits "
        "between, close to ground truth on AV-Conf (higher = the metric syncer is surer that lips and audio "
        "belong together) with |AV-Off| near 0 at every scale (1 unit of |AV-Off1…4| = 40 / 80 / 160 / 320 ms). The loudness mouth is "
        "today's alternative: it can score on the finest scale (the mouth follows syllable energy) but has no "
        "head motion and no articulation, which the coarse scales, the motion statistics and FD-motion expose. "
        "LMD is only meaningful with the `previous` reference (same start frame as GT). For the drift tables, compare "
        "each model's rows with its own short-sequence row and with ground truth: synchrony that holds, velocity "
        "that neither dies out nor explodes, and plausibility near ground truth's over 10 minutes mean no drift. "
        "Mean ± std over sequences.",
        "",
        f"**{meta['fd_name']}**: FVD needs I3D weights, which are not available offline (and our output is "
        "landmarks, not video). FD-motion is the Fréchet distance (FID formula, d²) between Gaussian fits of the "
        "metric syncers' landmark-encoder embeddings of every 5-sample window at level l (200·2^l ms) of ground truth "
        "and of the method, on the same sequences (at a composite level of the pyramid, e.g. 800 and 1600 ms of "
        "metric syncers v4: the 200 ms embeddings of the sub-windows that tile each window, concatenated). It is "
        "not comparable with published FVD numbers, and it is "
        "biased upwards for small sets (coarse levels have few windows): the split-half floor below is what two "
        "halves of ground truth score.",
        "",
        f"**Plausible**: share of frames whose distance to a PCA face-shape space (Procrustes-aligned: translation, "
        f"scale, in-plane rotation removed; {sp['num_components']} components fitted on {sp['num_train_frames']} "
        f"training-split frames{' of ' + sp['source'] if sp.get('source') else ''}; probabilistic-PCA distance) is within the {sp['quantile']:g}th percentile of the "
        f"evaluated split's GT frames (threshold {num(sp['threshold'])}), so ground truth scores ≈ "
        f"{sp['quantile']:g} % by construction.",
        "",
        "## 1. Multi-scale synchrony (paper Table 3 layout)",
        "",
    ]


def _drift_section(result: dict, num_levels: int) -> list[str]:
    meta = result["meta"]
    lines: list[str] = []
    if result["drift"]:
        lines += [
            "",
            "## 3. Drift: the same metrics on the last frames of longer rollouts",
            "",
            f"Each row scores the last {meta['tail_frames']} frames of every rollout of its kind (no ground "
            "truth exists for looped audio, so no LMD); FD-motion against the GT features of section 2.",
            "",
        ]
        lines += sync_table(result["drift"], num_levels)
        lines += [""] + dyn_table(result["drift"], num_levels, with_lmd=False)
    return lines


def _long_rollout_section(result: dict) -> list[str]:
    meta = result["meta"]
    lines: list[str] = []
    if result["long_rollout"]:
        lr = result["long_rollout"]
        lines += [
            "",
            "## 4. Long rollout",
            "",
            "One stream over the split's speech (every clip in turn, looped) with the identity of the first clip's "
            "first frame, run in "
            "chunks with carried state; `step ≡` is the largest difference to `Generator.step` on its first frames. "
            f"Velocity ×10⁻³ over the first and last window (GT mean {num(1e3 * meta['gt_velocity'])}); face size and "
            "centre shift over the last window, relative to the reference face.",
            "",
            "| Model | frames | wall (s) | × real time | NaN frames | plausible (all / last) | velocity first → last "
            "(ratio) | face size ratio | centre shift | step ≡ |",
            "|" + "---|" * 10,
        ]
        for name, r in lr.items():
            lines.append(
                f"| {name} | {r['frames']} | {r['wall_s']:.1f} | {num(r['realtime_factor'], '{:.1f}')} | "
                f"{r['non_finite_frames']} | {100 * r['plausible']:.1f} % / {100 * r['plausible_last_minute']:.1f} % | "
                f"{num(1e3 * r['velocity_first'])} → {num(1e3 * r['velocity_last'])} "
                f"({num(r['velocity_ratio'], '{:.2f}')}) | {num(r['scale_ratio_last'])} | "
                f"{num(r['centre_shift_last'])} | {num(r['step_equivalence_max_abs'], '{:.1e}')} |"
            )
        lines += ["", "Curves over time: `drift.png`."]
        videos = [v for r in lr.values() for v in r.get("videos", [])]
        if videos:
            lines += [
                "",
                "Rendered (landmarks over the rollout's audio): "
                + ", ".join(f"`videos/{Path(v).name}`" for v in videos)
                + ".",
            ]
    return lines


def render_eval_markdown(result: dict) -> str:
    """The `msync eval` report (eval.md)."""
    meta, methods = result["meta"], result["methods"]
    num_levels = len(methods[GT]["levels"])
    lines = _conditions(meta, result["config"]) + _how_to_read(meta)
    lines += sync_table(methods, num_levels)
    lines += [
        "",
        "## 2. Landmark distance, motion, FD-motion, plausibility",
        "",
        "LMD in pixels of a 256 crop. Velocity/acceleration ×10⁻³ normalised units per frame (frame²); "
        "E_l head-motion energy ×10⁻⁶ at level l; mouth opening ‖p62−p66‖ ×10⁻² (mean and std over time).",
        "",
    ]
    lines += dyn_table(methods, num_levels, with_lmd=True)
    if result.get("fd_floor"):
        lines += [
            "",
            "FD-motion split-half floor (GT clips alternately in two halves): "
            + ", ".join(f"L{e['level']}: {num(e['fd'])} (n {e['n_gt']}/{e['n']})" for e in result["fd_floor"]),
        ]
    lines += [
        "",
        "FD-motion sample sizes (windows per level, GT): "
        + ", ".join(f"L{e['level']}: {e['n_gt']}" for e in methods[GT]["fd_motion"]),
    ]
    lines += _drift_section(result, num_levels) + _long_rollout_section(result)
    if result.get("viewer"):
        lines += viewer_section(result["viewer"], num_levels)
    lines += checks_lines(result["checks"], "## Checks", "metric sanity all pass", result.get("checks_valid"))
    lines += [
        "",
        "Plots: `sync_levels.png` (AV-Conf and FD-motion per level). Predictions: `predictions/` (eval-sync "
        "format, one folder per method; `msync eval-sync --predictions predictions/ours --predictions "
        "predictions/loudness_mouth ...`, one `--predictions` per method, rescores them).",
        "",
    ]
    return "\n".join(lines)


def viewer_section(v: dict, num_levels: int) -> list[str]:
    """Section 5 of eval.md: the viewer-facing columns (`training.eval.viewer`, `training.eval.rest`)."""
    return (
        _articulation_lines(v)
        + _head_lines(v["methods"], num_levels)
        + _rest_lines(v.get("rest"))
        + _side_by_side_lines(v.get("side_by_side"))
        + ["", "Plot: `viewer.png`."]
    )


def _history_frames(cols: dict) -> str:
    n = {c.get("history_frames") for c in cols.values()} - {None}
    return ", ".join(str(x) for x in sorted(n)) or "–"


def _articulation_lines(v: dict) -> list[str]:
    cols = v["methods"]
    lines = [
        "",
        "## 5. What a viewer sees",
        "",
        "Inner-lip gap = mean of ‖p61−p67‖, ‖p62−p66‖, ‖p63−p65‖ over the inter-ocular distance ‖p36−p45‖ (IOD; a "
        'closed mouth in speech ≈ 0.025, a wide "a" ≈ 0.15). Per clip on its sequences joined in time, each '
        "sequence's gap centred on its own mean (every sequence starts from its own reference face), median over "
        "clips. r: Pearson correlation of the row's gap with ground truth's (lag 0, and best lag within ±5 "
        "frames, + = the row lags; 0 for a gap that never moves); amplitude: std ratio; p5/p95: the row's "
        "opening range (raw gap). r (real history): the same r at lag 0 and best lag on the frames whose whole receptive field "
        f"({_history_frames(cols)} frames before them) lies inside the clip; a sequence that starts at its clip's first "
        "frame has only digital silence before it, while ground truth's face there was made by speech the clip does "
        "not hold, so its first frames score how a row treats that made-up silence (every row on the same frames).",
        "",
        "### Articulation",
        "",
        "| Method | clips | r lag 0 | r best | best lag (frames) | r lag 0 / best (real history) | amplitude ratio | gap p5 | "
        f"gap p95 | bilabials: events | min gap (median) | closed ≤ {v['closed_at']:g} | gap median (all) |",
        "|" + "---|" * 13,
    ]
    for name, c in cols.items():
        lines.append(
            f"| {name} | {c['clips']} | {num(c['r_lag0'], '{:.2f}')} | {num(c['r_best'], '{:.2f}')} | "
            f"{num(c['best_lag_frames'], '{:+.0f}')} | {num(c.get('r_lag0_history'), '{:.2f}')} / {num(c.get('r_best_history'), '{:.2f}')} | "
            f"{num(c['amplitude_ratio'], '{:.2f}')} | "
            f"{num(c['gap_p5'], '{:.3f}')} | {num(c['gap_p95'], '{:.3f}')} | {c['bilabial_events']} | "
            f"{num(c['bilabial_min_gap_median'], '{:.3f}')} | {num(100 * c['bilabial_closed_share'], '{:.0f} %')} | "
            f"{num(c['gap_median_all'], '{:.3f}')} |"
        )
    phones_note = {
        "pocketsphinx": "phones from pocketsphinx's English phone recogniser (model in its wheel; no transcript, "
        "so some bilabials are missed or invented: compare rows, not absolute values)",
        "not installed": "**bilabial closure missing**: pocketsphinx is not installed (`pip install -e .[eval]`)",
        "off": "bilabial closure switched off (`phones=false`)",
    }[v["phones"]]
    return lines + ["", f"Bilabials (p, b, m): {phones_note}; per event the smallest gap within the phone ±1 frame."]


def _head_lines(cols: dict, num_levels: int) -> list[str]:
    lines = [
        "",
        "### Head",
        "",
        "Angles relative to each sequence's reference face (yaw/pitch/roll of `stream_engine.signals.head_rotation`, "
        "degrees). Range = p95 − p5 per sequence (mean); bias = median over each clip (median over clips); energy "
        "= mean squared velocity of the centroid of the rigid points (upper jaw line, nose, eye corners; IOD units) at each pyramid level, as a ratio to ground "
        "truth; r(speed, envelope): head speed (centroid + angular) against the frame level in dB, both averaged "
        "over 0.8 / 1.6 s windows. Blinks: runs of frames whose eye aspect ratio is below 0.6 × the clip's "
        "median (rate, mean length); engine `blink`: the rig signal of `stream_engine.signals` (default "
        "'auto' mode: procedural blinks, whatever the landmarks do) over each clip's sequences as one stream "
        "seeded by the clip, rate and share of frames above 0.5.",
        "",
        "| Method | "
        + " | ".join(f"energy {int(200 * 2**l)} ms" for l in range(num_levels))
        + " | yaw range | pitch range | roll range | yaw bias | pitch bias | roll bias | r(speed, env) 0.8 s | "
        "r(speed, env) 1.6 s | blinks / min | blink ms | engine `blink`: / min, > 0.5 |",
        "|" + "---|" * (num_levels + 12),
    ]
    for name, c in cols.items():
        lines.append(
            f"| {name} | "
            + " | ".join(num(x, "{:.2f}×") for x in c["head_energy_ratio"])
            + " | "
            + " | ".join(
                f"{num(c[k], '{:.1f}')}° ({num(c[k + '_ratio'], '{:.2f}×')})"
                for k in ("yaw_range", "pitch_range", "roll_range")
            )
            + " | "
            + " | ".join(num(c[k], "{:+.1f}°") for k in ("yaw_bias", "pitch_bias", "roll_bias"))
            + f" | {num(c['speed_envelope_r_0.8s'], '{:.2f}')} | {num(c['speed_envelope_r_1.6s'], '{:.2f}')} | "
            f"{num(c['blinks_per_min'], '{:.1f}')} | {num(c['blink_ms'], '{:.0f}')} | "
            f"{num(c['signal_blinks_per_min'], '{:.1f}')}, {num(100 * c['signal_blink_closed_share'], '{:.0f} %')} |"
        )
    lines += [
        "",
        "Head energy per sequence: the median over sequences of the row's energy ÷ ground truth's on the same "
        "sequence, at each level (the table's ratio of means is swayed by the few sequences with the largest "
        "movements; this is how a typical sequence moves):",
        "",
        "| Method | " + " | ".join(f"{int(200 * 2**l)} ms" for l in range(num_levels)) + " |",
        "|" + "---|" * (num_levels + 1),
    ]
    for name, c in cols.items():
        if name != GT and "head_energy_ratio_median" in c:
            lines.append(f"| {name} | " + " | ".join(num(x, "{:.2f}×") for x in c["head_energy_ratio_median"]) + " |")
    return lines


def _rest_lines(rest: dict | None) -> list[str]:
    lines: list[str] = []
    if rest and rest.get("rows"):
        rows = rest["rows"]
        kinds = list(next(iter(rows.values())))
        gp = rest["gt_pauses"]
        lines += [
            "",
            "### Rest: the non-speech set",
            "",
            f"{rest['streams']} streams from held-out clips (`training.eval.rest`: each sound appended after speech "
            "and inserted between two halves of it). Raw inner-lip gap (IOD) and the engine's `mouth_open` in "
            "the non-speech segments after their first 200 ms, p50/p90 over frames. Rest is relative to each "
            "row's own closed mouth in the same stream (its gap's 10th percentile while speaking): above closed = "
            "median gap after 200 ms minus that level (median over streams); time to rest = from the end of "
            "speech until the gap (200 ms running median) stays ≤ closed + max(0.02, 0.25 × the row's p90 − p10 "
            "while speaking) (median over streams; ∞ = not at rest at the end; never = share of such streams). "
            "Ground truth has no face for synthetic sounds; in its own pauses "
            f"(≥ 200 ms below -45 dBFS, {gp['frames']} frames) the gap is p50 {num(gp['gap_p50'], '{:.3f}')}, "
            f"p90 {num(gp['gap_p90'], '{:.3f}')}; in its {gp.get('n', 0)} pauses of ≥ 600 ms after speech (less their "
            "last 320 ms when speech follows) it is "
            f"{num(gp.get('excess_p50', float('nan')), '{:+.3f}')} above closed and at rest after "
            + rest_ms_text(gp)
            + ".",
            "",
            "| Method | " + " | ".join(kinds) + " |",
            "|" + "---|" * (len(kinds) + 1),
        ]
        for name, r in rows.items():
            lines.append(
                f"| {name} gap p50/p90 | "
                + " | ".join(f"{num(r[k]['gap_p50'], '{:.3f}')} / {num(r[k]['gap_p90'], '{:.3f}')}" for k in kinds)
                + " |"
            )
            lines.append(
                f"| {name} mouth_open p50/p90 | "
                + " | ".join(
                    f"{num(r[k]['mouth_open_p50'], '{:.2f}')} / {num(r[k]['mouth_open_p90'], '{:.2f}')}" for k in kinds
                )
                + " |"
            )
            if "excess_p50" in next(iter(r.values())):
                lines.append(
                    f"| {name} above closed | " + " | ".join(num(r[k]["excess_p50"], "{:+.3f}") for k in kinds) + " |"
                )
            lines.append(f"| {name} time to rest (never) | " + " | ".join(rest_ms_text(r[k]) for k in kinds) + " |")
    return lines


def rest_ms_text(r: dict) -> str:
    """'120 ms (33 % never)': median time to rest (∞ when most streams never rest) and the share that never did."""
    if "rest_ms_median" not in r:
        return "—"
    ms = "∞" if r["rest_ms_median"] == float("inf") else num(r["rest_ms_median"], "{:.0f} ms")
    return ms + f" ({num(100 * r['never_at_rest'], '{:.0f} %')} never)"


def _side_by_side_lines(sbs: dict | None) -> list[str]:
    lines: list[str] = []
    if sbs:
        lines += [
            "",
            f"### Side by side ({sbs['seconds']:.0f} s of clip `{sbs['clip_id']}`: speech, 3 s silence, speech; "
            "speech with -42 dBFS noise, 3 s of that noise, speech)",
            "",
            f"![side by side]({sbs['png']})",
            "",
            f"Video with the audio: `{sbs['mp4']}`. Rows: {', '.join(sbs['rows'])}.",
        ]
    return lines


# ----------------------------------------------------------------------------------------------- msync eval-sync


def _sync_conditions(meta: dict) -> list[str]:
    return [
        "# Multi-scale AV synchrony (paper Table 3 layout)",
        "",
        f"Metric syncers: `{meta['metric_syncers']}` (loss {meta['syncer_loss']}, step {meta.get('syncer_step')}). "
        f"Split `{meta['split']}` of `{meta['data_dir']}`: {_clips(meta)}, {meta['num_sequences']} sequences "
        f"of {meta['seq_frames'] or 'whole-segment'} frames; vshift {meta['vshift']}, padding {meta['padding']!r}."
        + _levels_text(meta),
        "|AV-Off1…4| are in samples of each scale's rate (1 = 40 / 80 / 160 / 320 ms); AV-Conf = median − min of the mean "
        "embedding distance over shifts. Mean ± std over sequences.",
        "",
    ]


def _sync_motion_table(methods: dict, num_levels: int) -> list[str]:
    head = (
        ["Method", "M-LMD (px)", "F-LMD (px)", "velocity", "accel."]
        + [f"E_{l}" for l in range(num_levels)]
        + ["mouth open", "mouth open std", "LSE-D (200 ms)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in methods.items():
        m, mo = s["lmd"], s["motion"]
        row = [name, pm(m["m_lmd_px"]), pm(m["f_lmd_px"]), pm(mo["velocity"], 1e3), pm(mo["acceleration"], 1e3)]
        row += [pm(mo[f"head_energy_l{l}"], 1e6) for l in range(num_levels)]
        row += [pm(mo["mouth_open_mean"], 1e2), pm(mo["mouth_open_std"], 1e2), pm(s["levels"][0]["min_dist"])]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def render_sync_markdown(result: dict) -> str:
    """The `msync eval-sync` report (eval_sync.md): the two tables and the checks."""
    meta, methods = result["meta"], result["methods"]
    num_levels = len(next(iter(methods.values()))["levels"])
    gt = methods[GT]["levels"]
    lines = _sync_conditions(meta) + sync_table(methods, num_levels)
    lines += [
        "",
        "Ground truth median |AV-Off| per level: "
        + ", ".join(f"{int(lv['segment_ms'])} ms: {lv['abs_offset']['median']:g}" for lv in gt),
        "Ground truth mean signed AV-Off (positive = audio leads the lips): "
        + ", ".join(f"{int(lv['segment_ms'])} ms: {lv['offset']['mean']:+.2f}" for lv in gt),
        "",
    ]
    lines += [
        "# Landmark distance and motion",
        "",
        "LMD: mean point distance to GT, in pixels of a 256 crop (normalised × 256); M = mouth 48-67, F = all 68. "
        "Velocity/acceleration: mean per-point magnitude, ×10⁻³ normalised units per frame (per frame²). "
        "Head energy E_l: mean squared velocity of the level-l jaw+nose centroid trajectory, ×10⁻⁶ units² per "
        "level-l sample. Mouth: inner-lip gap ‖p62−p66‖, ×10⁻² units (mean±std over sequences of the per-sequence mean "
        "and std).",
        "",
    ]
    lines += _sync_motion_table(methods, num_levels)
    lines += checks_lines(result["checks"], "# Checks", "all pass", result.get("checks_valid")) + [""]
    return "\n".join(lines)
