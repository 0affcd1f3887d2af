"""benchmarks/noise_spectra.py: its noise families are what its doc says (the measurement itself needs data + model)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from benchmarks import noise_spectra as ns


def _dbfs(x: np.ndarray) -> float:
    return 20 * math.log10(float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2))))


def test_every_family_is_seeded_steady_noise_at_the_benchmark_level():
    n = 16000 * 2
    fams = ns.families(n, draws=4, case=None)
    assert list(fams) == ["shaped (held-out draws)", "resonant (not trained)", "pink", "white < 2 kHz"]
    assert [len(v) for v in fams.values()] == [4, 2, 2, 2]
    for noises in fams.values():
        for x in noises:
            assert x.shape == (n,) and abs(_dbfs(x) - ns.LEVEL_DBFS) < 0.01
    again = ns.families(n, draws=4, case=None)
    np.testing.assert_array_equal(fams["shaped (held-out draws)"][3], again["shaped (held-out draws)"][3])
    assert not np.allclose(fams["shaped (held-out draws)"][0], fams["shaped (held-out draws)"][1])


def test_a_resonance_peaks_at_its_centre_over_pink():
    rng = np.random.default_rng(30_000)
    gain = ns.resonance(rng)
    f = np.geomspace(20, 8000, 4000)
    flat = gain(f) * np.sqrt(f)  # pink's 1/sqrt(f) divided out
    f0 = f[np.argmax(flat)]
    rng = np.random.default_rng(30_000)
    expected = math.exp(rng.uniform(math.log(150.0), math.log(2000.0)))
    assert abs(math.log(f0 / expected)) < 0.05
    rng.uniform(1.0, 4.0)
    gain_db = rng.uniform(8.0, 18.0)
    assert abs(20 * math.log10(flat.max() / flat[0]) - gain_db) < 0.5  # its drawn gain over the pink floor
    assert abs(flat[0] - 1.0) < 0.1 and abs(flat[-1] - 1.0) < 0.1  # and close to pink far from it


def test_the_case_spectrum_family_follows_the_case_file(tmp_path: Path):
    import soundfile as sf

    # a stand-in "case": low-passed noise; the family must keep its band balance (more power below 1 kHz)
    w = np.random.default_rng(0).standard_normal(16000 * 6)
    spec = np.fft.rfft(w)
    spec[np.fft.rfftfreq(len(w), 1 / 16000) > 1000] *= 0.1
    case = tmp_path / "case.wav"
    sf.write(case, (0.01 * np.fft.irfft(spec, n=len(w))).astype(np.float32), 16000)
    x = ns.families(16000 * 2, draws=2, case=case)["case spectrum"][0]
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / 16000)
    assert 10 * math.log10(p[(f > 200) & (f < 900)].mean() / p[(f > 1500) & (f < 6000)].mean()) > 15
