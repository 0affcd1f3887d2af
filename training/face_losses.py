"""Viewer-facing training terms of the generator (model 0.3): rest in non-speech, articulation, head motion.

All distances are in units of the inter-ocular distance (IOD, ‖p36 − p45‖ per frame), the unit of
`training.metrics.viewer`, so a term means the same on a near and a far face. Inputs are landmark sequences
(B, T, 68, 2) and boolean frame masks (B, T); a term whose mask selects nothing is 0 (and keeps the graph).

- Rest (`rest_terms`, frames where nobody speaks): a hinge on the inner-lip gap above a closed mouth
  (`gap_target`, 0.02 IOD: a closed mouth in speech is about 0.025, the evaluation's rest threshold 0.03),
  the mouth held still relative to the head (squared velocity of the mouth points about the rigid points'
  centroid), and the head back at the reference pose (squared offset of the rigid points from the reference's).
- Articulation (`articulation_terms`, speech frames): the mouth's shape against ground truth (mouth points about
  their centroid, squared error), the inner-lip gap against ground truth (absolute error), the gap's
  amplitude over the window (|log| of the ratio of standard deviations, ground truth's as the target; and the
  one-sided `mouth_under`, which counts only a smaller amplitude than ground truth's), and the
  gap's correlation with ground truth's at lag 0 over the window (1 − Pearson r: the evaluation's "inner-lip
  gap r", scale-free, so it pins timing and shape without pulling the level).
- Head (`head_terms`, whole speech windows): motion energy of the rigid points' centroid at a 320 ms scale as a
  |log| ratio to ground truth's over the batch, the same ratio at each scale of the evaluation's pyramid
  (200 / 400 / 800 / 1600 ms, `training.metrics.viewer.head_energy`), and the window-mean head position against
  ground truth's (a constant tilt or offset).
- Head-motion distribution (`head_quantile_terms`, whole speech windows): each window's head energy at the
  evaluation's coarse scales (0.8 and 1.6 s), log, sorted, and matched quantile by quantile with ground truth's
  windows (a 1-D Wasserstein distance, unpaired): a few large slow movements and many small ones, not more motion
  everywhere.
- Head angles (`head_angle_terms`, whole speech windows): the mean over the batch's windows of the window-mean
  yaw/pitch/roll relative to the reference face (`training.head_pose`, the evaluation's angles) against ground
  truth's, squared: a constant bias of the angles, which `head_mean` does not pin (pitch and roll come from the
  face's shape, not from where the rigid points sit on average).
- Head and loudness (`head_speech_terms`, whole speech windows): at each given time scale, Pearson r of the
  window's band-passed loudness envelope with its band-passed head angular speed, its mean over the batch against
  ground truth's (squared difference). Real heads move with the speech's loudness at 1.6 s but hardly at
  200-400 ms (`benchmarks/head_speech.py`); the generator's head also bobs with the syllables. The same with the
  signed yaw, pitch and roll (`head_pose_speech`): a head that leans or turns one way whenever the voice is loud.
"""

from __future__ import annotations

import numpy as np
import torch

from training.head_pose import head_angles
from training.metrics.viewer import HEAD_POINTS as RIGID
from training.metrics.viewer import INNER_LIP_PAIRS as INNER_PAIRS
from training.pyramid import downsample_torch

MOUTH = list(range(48, 68))


def inter_ocular(x: torch.Tensor) -> torch.Tensor:
    """(..., 68, 2) -> (...) distance between the outer eye corners p36 and p45 (floored at 1e-6)."""
    return (x[..., 36, :] - x[..., 45, :]).norm(dim=-1).clamp_min(1e-6)


def lip_gap(x: torch.Tensor) -> torch.Tensor:
    """(..., 68, 2) -> (...) inner-lip gap in IOD: mean of ‖p61−p67‖, ‖p62−p66‖, ‖p63−p65‖ over IOD
    (the measure of `training.metrics.viewer.lip_gap`)."""
    d = sum((x[..., a, :] - x[..., b, :]).norm(dim=-1) for a, b in INNER_PAIRS)
    return d / 3.0 / inter_ocular(x)


def _masked_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(v.dtype)
    return (v * m).sum() / m.sum().clamp_min(1.0)


def _mouth_about_head(x: torch.Tensor) -> torch.Tensor:
    """(B, T, 68, 2) -> (B, T, 20, 2) mouth points about the rigid centroid, in IOD."""
    centre = x[..., RIGID, :].mean(dim=-2, keepdim=True)
    return (x[..., MOUTH, :] - centre) / inter_ocular(x)[..., None, None]


def rest_terms(fake: torch.Tensor, rest: torch.Tensor, x_ref: torch.Tensor, gap_target: float = 0.02) -> dict:
    """Rest terms over the frames where `rest` is True.

    Args:
        fake: (B, T, 68, 2) generated frames; rest: (B, T) bool; x_ref: (B, 68, 2) the stream's reference face.
    Returns:
        {"rest_gap": mean hinge max(gap − gap_target, 0) (IOD), "rest_still": mean squared mouth velocity about
        the head (IOD² per frame²), "rest_pose": mean squared offset of the rigid points from the reference's
        (IOD²)}.
    """
    gap = lip_gap(fake)
    out = {"rest_gap": _masked_mean(torch.relu(gap - gap_target), rest)}
    mouth = _mouth_about_head(fake)
    vel = ((mouth[:, 1:] - mouth[:, :-1]) ** 2).sum(-1).mean(-1)  # (B, T-1)
    out["rest_still"] = _masked_mean(vel, rest[:, 1:] & rest[:, :-1])
    iod = inter_ocular(x_ref)[:, None, None, None]
    off = ((fake[..., RIGID, :] - x_ref[:, None, RIGID, :]) / iod) ** 2
    out["rest_pose"] = _masked_mean(off.sum(-1).mean(-1), rest)
    return out


def _masked_std(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) values, (B, T) mask -> (B,) standard deviation over the masked frames of each row."""
    m = mask.to(v.dtype)
    n = m.sum(1).clamp_min(1.0)
    mean = (v * m).sum(1) / n
    return torch.sqrt((((v - mean[:, None]) ** 2) * m).sum(1) / n + 1e-8)


def masked_corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) series, (B, T) mask -> (B,) Pearson r of a and b over the masked frames of each row (0 where either
    is constant)."""
    m = mask.to(a.dtype)
    n = m.sum(1).clamp_min(1.0)
    da = a - ((a * m).sum(1) / n)[:, None]
    db = b - ((b * m).sum(1) / n)[:, None]
    cov = (da * db * m).sum(1)
    return cov / torch.sqrt((da * da * m).sum(1) * (db * db * m).sum(1) + 1e-12)


def articulation_terms(fake: torch.Tensor, real: torch.Tensor, speech: torch.Tensor, min_frames: int = 12) -> dict:
    """Articulation terms over speech frames.

    Args:
        fake, real: (B, T, 68, 2) generated and ground-truth frames; speech: (B, T) bool.
        min_frames: rows with fewer speech frames are left out of the amplitude and correlation terms (and rows
            whose ground-truth gap does not move, std < 1e-3 IOD, out of the correlation term).
    Returns:
        {"mouth_shape": mean squared error of the mouth points about their centroid (IOD²), "mouth_gap": mean
        |gap − gap_gt| (IOD), "mouth_amplitude": mean over rows of |log(std gap / std gap_gt)|, "mouth_under": mean over rows of
        max(−log(std gap / std gap_gt), 0) (under-articulation only), "mouth_corr":
        mean over rows of 1 − r, r the Pearson correlation of gap and gap_gt over the row's speech frames (0..2)}.
    """

    def shape(x: torch.Tensor) -> torch.Tensor:
        m = x[..., MOUTH, :]
        return (m - m.mean(dim=-2, keepdim=True)) / inter_ocular(x)[..., None, None]

    out = {"mouth_shape": _masked_mean(((shape(fake) - shape(real)) ** 2).sum(-1).mean(-1), speech)}
    g_fake, g_real = lip_gap(fake), lip_gap(real)
    out["mouth_gap"] = _masked_mean((g_fake - g_real).abs(), speech)
    rows = speech.sum(1) >= min_frames
    ratio = torch.log(_masked_std(g_fake, speech) / _masked_std(g_real, speech).clamp_min(1e-3))
    out["mouth_amplitude"] = _masked_mean(ratio.abs(), rows)
    out["mouth_under"] = _masked_mean(torch.relu(-ratio), rows)
    moving = rows & (_masked_std(g_real, speech) > 1e-3)
    out["mouth_corr"] = _masked_mean(1.0 - masked_corr(g_fake, g_real, speech), moving)
    return out


def head_terms(
    fake: torch.Tensor,
    real: torch.Tensor,
    rows: torch.Tensor,
    scale_frames: int = 8,
    num_levels: int = 4,
    kernel: int = 7,
    first_level: int = 0,
    tail_frames: int = 40,
    tail_share: float = 0.25,
) -> dict:
    """Head terms over whole windows of speech.

    Args:
        fake, real: (B, T, 68, 2); rows: (B,) bool, the windows to use (all frames speech).
        scale_frames: the centroid is averaged over this many frames before differencing (8 = 320 ms).
        num_levels, kernel: the pyramid of `head_pyramid` (`training.pyramid`, as the evaluation's head energy).
        first_level: the finest level `head_pyramid` averages over (0 = 200 ms ... 3 = 1.6 s; 2 leaves the fast
            scales to the other terms).
        tail_frames, tail_share: `head_tail` smooths the centroid over `tail_frames` (40 = 1.6 s) and compares the
            largest `tail_share` of the rows' excursions.
    Returns:
        {"head_energy": |log(E_fake / E_gt)| with E the mean squared velocity of the smoothed rigid centroid over
        the selected rows (IOD² per frame²), "head_pyramid": the mean over pyramid levels first_level..num_levels-1 of
        |log(E_fake,l / E_gt,l)|, E_l the mean squared velocity of the centroid at level l (levels with fewer
        than 3 samples are skipped), "head_mean": mean squared offset between the window-mean rigid points of fake
        and ground truth (IOD²), "head_tail": max(0, log(X_gt / X_fake)) with X the mean of the largest
        `tail_share` of the rows' excursions (the farthest the 1.6 s-smoothed centroid gets from its window mean,
        IOD): one-sided and unpaired, it asks for the occasional large, slow head movement that a batch of real
        windows holds, which the energy terms (averages) do not (`benchmarks/results/eval_v031_head_pyr16.md`)}.
    """
    if not bool(rows.any()):
        zero = fake.sum() * 0.0
        return {"head_energy": zero, "head_pyramid": zero, "head_mean": zero, "head_tail": zero}
    f, r = fake[rows], real[rows]
    iod = inter_ocular(r).mean(dim=1)[:, None, None]  # (b, 1, 1)

    c_f, c_r = f[..., RIGID, :].mean(dim=-2) / iod, r[..., RIGID, :].mean(dim=-2) / iod  # (b, T, 2) centroids

    def energy(c: torch.Tensor) -> torch.Tensor:  # mean squared velocity of a (b, T, 2) centroid path
        return ((c[:, 1:] - c[:, :-1]) ** 2).sum(-1).mean()

    def log_ratio(c_fake: torch.Tensor, c_real: torch.Tensor) -> torch.Tensor:
        return torch.log((energy(c_fake) + 1e-10) / (energy(c_real).detach() + 1e-10)).abs()

    def smooth(c: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool1d(c.transpose(1, 2), scale_frames, stride=1).transpose(1, 2)

    out = {"head_energy": log_ratio(smooth(c_f), smooth(c_r))}

    def excursion(c: torch.Tensor) -> torch.Tensor:  # (b, T, 2) -> (b,)
        k = min(tail_frames, c.shape[1])
        slow = torch.nn.functional.avg_pool1d(c.transpose(1, 2), k, stride=1).transpose(1, 2)
        return (slow - slow.mean(dim=1, keepdim=True)).norm(dim=-1).amax(dim=1)

    x_f, x_r = excursion(c_f), excursion(c_r).detach()
    top = max(1, int(round(tail_share * len(x_r))))
    tail_f, tail_r = x_f.topk(top).values.mean(), x_r.topk(top).values.mean()
    out["head_tail"] = torch.relu(torch.log((tail_r + 1e-6) / (tail_f + 1e-6)))
    ratios = []
    for level in range(num_levels):
        if c_f.shape[1] < 3:
            break
        if level >= first_level:
            ratios.append(log_ratio(c_f, c_r))
        c_f, c_r = downsample_torch(c_f, kernel), downsample_torch(c_r, kernel)
    out["head_pyramid"] = torch.stack(ratios).mean() if ratios else fake.sum() * 0.0
    mean_f = f[..., RIGID, :].mean(dim=1) / iod
    mean_r = r[..., RIGID, :].mean(dim=1) / iod
    out["head_mean"] = ((mean_f - mean_r) ** 2).sum(-1).mean()
    return out


def head_angle_terms(
    fake: torch.Tensor,
    real: torch.Tensor,
    x_ref: torch.Tensor,
    rows: torch.Tensor,
    running: torch.Tensor | None = None,
    momentum: float = 0.0,
) -> tuple[dict, torch.Tensor | None]:
    """Head-angle bias over whole windows of speech.

    Args:
        fake, real: (B, T, 68, 2); x_ref: (B, 68, 2) each window's reference face (the frame before it, as the
            evaluation's); rows: (B,) bool, the windows to use.
        running, momentum: the bias estimate of earlier batches ((3,) degrees, or None) and the share of it kept
            (0 = this batch alone). With momentum m the estimate is b = m · running + (1 − m) · d, d this batch's
            bias, and the term is b² in value with gradient 2 b · ∂d: the slope of the squared bias, with the noise
            of six windows' head movements averaged over about 1 / (1 − m) batches.
    Returns:
        ({"head_angle": Σ over yaw, pitch, roll of b²}, the new estimate b (detached; `running` unchanged when no
        row is used)). d = mean over rows of (mean_t a_fake − mean_t a_real), a the angles relative to x_ref in
        degrees (`training.head_pose.head_angles`), so the term is in degrees². The batch's mean difference, not
        each window's: a window's mean pose depends on where that speaker happened to look, which the audio does
        not tell; the constant part is the bias the evaluation reports (median over clips). With momentum 0 the
        expected term also holds the spread of a batch's mean difference (six windows), so it pulls each batch's
        windows towards ground truth's mean pose too: that version, not the averaged one, brought the held-out
        clips' bias within 1° for model 0.3.1 (`benchmarks/results/eval_v03_head_bias.md`).
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"head_angle momentum must be in [0, 1), got {momentum}")
    if not bool(rows.any()):
        return {"head_angle": fake.sum() * 0.0}, running
    a_fake = head_angles(fake[rows], x_ref[rows]).mean(dim=1)  # (b, 3)
    a_real = head_angles(real[rows], x_ref[rows]).mean(dim=1).detach()
    d = (a_fake - a_real).mean(dim=0)  # (3,)
    est = d.detach() if running is None or momentum == 0.0 else momentum * running + (1.0 - momentum) * d.detach()
    return {"head_angle": ((d + (est - d).detach()) ** 2).sum()}, est


def window_head_energy(x: torch.Tensor, levels: tuple[int, ...] = (2, 3), kernel: int = 7) -> torch.Tensor:
    """(b, T, 68, 2) windows -> (b, len(levels)) head energy of each window at the given pyramid levels.

    The evaluation's measure (`training.metrics.viewer.head_energy`) per window: the rigid centroid over the
    window's mean IOD, `level` steps of the pyramid (`training.pyramid.downsample_torch`, kernel `kernel`), mean
    squared velocity, in IOD² per level-l sample (level 0 = 200 ms ... 3 = 1.6 s at 25 fps).

    Raises:
        ValueError: a level leaves fewer than 3 samples of the window (T < 2**level * 2 + 1).
    """
    c = x[..., RIGID, :].mean(dim=-2) / inter_ocular(x).mean(dim=1)[:, None, None]  # (b, T, 2)
    out = []
    for lvl in range(max(levels) + 1):
        if lvl in levels:
            if c.shape[1] < 3:
                raise ValueError(
                    f"head_quantile level {lvl} leaves {c.shape[1]} samples of a {x.shape[1]}-frame window"
                )
            out.append(((c[:, 1:] - c[:, :-1]) ** 2).sum(-1).mean(1))
        c = downsample_torch(c, kernel)
    return torch.stack(out, dim=1)


def octave_band(x: torch.Tensor, scale_ms: float, fps: float = 25.0) -> torch.Tensor:
    """(B, T) -> (B, T): the octave of periods `scale_ms` .. 2 `scale_ms` of each row, by masking its real FFT
    (the mean removed first). Differentiable; the torch counterpart of `benchmarks.head_speech.band` on a whole
    window, with an ideal band instead of a Butterworth one, and circular: the window's two ends meet (a 120-frame
    window holds 2 frequency bins in the 1.6 s octave, 12 in the 200 ms one)."""
    t = x.shape[-1]
    f = torch.fft.rfftfreq(t, d=1.0 / fps).to(x.device)
    s = scale_ms / 1000.0
    mask = ((f >= 1.0 / (2.0 * s)) & (f < 1.0 / s)).to(x.dtype)  # half-open: a bin belongs to one octave
    return torch.fft.irfft(torch.fft.rfft(x - x.mean(-1, keepdim=True)) * mask, n=t)


def window_loudness_db(audio: np.ndarray, start: int, frames: int, spf: int, floor_db: float = 50.0) -> np.ndarray:
    """(B, N) PCM -> (B, frames) dBFS level of the `spf` samples of each frame from sample `start` on, floored
    `floor_db` below each row's loudest frame (as `benchmarks.head_speech.loudness_db`). Raises ValueError when
    the rows are too short."""
    if audio.shape[1] < start + frames * spf:
        raise ValueError(f"window_loudness_db: {audio.shape[1]} samples, need {start + frames * spf}")
    pcm = np.asarray(audio[:, start : start + frames * spf], np.float64).reshape(len(audio), frames, spf)
    db = 10.0 * np.log10((pcm * pcm).mean(-1) + 1e-12)
    return np.maximum(db, db.max(axis=1, keepdims=True) - floor_db).astype(np.float32)


def head_speech_terms(
    fake: torch.Tensor,
    real: torch.Tensor,
    x_ref: torch.Tensor,
    loudness_db: torch.Tensor,
    rows: torch.Tensor,
    scales_ms: tuple[float, ...] = (200.0, 400.0),
) -> dict:
    """Head motion's coupling to loudness at `scales_ms`, against ground truth's.

    Args:
        fake, real: (B, T, 68, 2); x_ref: (B, 68, 2) the windows' reference faces; loudness_db: (B, T) each
            frame's audio level (dBFS, floored); rows: (B,) bool, the windows to use (all frames speech).
    Returns:
        {"head_speech": mean over scales of (mean over rows of r_fake - mean over rows of r_real)^2}, r the Pearson
        correlation of the octave-band loudness and octave-band head angular speed (degrees per frame,
        `training.head_pose` angles on `NO_JAW_POINTS`) over the window (`benchmarks.head_speech` measures the
        same on whole clips); and "head_pose_speech", the same with the signed yaw, pitch and roll (degrees) in
        place of the speed, each series linearly detrended over the window first, mean over scales and the three
        angles: a head that leans or turns one way whenever the voice is loud scores here (model 0.3.7 on held-out
        speakers at 0.4-0.8 s: roll r -0.34, yaw -0.33, where their real heads read -0.03 and +0.02;
        `benchmarks/results/head_speech_038d.md`).
        The batch means, not window by window: one window's r is a noisy target (a first try, pairing windows,
        moved r by 0.02 where the batch-mean form moved it by 0.03-0.10; model card). The head fit is the
        benchmark's (`NO_JAW_POINTS`); the model card's first runs (runs/v038_*) used the evaluation's, jaw points
        included.
    """
    if not bool(rows.any()):
        return {"head_speech": fake.sum() * 0.0, "head_pose_speech": fake.sum() * 0.0}

    from stream_engine.signals import NO_JAW_FIT as fit  # the benchmark's head fit: no jaw-line points

    def speed(a: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(((a[:, 1:] - a[:, :-1]) ** 2).sum(-1) + 1e-6)  # (b, T - 1)

    a_f = head_angles(fake[rows], x_ref[rows], fit)  # (b, T, 3) yaw, pitch, roll in degrees
    with torch.no_grad():
        a_r = head_angles(real[rows], x_ref[rows], fit)

    def detrend(x: torch.Tensor) -> torch.Tensor:
        """(b, T) minus each row's least-squares line: `octave_band` is circular, so a drift across the window
        (which signed angles have and speed has not) would wrap into a jump and leak into every octave."""
        t = torch.arange(x.shape[-1], dtype=x.dtype, device=x.device)
        t = t - t.mean()
        xc = x - x.mean(-1, keepdim=True)
        return xc - t * ((xc * t).sum(-1, keepdim=True) / (t * t).sum())

    def gap(loud: torch.Tensor, fake_series: torch.Tensor, real_series: torch.Tensor, ms: float) -> torch.Tensor:
        e = octave_band(loud, ms)
        every = torch.ones_like(e, dtype=torch.bool)
        r_f = masked_corr(e, octave_band(fake_series, ms), every)
        r_r = masked_corr(e, octave_band(real_series, ms), every)
        return (r_f.mean() - r_r.mean()) ** 2

    loud = loudness_db[rows]
    s_f, s_r = speed(a_f), speed(a_r)
    moving = [gap(loud[:, 1:], s_f, s_r, ms) for ms in scales_ms]
    flat = detrend(loud)
    signed = [gap(flat, detrend(a_f[..., k]), detrend(a_r[..., k]), ms) for ms in scales_ms for k in range(3)]
    return {"head_speech": torch.stack(moving).mean(), "head_pose_speech": torch.stack(signed).mean()}


def _midpoint_quantiles(sorted_values: torch.Tensor, n: int) -> torch.Tensor:
    """(N, L) values sorted along 0 -> (n, L) their quantiles at p_i = (i + 0.5) / n, i = 0..n-1: linear
    interpolation at position p N − 0.5 (clamped to 0..N−1; Hazen's plotting position), so that for N = n the
    quantiles are the order statistics themselves."""
    big_n = sorted_values.shape[0]
    pos = (torch.arange(n, dtype=sorted_values.dtype, device=sorted_values.device) + 0.5) * big_n / n - 0.5
    pos = pos.clamp(0.0, big_n - 1.0)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(big_n - 1)
    frac = (pos - lo.to(pos.dtype))[:, None]
    return sorted_values[lo] * (1.0 - frac) + sorted_values[hi] * frac


def head_quantile_terms(
    fake: torch.Tensor,
    real: torch.Tensor,
    rows: torch.Tensor,
    levels: tuple[int, ...] = (2, 3),
    bank: torch.Tensor | None = None,
    bank_size: int = 0,
    floor: float = 1e-8,
) -> tuple[dict, torch.Tensor | None]:
    """The distribution of window-level head motion against ground truth's: a 1-D Wasserstein distance.

    Args:
        fake, real: (B, T, 68, 2); rows: (B,) bool, the windows to use (whole windows of speech).
        levels: pyramid levels of `window_head_energy` (2, 3 = the evaluation's 800 and 1600 ms).
        bank, bank_size: ground truth's log energies of earlier batches ((N, len(levels)), detached, or None) and
            how many windows to keep (0 = this batch's real windows alone are the target).
        floor: added to each energy before the log (IOD² per sample; real windows' 1.6 s energy is ~1e-4).
    Returns:
        ({"head_quantile": W}, the new bank (None when bank_size is 0; unchanged when no row is used)).
        With u_i = log(E_fake + floor) of the n used windows sorted ascending (per level) and q_i the target's
        quantile at p_i = (i + 0.5) / n (`_midpoint_quantiles`),
            W = mean over levels of (1/n) Σ_i |u_i − q_i|,
        the 1-D Wasserstein-1 distance between the two distributions of log energy (for equal sample sizes, the
        mean absolute difference of the order statistics: Villani, *Topics in Optimal Transportation*, 2003,
        §2.2). The target is ground truth's windows of this batch (bank_size 0: q = its sorted values) or the bank
        of the last bank_size real windows, this batch's included (q by linear interpolation between its order
        statistics).
        Unpaired: a large turn in any fake window answers a large turn in any real one, so the term asks for the
        shape of the distribution (a few large slow movements, many small ones) rather than more motion in every
        window, which energy ratios of batch means (`head_terms`) ask for. In the log domain, so each window weighs
        alike whatever its size; each order statistic's gradient is ±1/n.
    Raises:
        ValueError: a level outside 0..7, no level, or bank_size < 0.
    """
    if not levels or any(not 0 <= lv <= 7 for lv in levels):
        raise ValueError(f"head_quantile levels must be pyramid levels 0..7, got {levels}")
    if bank_size < 0:
        raise ValueError(f"head_quantile bank must be >= 0 windows, got {bank_size}")
    if not bool(rows.any()):
        return {"head_quantile": fake.sum() * 0.0}, bank
    levels = tuple(sorted(set(levels)))
    u = torch.log(window_head_energy(fake[rows], levels) + floor).sort(dim=0).values  # (n, L)
    r = torch.log(window_head_energy(real[rows], levels) + floor).detach()
    n = u.shape[0]
    if bank_size == 0:
        q, new_bank = r.sort(dim=0).values, None
    else:
        new_bank = r if bank is None else torch.cat([bank.to(r), r])[-bank_size:]
        q = _midpoint_quantiles(new_bank.sort(dim=0).values, n)
    return {"head_quantile": (u - q).abs().mean()}, new_bank
