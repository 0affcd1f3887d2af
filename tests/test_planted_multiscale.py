"""The planted-correlation test: the syncer pyramid is multi-scale.

Synthetic faces whose mouth follows the speech only at the syllable scale and whose head follows it only at the
phrase scale (training/synthetic.py). A pyramid trained by the real trainer on such data must see the mouth link
at level 0 (200 ms) and not the head link, and the reverse at level 3 (1.6 s).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from training import synthetic as syn

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Separation margins on the two-alternative forced-choice detection rate (chance 0.5). 600 pairs give a binomial
# SE of ~0.02 per cell, but at level 3 the 16 evaluation clips hold only ~100 non-overlapping 1.6 s segments, so
# cells wander by ~0.05 between seeds. Measured with this configuration (kernel 7, the syncer's default landmark
# centring "sequence", seeds 0 / 1 / 2):
#   L0 mouth_only - head_only = 0.46 / 0.47 / 0.44       -> margin 0.25
#   L3 head_only - mouth_only = 0.30 / 0.23 / 0.26       -> margin 0.12
# (benchmarks/planted_multiscale.py, a wider model trained 1200 steps: L0 0.45 / 0.46, L3 0.23 / 0.14.)
L0_MARGIN = 0.25
L3_MARGIN = 0.12


def _speech_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Noise under a random syllable-rate envelope, gated by random phrases (for the data-free tests)."""
    n = int(seconds * syn.SAMPLE_RATE_HZ)
    frames = int(seconds * syn.FPS) + 1
    syll = np.exp(syn.gaussian_lowpass(rng.standard_normal(frames), 1.5) * 3.0)
    phrase = 0.2 + (syn.gaussian_lowpass(rng.standard_normal(frames), 12.0) > 0)
    gain = np.interp(np.arange(n) / syn.SAMPLES_PER_FRAME, np.arange(frames), syll * phrase)
    return (0.05 * gain * rng.standard_normal(n)).astype(np.float32)


def _power_share(x: np.ndarray, lo_hz: float, hi_hz: float) -> float:
    spec = np.abs(np.fft.rfft(x - x.mean())) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / syn.FPS)
    return float(spec[(f >= lo_hz) & (f < hi_hz)].sum() / spec.sum())


def test_components_split_the_envelope_by_time_scale():
    rng = np.random.default_rng(0)
    env = syn.envelope(_speech_like(60.0, rng))
    assert env.shape == (1500,) and abs(env.mean()) < 1e-9 and abs(env.std() - 1) < 1e-6
    slow, fast = syn.slow_component(env), syn.fast_component(env)
    assert _power_share(slow, 0.0, 0.8) > 0.98 and _power_share(slow, 1.5, 13.0) < 0.01
    assert _power_share(fast, 1.5, 13.0) > 0.9 and _power_share(fast, 0.0, 0.5) < 0.01


def test_written_variants_load_with_the_real_loader(tmp_path):
    from training.data.clips import load_all
    from training.data.manifest import read_manifest

    rng = np.random.default_rng(1)
    audios = [_speech_like(4.0, rng) for _ in range(3)]
    face = syn.mean_face(DATA_DIR) if DATA_DIR.is_dir() else _toy_face()
    cfg = syn.PlantedConfig(noise_px=0.0)
    for variant, (mouth_synced, head_synced) in syn.VARIANTS.items():
        d = syn.write_dataset(tmp_path / variant, audios, variant, face, cfg, prefix="t")
        records = read_manifest(d)
        assert len(records) == 3 and len({r.identity for r in records}) == 3
        segs = load_all(records, progress=False)
        assert [s.num_frames for s in segs] == [100, 100, 100]
        lm = np.load(records[0].landmarks_path)
        assert lm.shape == (100, 68, 2) and lm.dtype == np.float32
        assert 0 < lm.min() and lm.max() < cfg.frame_px
        # The head signal is the (common) vertical shift of the rigid points; the mouth one the lower-lip drop.
        # Synced parts follow the clip's own envelope exactly; donor parts another clip's, shifted in time.
        head = lm[:, 27:36, 1].mean(axis=1)
        mouth = lm[:, 57, 1] - lm[:, 33, 1]
        env = syn.envelope(audios[0])
        r_head = np.corrcoef(head, syn.slow_component(env))[0, 1]
        r_mouth = np.corrcoef(mouth, syn.fast_component(env))[0, 1]
        assert (r_head > 0.99) if head_synced else (abs(r_head) < 0.6), (variant, r_head)
        assert (r_mouth > 0.99) if mouth_synced else (abs(r_mouth) < 0.3), (variant, r_mouth)
        assert records[0].row["head_source"] == ("0" if head_synced else "1")
        assert records[0].row["mouth_source"] == ("0" if mouth_synced else "2")


def _toy_face() -> np.ndarray:
    ang = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    face = np.stack([0.5 * np.cos(ang), 0.6 * np.sin(ang)], axis=1)
    face[16], face[0] = [0.5, 0.0], [-0.5, 0.0]
    return face


@pytest.mark.slow
@pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"needs the shared speech clips at {DATA_DIR}")
def test_pyramid_levels_detect_sync_at_their_own_time_scale(tmp_path):
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    result = syn.run_experiment(syn.ExperimentConfig(data_dir=str(DATA_DIR)), tmp_path)
    det = {v: {lvl: d["afc"] for lvl, d in per.items()} for v, per in result["detection"].items()}
    table = syn.markdown_table(result["detection"])
    print(f"\n{table}\n({time.perf_counter() - t0:.0f} s)")

    # Both links present: each end of the pyramid sees its own.
    assert det["both"][0] > 0.8 and det["both"][3] > 0.7, table
    # Level 0 (200 ms) sees the mouth, not the head.
    assert det["mouth_only"][0] > det["head_only"][0] + L0_MARGIN, table
    assert det["head_only"][0] < 0.65, table
    # Level 3 (1.6 s) sees the head, not the mouth.
    assert det["head_only"][3] > det["mouth_only"][3] + L3_MARGIN, table
    assert det["mouth_only"][3] < 0.65, table
    # Nothing planted, nothing found.
    assert max(det["none"].values()) < 0.65, table
