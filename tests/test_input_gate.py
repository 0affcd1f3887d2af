"""The step's input gate (`training.models.input_gate`): its floor is the engine's minimum-statistics tracker, it
passes speech untouched, fades steady noise to digital silence after its hold, opens at once on an onset, starts
open from zero state, and the gated generator's step equals its sequence form over gated PCM; the exported step
carries it as one more zero-initialised state and ONNX Runtime reproduces PyTorch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export_helpers import step_parity  # noqa: E402

from stream_engine.dataclass_io import from_dict, to_dict  # noqa: E402
from stream_engine.noise_floor import NoiseFloor  # noqa: E402
from training.models.input_gate import DEFAULT_NOISE, InputGate, InputGateConfig  # noqa: E402

SPF = 640


def _gate(**kw) -> InputGate:
    return InputGate(InputGateConfig(**kw), SPF, 25.0)


def _tone(level_dbfs: float, steps: int, seed: int = 0) -> np.ndarray:
    """Gaussian noise of this RMS level, `steps` steps long (a steady background)."""
    x = np.random.default_rng(seed).standard_normal(steps * SPF)
    return (x / np.sqrt(np.mean(x * x)) * 10 ** (level_dbfs / 20)).astype(np.float32)


def _raw_levels(pcm: np.ndarray) -> np.ndarray:
    """RMS level of each step of a 1-D stream, dBFS (without the gate's pre-emphasis)."""
    steps = pcm[: pcm.size // SPF * SPF].reshape(-1, SPF).astype(np.float64)
    return 10 * np.log10(np.maximum((steps * steps).mean(axis=1), 1e-12))


def _run(gate: InputGate, pcm: np.ndarray):
    """Step a (B, N) stream: gated audio (B, N), gains (B, steps), floors (B, steps), levels (B, steps)."""
    x = torch.from_numpy(np.atleast_2d(pcm))
    state = gate.initial_state(x.shape[0])
    outs, gains, floors, levels = [], [], [], []
    for k in range(x.shape[1] // SPF):
        r = gate.step(x[:, k * SPF : (k + 1) * SPF], state)
        state = r.state
        outs.append(r.audio)
        gains.append(r.gain[:, 0])
        floors.append(r.floor_dbfs[:, 0])
        levels.append(r.level_dbfs[:, 0])
    return (torch.cat(outs, 1).numpy(), torch.stack(gains, 1).numpy(), torch.stack(floors, 1).numpy(),
            torch.stack(levels, 1).numpy())  # fmt: skip


def test_floor_is_the_engine_trackers_floor():
    """Fed the same step levels, the gate's float32 floor equals `NoiseFloor`'s (float64) within 1e-3 dB: random
    walks with skipped (digitally silent) steps, a steady start, and a background that rises and falls."""
    rng = np.random.default_rng(1)
    steps = 500
    levels = []
    for b in range(6):
        walk = -45.0 + np.cumsum(rng.normal(0, 2.5, steps))
        walk[rng.random(steps) < 0.06] = -130.0  # skipped: below skip_below_dbfs
        if b == 0:
            walk = -50.0 + rng.normal(0, 0.3, steps)  # steady from the start: adopted after 8 steps
        if b == 1:
            walk = np.where(np.arange(steps) < 200, -60.0, -30.0) + rng.normal(0, 1.0, steps)  # a fan comes on
        levels.append(np.clip(walk, -130.0, -3.0))
    amp = np.sqrt(10 ** (np.array(levels) / 10))  # (B, steps): a +-a square wave has exactly this level
    pcm = np.repeat(amp, SPF, axis=1).astype(np.float32)
    pcm[:, 1::2] *= -1
    _, _, floors, measured = _run(_gate(preemphasis=0.0, noise=DEFAULT_NOISE), pcm)  # the levels as built
    for b in range(len(levels)):
        ref = NoiseFloor(DEFAULT_NOISE)
        want = np.array([ref.update(float(v), 0.04) for v in measured[b]])
        assert np.abs(floors[b] - want).max() < 1e-3, b
    assert np.abs(floors[0, 10:] - (-50.0)).max() < 1.5  # the steady start adopted the background at once
    assert floors[1, 150] < -58 and floors[1, 480] > -33  # the louder background was adopted within the window


def test_speech_passes_untouched_and_steady_noise_fades_to_silence_after_the_hold(speech):
    """Speech over a -48 dBFS background: every sample of the speech steps passes unchanged (gain exactly 1; a
    phrase's first step after a pause longer than the hold may be the exception), the
    noise after it keeps gain 1 for the hold (0.48 s = 12 steps) after the last speech step, fades within one step,
    then is exactly zero; an onset reopens the gate in its own step, its samples unchanged."""
    gate = _gate()
    n_speech = 100
    talk = np.asarray(speech[: n_speech * SPF], np.float32)
    noise = _tone(-48.0, 2 * n_speech + 60, seed=2)
    pcm = noise.copy()
    pcm[: n_speech * SPF] += talk
    pcm[(n_speech + 60) * SPF :] += talk  # speech again after 2.4 s of noise alone
    out, gains, floors, levels = _run(gate, pcm)
    gains, floors, levels, out = gains[0], floors[0], levels[0], out[0]
    raw = _raw_levels(pcm)
    loud = np.flatnonzero(raw[:n_speech] > -30)
    sustained = loud[np.isin(loud - 1, loud)]  # loud steps after a loud step: inside a phrase
    assert sustained.size > 30 and np.all(gains[sustained] == 1.0)
    # a phrase after a pause longer than the hold may lose its first step (its sound may fill fewer than 3 of the
    # step's 10-ms blocks), never more
    assert np.all(np.maximum(gains[loud], gains[np.minimum(loud + 1, gains.size - 1)]) == 1.0)
    assert np.all(gains[n_speech + 20 : n_speech + 60] == 0.0)
    closed = n_speech + int(np.argmax(gains[n_speech:] == 0.0))
    spoken = np.flatnonzero(levels[:closed] >= floors[:closed] + gate.cfg.margin_db)  # speech by the gate's test
    assert closed == spoken[-1] + gate.hold_frames + 1  # closes right after the hold, not before
    assert closed - n_speech < gate.hold_frames + 3  # the background itself never counts as speech
    assert np.all(out[(closed + 1) * SPF : (n_speech + 60) * SPF] == 0.0)  # digital silence
    fade = out[closed * SPF : (closed + 1) * SPF] / pcm[closed * SPF : (closed + 1) * SPF]
    assert fade[0] == pytest.approx(1.0, abs=2e-3) and fade[-1] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(fade) <= 1e-6)  # one monotone fade across the step
    onset = n_speech + 60 + int(np.argmax(_raw_levels(pcm)[n_speech + 60 :] > -30))
    assert gains[onset] == 1.0
    np.testing.assert_array_equal(out[onset * SPF : (onset + 1) * SPF], pcm[onset * SPF : (onset + 1) * SPF])


def test_quiet_speech_in_digital_silence_and_a_fresh_stream_pass(speech):
    """Speech 38 dB quieter than usual keeps the gate open on its speech (its quiet pauses are skipped: the floor
    stays near its -90 dBFS start); a fresh stream starts open (zero state)."""
    gate = _gate()
    quiet = np.asarray(speech[: 150 * SPF], np.float32) * 10 ** (-38 / 20)
    _, gains, _, _ = _run(gate, quiet)
    spoken = _raw_levels(quiet) > -70
    assert spoken.sum() > 40 and gains[0][spoken].mean() > 0.99
    _, gains, _, _ = _run(gate, _tone(-48.0, 3))
    assert np.all(gains == 1.0)  # the background is not known yet


def test_gate_pcm_equals_stepping_and_a_trailing_part_step():
    """`gate_pcm` over a whole stream (its last step incomplete) gives the samples of stepping it."""
    gate = _gate(hold_s=0.12)
    pcm = np.concatenate([_tone(-20.0, 30, 3), _tone(-50.0, 40, 4)])[: 70 * SPF - 123]
    stepped, _, _, _ = _run(gate, np.concatenate([pcm, np.zeros(123, np.float32)]))
    whole = gate.gate_pcm(torch.from_numpy(pcm)[None]).numpy()
    np.testing.assert_array_equal(whole[0], stepped[0, : pcm.size])
    assert np.all(whole[0, -20 * SPF :] == 0.0)


def test_config_is_checked_and_round_trips():
    with pytest.raises(ValueError):
        InputGateConfig(margin_db=-1.0)
    with pytest.raises(ValueError):
        InputGateConfig(hold_s=-0.1)
    with pytest.raises(ValueError):
        InputGateConfig(noise=dataclasses.replace(DEFAULT_NOISE, skip_below_dbfs=-float("inf")))
    from training.models.generator import GeneratorConfig

    cfg = GeneratorConfig(input_gate=InputGateConfig(hold_s=0.48, margin_db=6.0, preemphasis=0.97))
    assert from_dict(GeneratorConfig, to_dict(cfg)) == cfg
    assert from_dict(GeneratorConfig, to_dict(GeneratorConfig())).input_gate is None


TINY = dict(audio_channels=16, landmark_embed=16, lstm_hidden=16, branch_hidden=16, branch_expansion=1)


def test_gated_generator_step_equals_its_sequence_form_over_gated_pcm(speech):
    """`Generator.step` with an input gate gives the sequence form's frames over `gate_pcm`'s samples
    (`training.eval.generation.stream_rollout`, which gates the stream's PCM from its start) within 1e-5, through
    speech, a noise pause the gate closes, and speech again; the gate changes the frames there."""
    from training.eval.generation import LoadedModel, step_rollout, stream_rollout
    from training.models.generator import Generator, GeneratorConfig

    torch.manual_seed(0)
    gated = Generator(GeneratorConfig(**TINY, velocity_scale=0.002, input_gate=InputGateConfig())).eval()
    plain = Generator(GeneratorConfig(**TINY, velocity_scale=0.002)).eval()
    plain.load_state_dict(gated.state_dict())
    state = gated.initial_state(torch.zeros(1, 68, 2))
    assert state.input_gate is not None and torch.all(state.input_gate == 0)
    assert plain.initial_state(torch.zeros(1, 68, 2)).input_gate is None
    talk = np.asarray(speech[: 50 * SPF], np.float32)
    pcm = _tone(-45.0, 150, 5)
    pcm[: 50 * SPF] += talk
    pcm[100 * SPF :] += talk
    x_ref = np.random.default_rng(0).uniform(0.3, 0.7, (68, 2)).astype(np.float32)
    W = gated.cfg.receptive_field_frames[-1] - 1
    rows = {}
    for name, G in (("gated", gated), ("plain", plain)):
        m = LoadedModel(name, name, G, {}, W, G.cfg.lookahead_frames)
        rows[name] = step_rollout(m, pcm, x_ref, 0, 140, "cpu")
        whole = stream_rollout(m, pcm, x_ref, 0, 140, "cpu", chunk=64)
        assert np.abs(whole - rows[name]).max() <= 1e-5, name
    assert np.abs(rows["gated"] - rows["plain"]).max() > 1e-4


def test_exported_step_carries_the_gate_as_a_zero_state_and_matches_pytorch(tmp_path, speech):
    """`msync export --random-init --input-gate`: the contract gains the state `input_gate` (zeros) and the
    generator config says so; ONNX Runtime matches PyTorch step by step through speech and a gated noise pause,
    where the gate's state reaches the closed gate; without the flag there is no such state."""
    from export.cli import random_generator
    from stream_engine.cli import main
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    out = tmp_path / "gated.onnx"
    args = ["export", "--random-init", "--seed", "2", "--set", "velocity_scale=0.0002"]
    assert main(args + ["--input-gate", "--out", str(out)]) == 0
    runner = OnnxStepRunner(out)
    spec = {s.name: s for s in runner.contract.states}
    assert spec["input_gate"].init == "zeros" and spec["input_gate"].shape[1] == 19
    assert runner.contract.generator_config["input_gate"] == to_dict(InputGateConfig())
    g = random_generator(seed=2, overrides=["velocity_scale=0.0002", "input_gate={}"])
    pcm = _tone(-48.0, 70, 6)
    pcm[: 30 * SPF] += np.asarray(speech[: 30 * SPF], np.float32)
    state, tstate = step_parity(runner, g, pcm)
    np.testing.assert_allclose(state["input_gate"], tstate.input_gate.numpy(), atol=1e-3)
    assert state["input_gate"][0, 7] == 1.0  # CLOSED: the noise after the speech is gated
    plain = tmp_path / "plain.onnx"
    assert main(args + ["--out", str(plain)]) == 0
    assert "input_gate" not in {s.name for s in OnnxStepRunner(plain).contract.states}


def test_a_phrase_after_digital_silence_opens_at_its_first_step(speech):
    """Where every pause is digital silence (a file, push-to-talk) the floor settles at the speech's own quietest
    level; the first heard step after the silence still counts as speech, so a phrase's first syllable is heard
    from its first step, even when that step is quieter than the floor."""
    gate = _gate()
    talk = np.asarray(speech[: 60 * SPF], np.float32)
    pcm = np.concatenate([talk, np.zeros(40 * SPF, np.float32), talk * 0.01, talk])
    out, gains, floors, levels = _run(gate, pcm)
    k = 100  # the second phrase's first step, 40 dB down
    assert levels[0, k] < floors[0, k] + gate.cfg.margin_db and levels[0, k] > -100
    assert gains[0, k] == 1.0
    np.testing.assert_array_equal(out[0, k * SPF : (k + 1) * SPF], pcm[k * SPF : (k + 1) * SPF])


def test_clicks_faster_than_the_hold_right_after_speech_do_not_hold_the_gate_open(speech):
    """Typing while the hold runs: a 5 ms click every 0.2 s from the end of a phrase on neither restarts the hold
    nor reopens the gate, which closes 0.48 s after the phrase's last speech step as without the clicks."""
    gate = _gate()
    n_speech = 60
    pcm = _tone(-48.0, n_speech + 100, seed=9).astype(np.float64)
    pcm[: n_speech * SPF] += np.asarray(speech[: n_speech * SPF], np.float64)
    quiet = pcm.copy()
    rng = np.random.default_rng(10)
    for t in np.arange(n_speech * SPF + 1600, pcm.size - 200, 3200):  # every 0.2 s
        pcm[t : t + 80] += rng.standard_normal(80) * 10 ** (-25 / 20)
    _, with_clicks, _, _ = _run(gate, pcm.astype(np.float32))
    _, without, _, _ = _run(gate, quiet.astype(np.float32))
    np.testing.assert_array_equal(with_clicks, without)
    assert np.all(with_clicks[0, n_speech + 30 :] == 0.0)


def test_a_soft_step_inside_a_phrase_carries_it_but_not_after_a_pause():
    """A step whose whole level stands 6 dB above the floor but fills only 2 of its 4 blocks counts as speech
    right after a speech step (a phrase's soft step), and not after a non-speech step (a click does the same)."""
    gate = _gate(hold_s=0.0)  # no hold: each step's gain is its own speech decision
    bg = _tone(-50.0, 60, seed=11)
    loud = _tone(-30.0, 1, seed=12)
    soft = np.zeros(SPF, np.float32)
    soft[SPF // 2 :] = _tone(-33.0, 1, seed=13)[: SPF // 2]  # the second half only: 2 blocks, whole level ~-36
    soft += bg[:SPF]
    inside = np.concatenate([bg, loud + bg[:SPF], soft])  # loud step, then the soft one
    alone = np.concatenate([bg, bg[:SPF], soft])  # a background step, then the soft one
    _, g_inside, floors, levels = _run(gate, inside)
    _, g_alone, _, _ = _run(gate, alone)
    k = 61
    assert levels[0, k] >= floors[0, k] + gate.cfg.margin_db
    assert g_inside[0, k] == 1.0 and g_alone[0, k] == 0.0


def test_a_click_in_the_noise_does_not_reopen_the_gate_but_a_word_does(speech):
    """Once the gate has closed in steady noise, 5 ms clicks 23 dB above it (a key, a mouse) leave it closed: a step
    needs 3 of its 4 10-ms blocks above the floor; a word reopens it within its first two steps."""
    gate = _gate()
    pcm = _tone(-48.0, 200, seed=7).astype(np.float64)
    rng = np.random.default_rng(8)
    for t in (60, 80, 100, 120):  # steps; the gate has closed by then (no speech at all)
        a = t * SPF + 200
        pcm[a : a + 80] += rng.standard_normal(80) * 10 ** (-25 / 20)
    word = np.asarray(speech[: 30 * SPF], np.float64)
    pcm[150 * SPF : 180 * SPF] += word
    _, gains, _, _ = _run(gate, pcm.astype(np.float32))
    assert np.all(gains[0, 40:150] == 0.0)
    loud = np.flatnonzero(_raw_levels(word.astype(np.float32)) > -30)
    assert gains[0, 150 + loud[0]] == 1.0 or gains[0, 150 + loud[0] + 1] == 1.0
