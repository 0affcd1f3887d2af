"""`head_quantile`: the distribution of window-level head motion matched against ground truth's (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import run_train, tiny_train_settings

from training.face_losses import _midpoint_quantiles, head_quantile_terms, window_head_energy
from training.metrics import viewer as vm

REPO = Path(__file__).resolve().parents[1]
T = 120  # 4.8 s windows, as the head fine-tunes


def _face() -> np.ndarray:
    """A toy face: landmarks on a line, eye corners p36/p45 0.3 apart (IOD 0.3)."""
    x = np.zeros((68, 2))
    x[:, 0] = np.linspace(0.3, 0.7, 68)
    x[:, 1] = 0.5
    x[36], x[45] = (0.35, 0.4), (0.65, 0.4)
    return x


def _window(turn: float, seed: int, sway: float = 0.002) -> torch.Tensor:
    """(T, 68, 2): the face carried by fast random sway plus one slow sideways turn of `turn` (face units)."""
    t = np.arange(T)
    path = np.random.default_rng(seed).normal(0, sway, (T, 2))
    path[:, 0] += turn * np.sin(t / T * np.pi)
    return torch.from_numpy((_face()[None] + path[:, None, :]).astype(np.float32))


def _batch(turns, seed: int) -> torch.Tensor:
    return torch.stack([_window(a, seed + k) for k, a in enumerate(turns)])


REAL_TURNS = [0.0, 0.0, 0.0, 0.01, 0.02, 0.05, 0.1, 0.2]  # a few large turns, many small movements


def _w(fake, real, **kw) -> float:
    rows = torch.ones(len(real), dtype=torch.bool)
    return float(head_quantile_terms(fake, real, rows, **kw)[0]["head_quantile"])


def test_window_energy_is_the_evaluations_head_energy_per_window():
    x = _window(0.1, 0)
    e = window_head_energy(x[None], levels=(0, 1, 2, 3))[0].numpy()
    np.testing.assert_allclose(e, vm.head_energy(x.numpy()), rtol=1e-4)
    only = window_head_energy(x[None], levels=(3, 2))[0].numpy()  # level order does not matter
    np.testing.assert_allclose(only, e[2:], rtol=1e-6)
    with pytest.raises(ValueError, match="level 5"):
        window_head_energy(x[None, :40], levels=(5,))


def test_midpoint_quantiles():
    v = torch.arange(4.0)[:, None]  # 0, 1, 2, 3
    torch.testing.assert_close(_midpoint_quantiles(v, 4), v)
    torch.testing.assert_close(_midpoint_quantiles(v, 2)[:, 0], torch.tensor([0.5, 2.5]))  # p 1/4, 3/4
    torch.testing.assert_close(_midpoint_quantiles(v, 8)[[0, -1], 0], torch.tensor([0.0, 3.0]))  # clamped ends
    twice = torch.arange(4.0).repeat_interleave(2)[:, None]
    torch.testing.assert_close(_midpoint_quantiles(twice, 4), v)


def test_zero_for_equal_distributions_whatever_the_pairing():
    real = _batch(REAL_TURNS, 0)
    assert _w(real, real) == 0.0
    shuffled = real[torch.tensor([7, 3, 0, 5, 1, 6, 2, 4])]  # the same windows answering other audio
    assert _w(shuffled, real) == pytest.approx(0.0, abs=1e-6)
    assert _w(real, real, levels=(0, 1, 2, 3)) == 0.0
    # against a bank holding the same distribution twice over: the midpoint quantiles are the order statistics
    _, bank = head_quantile_terms(real, real, torch.ones(8, dtype=torch.bool), bank_size=64)
    assert _w(real, real, bank=bank, bank_size=64) == pytest.approx(0.0, abs=1e-6)


def test_grows_as_the_fakes_upper_quantiles_shrink():
    real = _batch(REAL_TURNS, 0)
    values = []
    for shrink in (1.0, 0.7, 0.4, 0.2, 0.0):  # the large turns fade; the small motion stays
        fake = _batch([a if a < 0.05 else shrink * a for a in REAL_TURNS], 0)
        values.append(_w(fake, real))
    assert values[0] == 0.0
    assert all(b > a for a, b in zip(values, values[1:])), values
    # more small motion everywhere (the energy-ratio answer) costs too, although the batch mean may rise
    busy = torch.stack([_window(0.03, 100 + k, sway=0.004) for k in range(8)])
    assert _w(busy, real) > 0.5


def test_gradient_is_finite_and_asks_for_the_large_turns():
    real = _batch(REAL_TURNS, 0)
    calm = _batch([0.0] * 8, 50)
    moved = calm.clone().requires_grad_(True)
    rows = torch.ones(8, dtype=torch.bool)
    value = head_quantile_terms(moved, real, rows)[0]["head_quantile"]
    value.backward()
    assert moved.grad is not None and bool(torch.isfinite(moved.grad).all()) and float(moved.grad.abs().max()) > 0
    # identical (still) windows: the energy floor keeps the log and its gradient finite
    still = torch.from_numpy(np.repeat(_face()[None, None], T, axis=1).repeat(2, axis=0).astype(np.float32))
    still.requires_grad_(True)
    head_quantile_terms(still, real[:2], torch.ones(2, dtype=torch.bool))[0]["head_quantile"].backward()
    assert bool(torch.isfinite(still.grad).all())
    # a small step against the gradient lowers the term
    step = moved.detach() - 0.002 * moved.grad / moved.grad.abs().max()
    assert _w(step, real) < float(value.detach())


def test_bank_keeps_the_last_real_windows_and_rows_select():
    real = _batch(REAL_TURNS, 0)
    rows = torch.ones(8, dtype=torch.bool)
    terms, bank = head_quantile_terms(real, real, rows, bank_size=12)
    assert bank.shape == (8, 2) and float(terms["head_quantile"]) == 0.0
    _, bank2 = head_quantile_terms(real, real, rows, bank=bank, bank_size=12)
    assert bank2.shape == (12, 2) and not bank2.requires_grad
    torch.testing.assert_close(bank2[-8:], bank)  # the newest windows at the end
    terms, bank3 = head_quantile_terms(real, real, torch.zeros(8, dtype=torch.bool), bank=bank2, bank_size=12)
    assert float(terms["head_quantile"]) == 0.0 and bank3 is bank2  # no row used: bank unchanged
    assert head_quantile_terms(real, real, rows)[1] is None  # bank_size 0 keeps no bank
    # rows: only the selected windows count
    calm = _batch([0.0] * 8, 50)
    mixed = torch.cat([calm[:4], real[4:]])
    sel = torch.tensor([False] * 4 + [True] * 4)
    assert float(head_quantile_terms(mixed, real, sel)[0]["head_quantile"]) == 0.0
    for bad in ({"levels": ()}, {"levels": (8,)}, {"bank_size": -1}):
        with pytest.raises(ValueError, match="head_quantile"):
            head_quantile_terms(real, real, rows, **bad)


def test_bad_settings_are_refused_when_the_config_is_made():
    from training.train_generator import TrainGeneratorConfig

    with pytest.raises(ValueError, match="head_quantile_levels"):
        TrainGeneratorConfig(batch_size=8, head_quantile_levels=(9,))
    with pytest.raises(ValueError, match="head_quantile_bank"):
        TrainGeneratorConfig(batch_size=8, head_quantile_bank=-1)
    with pytest.raises(ValueError, match="head_quantile_weight"):
        TrainGeneratorConfig(batch_size=8, head_quantile_weight=-1.0)


@pytest.mark.slow
def test_weight_zero_trains_bit_for_bit_as_before(shared_data, tmp_path):
    """Two iterations of a tiny generator: the term's settings with weight 0 give the very same weights as the
    defaults (today's training); weight 1 changes them and logs the term."""
    sets = {**tiny_train_settings(tmp_path), "head_pyramid_weight": 1.0}
    variants = {
        "default": {},
        "zero": {"head_quantile_weight": 0.0, "head_quantile_levels": [1, 2], "head_quantile_bank": 16},
        "on": {"head_quantile_weight": 1.0, "head_quantile_levels": [1, 2], "head_quantile_bank": 16},
    }
    weights = {}
    for name, extra in variants.items():
        out = tmp_path / name
        train = [r for r in run_train({**sets, **extra}, out) if r.get("split") == "train"]
        weights[name] = (out / "generator.safetensors").read_bytes()
        if name == "on":
            assert all(np.isfinite(r["head_quantile"]) for r in train)
        else:
            assert all("head_quantile" not in r for r in train)
    assert weights["zero"] == weights["default"]
    assert weights["on"] != weights["default"]


def test_head_distribution_reads_an_eval_report(tmp_path):
    """`benchmarks.head_distribution`: percentile ratios 1 and W1 0 for ground truth's own energies, ratios below
    1 at p90 and W1 > 0 for a row whose large sequences are missing, and the same W1 as the training term."""
    from benchmarks.head_distribution import distribution, main

    rng = np.random.default_rng(0)
    gt = np.exp(rng.normal(-7.0, 1.5, (40, 4)))
    same = distribution(gt, gt)
    assert np.allclose(same["percentile_ratio"], 1.0) and np.allclose(same["w1_log"], 0.0)
    capped = np.minimum(gt, np.percentile(gt, 60, axis=0))  # no large movements
    r = distribution(capped, gt)
    assert all(p[3] < 1.0 and p[0] == pytest.approx(1.0) for p in r["percentile_ratio"]) and min(r["w1_log"]) > 0
    # the training term on the same numbers: W1 of the log energies (order of windows irrelevant)
    lg, lc = torch.log(torch.from_numpy(gt) + 1e-8), torch.log(torch.from_numpy(capped) + 1e-8)
    w1 = (lc.sort(0).values - lg.sort(0).values).abs().mean(0)
    np.testing.assert_allclose(r["w1_log"], w1.numpy(), rtol=1e-9)
    with pytest.raises(ValueError, match="differ"):
        distribution(gt[:10], gt)
    seqs = lambda e: {str(i): list(map(float, row)) for i, row in enumerate(e)}  # noqa: E731
    report = {
        "viewer": {
            "methods": {
                "ground truth": {"head_energy_by_sequence": seqs(gt)},
                "static face": {"head_energy_by_sequence": seqs(0 * gt)},
                "capped": {"head_energy_by_sequence": seqs(capped)},
            }
        }
    }
    (tmp_path / "eval.json").write_text(json.dumps(report))
    assert main(["--eval", str(tmp_path / "eval.json"), "--out", str(tmp_path / "hd")]) == 0
    out = json.loads((tmp_path / "hd.json").read_text())
    assert set(out["rows"]) == {"capped"}  # a row that never moves is left out
