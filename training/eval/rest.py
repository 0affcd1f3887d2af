"""The non-speech set of `msync eval`: does the mouth come to rest, and stay there, when nobody speaks?

Built from the evaluated split's clips (speech and reference face of held-out speakers): for each of the first
`clips` clips with at least `speech_s` seconds, and each kind of non-speech, two layouts of the same length

- "appended": speech (`speech_s`), then `rest_s` of the non-speech sound;
- "inserted": the first half of the speech, `rest_s` of the non-speech sound, the second half; steady sounds
  (noise, hum) also run under the speech at the same level, like a fan under a microphone.

Kinds: digital silence; steady low-passed white noise at -48 and -42 dBFS RMS (the fan of
`../shared/cases/noise-floor-mouth`); mains hum (50 Hz and harmonics, -40 dBFS); a sustained chord (A major
triad with harmonics, -30 dBFS: music without voice); breathing-like noise (band-passed bursts of about 1 s every
2.5 s, -45 dBFS peak RMS). Sounds are seeded, so every run and row hears the same audio.

Measured in the non-speech segment, after its first `settle_ms` (the way down is measured separately): the raw
inner-lip gap (IOD) and the engine's `mouth_open` signal (`stream_engine.signals.SignalExtractor`, default
`SignalConfig`: its speech gate, which follows the stream's noise floor, included), p50 and p90 over frames; how far the gap stays above the
row's own closed mouth (its 10th percentile while speaking in the same stream); and the time from the end of
speech until the gap is at rest for good, relative to that closed level (:func:`training.metrics.viewer.
rest_threshold`, :func:`~training.metrics.viewer.time_to_rest`). Ground truth, which has no face for synthetic
sounds, gets the same statistics in its own pauses (:func:`gt_pauses`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from training.data.nonspeech import scale_to_dbfs, shape_spectrum
from training.metrics import viewer as vm

SR, SPF = 16000, 640
KINDS = ("silence", "noise -48 dBFS", "noise -42 dBFS", "hum", "chord", "breathing")
LAYOUTS = ("appended", "inserted")
STEADY = ("noise -48 dBFS", "noise -42 dBFS", "hum")


@dataclasses.dataclass(frozen=True)
class RestConfig:
    """The non-speech set (see module doc). `clips` = 0 skips it."""

    clips: int = 6
    speech_s: float = 4.0
    rest_s: float = 3.0
    settle_ms: float = 200.0
    seed: int = 0


def _lowpass(x: np.ndarray, cutoff_hz: float) -> np.ndarray:
    return shape_spectrum(x, lambda f: f <= cutoff_hz)


def _band(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return shape_spectrum(x, lambda f: (f >= lo) & (f <= hi))


def sound(kind: str, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """(num_samples,) float32 of one non-speech kind (see module doc)."""
    t = np.arange(num_samples) / SR
    if kind == "silence":
        x = np.zeros(num_samples)
    elif kind.startswith("noise"):
        x = scale_to_dbfs(_lowpass(rng.standard_normal(num_samples), 2000.0), float(kind.split()[1]))
    elif kind == "hum":
        x = scale_to_dbfs(np.sum([np.sin(2 * np.pi * 50 * k * t) / k for k in (1, 2, 3, 4)], axis=0), -40.0)
    elif kind == "chord":
        x = np.sum(
            [
                np.sin(2 * np.pi * f * k * t + rng.uniform(0, 2 * np.pi)) / k**1.5
                for f in (220.0, 277.18, 329.63)
                for k in (1, 2, 3)
            ],
            axis=0,
        )
        x = scale_to_dbfs(x, -30.0)
    elif kind == "breathing":
        env = np.clip(np.sin(2 * np.pi * t / 2.5 - 0.5), 0.0, None) ** 2
        x = scale_to_dbfs(_band(rng.standard_normal(num_samples), 400.0, 3000.0), -45.0) * env / max(env.max(), 1e-9)
        x = x * 10 ** (3 / 20)  # peak bursts near -45 dBFS RMS
    else:
        raise ValueError(f"unknown non-speech kind {kind!r}; expected one of {KINDS}")
    return np.asarray(x, np.float32)


@dataclasses.dataclass
class Stimulus:
    """One non-speech stream: `pcm` (num_frames · 640,), the reference face (68, 2), and the frames
    [rest_start, rest_end) of the non-speech segment."""

    clip_id: str
    kind: str
    layout: str
    pcm: np.ndarray
    reference: np.ndarray
    rest_start: int
    rest_end: int

    @property
    def key(self) -> str:
        return f"rest:{self.clip_id}:{self.kind}:{self.layout}"

    @property
    def num_frames(self) -> int:
        return len(self.pcm) // SPF


def build(cfg: RestConfig, segs_by_clip: dict, pcm: dict) -> list[Stimulus]:
    """The non-speech set from the first `cfg.clips` clips that have `speech_s` seconds from their first segment."""
    n_speech = int(round(cfg.speech_s * 25)) * SPF
    n_rest = int(round(cfg.rest_s * 25)) * SPF
    half = (n_speech // SPF // 2) * SPF
    out: list[Stimulus] = []
    rng = np.random.default_rng(cfg.seed)
    for cid, segs in segs_by_clip.items():
        if len([s for s in out if s.kind == KINDS[0] and s.layout == LAYOUTS[0]]) >= cfg.clips:
            break
        s0 = segs[0].start_frame * SPF
        speech = np.asarray(pcm[cid][s0 : s0 + n_speech], np.float32)
        if len(speech) < n_speech:
            continue
        ref = segs[0].landmarks[0]
        for kind in KINDS:
            x = sound(kind, n_rest + n_speech, rng)
            under = x[n_rest:] if kind in STEADY else np.zeros(n_speech, np.float32)
            a = np.concatenate([speech, x[:n_rest]])
            b = np.concatenate([speech[:half] + under[:half], x[:n_rest], speech[half:] + under[half:]])
            out.append(Stimulus(cid, kind, "appended", a, ref, n_speech // SPF, (n_speech + n_rest) // SPF))
            out.append(Stimulus(cid, kind, "inserted", b, ref, half // SPF, (half + n_rest) // SPF))
    return out


def mouth_open(landmarks: np.ndarray, pcm: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T,) the engine's `mouth_open` over a stream (default SignalConfig, the frame's own level as audio level)."""
    from stream_engine.signals import SignalExtractor

    ex = SignalExtractor(reference_face=reference, seed=0)
    level = np.full(len(landmarks), -120.0)
    n = min(len(landmarks), len(pcm) // SPF)
    rms = np.sqrt((np.asarray(pcm[: n * SPF], np.float64).reshape(n, SPF) ** 2).mean(axis=1))
    level[:n] = 20 * np.log10(np.maximum(rms, 1e-6))
    return np.array([ex.update(lm, t * 0.04, float(level[t])).mouth_open for t, lm in enumerate(landmarks)])


def score(stimuli: list[Stimulus], outputs: list[np.ndarray], cfg: RestConfig) -> dict:
    """Per kind (and "all"): gap and mouth_open p50/p90 in the non-speech segments, and time to rest.

    Args:
        outputs: (T, 68, 2) landmarks of one row for each stimulus.
    Returns:
        {kind: {gap_p50, gap_p90, mouth_open_p50, mouth_open_p90, excess_p50, rest_ms_median, never_at_rest, n}};
        `excess_p50`: median over streams of (median gap after settling − the row's closed level in that stream).
    """
    skip = int(round(cfg.settle_ms / 40.0))
    per: dict[str, dict[str, list]] = {}
    for st, lm in zip(stimuli, outputs):
        gap = vm.lip_gap(lm)
        mo = mouth_open(lm, st.pcm, st.reference)
        closed, threshold = vm.rest_threshold(np.concatenate([gap[: st.rest_start], gap[st.rest_end :]]))
        for key in (st.kind, "all"):
            d = per.setdefault(key, {"gap": [], "mo": [], "rest": [], "excess": []})
            d["gap"].append(gap[st.rest_start + skip : st.rest_end])
            d["mo"].append(mo[st.rest_start + skip : st.rest_end])
            d["rest"].append(vm.time_to_rest(gap[st.rest_start : st.rest_end], threshold))
            d["excess"].append(float(np.median(gap[st.rest_start + skip : st.rest_end])) - closed)
    out = {}
    for key, d in sorted(per.items(), key=lambda kv: KINDS.index(kv[0]) if kv[0] in KINDS else len(KINDS)):
        g, m = np.concatenate(d["gap"]), np.concatenate(d["mo"])
        out[key] = {
            "gap_p50": vm.percentiles(g)["p50"],
            "gap_p90": vm.percentiles(g)["p90"],
            "mouth_open_p50": vm.percentiles(m)["p50"],
            "mouth_open_p90": vm.percentiles(m)["p90"],
            **rest_summary(d["rest"], d["excess"]),
        }
    return out


def rest_summary(rest_ms: list[float], excess: list[float]) -> dict:
    """Median time to rest (inf counts), its median over the streams that got there, the share that never did,
    the median excess over the closed level, and the count."""
    r = np.array(rest_ms, np.float64)
    finite = r[np.isfinite(r)]
    return {
        "excess_p50": float(np.median(excess)) if len(excess) else math.nan,
        "rest_ms_median": float(np.median(r)) if len(r) else math.nan,
        "rest_ms_median_finite": float(np.median(finite)) if len(finite) else math.nan,
        "never_at_rest": float(np.mean(~np.isfinite(r))) if len(r) else math.nan,
        "n": len(r),
    }


def gt_pauses(
    segments,
    pcm: dict,
    quiet_dbfs: float = -45.0,
    min_frames: int = 5,
    rest_min_frames: int = 15,
    anticipation_frames: int = 8,
) -> dict:
    """Ground truth's own pauses, for reference (no GT exists for the synthetic sounds): the inner-lip gap in
    runs of at least `min_frames` frames quieter than `quiet_dbfs` inside the evaluated segments; and, in pauses
    after speech of at least `rest_min_frames`, the time to rest and the excess over the segment's closed level
    as the rows get them (:func:`score`; without the pause's last `anticipation_frames` when speech follows inside
    the segment: real lips open before the sound starts)."""
    from training.eval.viewer import frame_dbfs

    gaps, rest_ms, excess = [], [], []
    for s in segments:
        quiet = frame_dbfs(pcm[s.clip_id], s.start_frame, s.num_frames) < quiet_dbfs
        edges = np.diff(np.concatenate([[0], quiet.astype(int), [0]]))
        g = vm.lip_gap(s.landmarks)
        closed, threshold = vm.rest_threshold(g[~quiet]) if (~quiet).sum() >= 25 else (math.nan, math.nan)
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            if b - a >= min_frames:
                gaps.append(g[a:b])
            if b - a >= rest_min_frames and a > 0 and np.isfinite(threshold):
                end = b - anticipation_frames if b < s.num_frames else b
                rest_ms.append(vm.time_to_rest(g[a:end], threshold))
                excess.append(float(np.median(g[a + 5 : end])) - closed)
    if not gaps:
        return {"frames": 0, "gap_p50": math.nan, "gap_p90": math.nan, **rest_summary(rest_ms, excess)}
    g = np.concatenate(gaps)
    return {"frames": len(g), **{f"gap_{k}": v for k, v in vm.percentiles(g).items()}, **rest_summary(rest_ms, excess)}
