"""The step's input gate: a noise gate on the PCM, inside the exported step, so the raw mouth rests in steady noise.

Why: the generator opens its mouth in steady noise whose spectrum it was not trained on (model 0.3.5: after speech
in -48 dBFS noise of held-out random spectra, 31 % of streams kept the inner-lip gap above 0.03 IOD;
`benchmarks/noise_spectra.py`), while in digital silence it closes within three frames. The engine's speech gate
(`stream_engine.signals`) already closes the rig's `mouth_open` there, but raw landmarks, and every runtime
that is not the Python engine (C++, TensorRT, Triton), saw the open mouth. The gate does in the step what the
engine's signal gate does for the rig: where the stream's level has stayed near its own background for
`hold_s`, the audio the network hears is faded to digital silence, which it was trained to rest in.

Per 40 ms step (640 samples), for each stream:

1. the level of the new samples after a first-order pre-emphasis, `10 log10(mean(y^2))` dBFS with
   `y[n] = x[n] - preemphasis * x[n-1]` within the step (floored at -120): tilting the spectrum up keeps the fans,
   hum and rumble that fill most rooms' backgrounds below the speech band's consonants and formants (a scratch
   count on the test split's VidTIMIT clips, about 10 dB above their background, gated 10 % of their speech steps
   with 0.97 and a 6 dB margin, against 26 % with the flat level and 8 dB; an earlier setting);
2. the stream's noise floor: minimum statistics over smoothed levels (R. Martin, IEEE Trans. Speech and Audio
   Processing 9(5), 2001), exactly the tracker of `stream_engine.noise_floor.NoiseFloor` with `cfg.noise`
   (sub-window ring, steady start, frames below `skip_below_dbfs` skipped), in float32;
3. speech: the step was heard (not below `skip_below_dbfs`) and at least 3 of its 4 10-ms blocks stand
   `margin_db` above that floor (sound that lasts: a click does not), or the previous step was speech and this
   step's whole level stands that far above it (a phrase's soft steps), or it is the first heard step after
   digital silence (an onset: where every pause is digital silence, a file or a push-to-talk stream, the floor is
   the speech's own quietest level and would cut each phrase's start);
4. the gain: 1 while the last speech step is at most `hold_frames` steps back, else 0. It opens at once (an
   onset's step keeps its own attack) and closes with a linear fade over the step's 640 samples, so the front
   end's windows never see a cut;
5. the new samples times the gain go on into the step, the front end's context (`audio_carry`) included.

Everything the gate remembers is one state row per stream, `GATE_STATE_NAME` (B, `GateLayout.width`), whose
all-zero value is a fresh stream (floor at `init_dbfs`, nothing heard, the gate open), as every state of the step
contract starts at its declared initial value ("zeros"). The gate is a function of the audio alone, so a whole
stream can be gated ahead of a sequence model (`gate_pcm`), which is what `Generator.forward` users (training's
evaluation, benchmarks) do to see what the step does.

Training does not use the gate (it has no weights): `training.train_generator`, `training.train_distill` and the
benchmarks that read MFCC directly (`gap_lag`, `distill_probe`, `voice_adapt`) see ungated audio, which differs
from what the step hears only in pauses the gate closes.

Costs: a phrase after a pause longer than `hold_s` in noise may lose its first step (when its sound fills fewer
than `loud_blocks` blocks); sound of 30 ms or more in the noise reopens the gate; the lip movement in speech pauses
longer than `hold_s` (the network then hears silence; a real mouth in a
long pause usually closes too) and the look of speech whose level stays within `margin_db` of its own
background (very noisy rooms); see the model card's measurements.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch

from stream_engine.noise_floor import NoiseFloorConfig

#: The step state the gate adds to the contract when `GeneratorConfig.input_gate` is set.
GATE_STATE_NAME = "input_gate"

#: The gate's own tracker settings: the engine speech gate's (`signals.SignalConfig` defaults: 2 s window of
#: 4 sub-windows, floor assumed at -90 dBFS until measured, smoothing 0.8, a steady start after 8 frames within
#: 2 dB) but for the skip level: -100 dBFS instead of -75, so that the background of speech 38 dB quieter than
#: usual is still heard (at -75 the floor rose to that speech's own quiet parts and gated 7 % of its steps).
DEFAULT_NOISE = NoiseFloorConfig(
    window_s=2.0,
    subwindows=4,
    init_dbfs=-90.0,
    skip_below_dbfs=-100.0,
    smoothing=0.8,
    start_steady_frames=8,
    start_steady_db=2.0,
)

#: Stand-in for "no minimum yet" in the sub-window in progress (dBFS): above any level a frame can have.
_NO_MINIMUM_DBFS = 200.0
_LEVEL_FLOOR = 1e-12  # mean square floor: -120 dBFS


@dataclasses.dataclass(frozen=True)
class InputGateConfig:
    """The step's input gate (module docstring).

    Attributes:
        noise: the noise-floor tracker (`stream_engine.noise_floor.NoiseFloorConfig`); `skip_below_dbfs` must be
            finite (frames that quiet are neither background nor speech).
        margin_db: how far (dB) above the floor a level must stand: `loud_blocks` of a step's `blocks` block
            levels, or the whole step's level when the previous step counted as speech (inside a phrase).
        hold_s: the gate closes once no step has counted as speech for longer than this (seconds of stream
            time, rounded to whole 40 ms steps).
        preemphasis: a in y[n] = x[n] - a x[n-1], applied before every level (0 = the flat level), in [0, 1).
        blocks: equal parts of a step whose levels are compared with the floor (4: 10 ms each at 16 kHz).
        loud_blocks: how many of them must stand `margin_db` above the floor for a step that does not follow a
            speech step: 3 of 4 asks for sound that lasts about 30 ms, which a click (a key, a mouse, a few ms)
            does not; each reopening on a click let the network hear the noise again for the hold, as an onset
            after silence, and clicks closer together than the hold kept the gate open
            (`benchmarks.noise_spectra`'s clicks table).
    Raises:
        ValueError: margin_db < 0, hold_s < 0, preemphasis outside [0, 1), blocks < 1, loud_blocks outside
            [1, blocks], or a non-finite skip level.
    """

    noise: NoiseFloorConfig = DEFAULT_NOISE
    margin_db: float = 6.0
    hold_s: float = 0.48
    preemphasis: float = 0.97
    blocks: int = 4
    loud_blocks: int = 3

    def __post_init__(self) -> None:
        if self.margin_db < 0 or self.hold_s < 0:
            raise ValueError("the input gate's margin_db and hold_s must be >= 0")
        if not 0.0 <= self.preemphasis < 1.0:
            raise ValueError("the input gate's preemphasis must be in [0, 1)")
        if self.blocks < 1 or not 1 <= self.loud_blocks <= self.blocks:
            raise ValueError("the input gate needs blocks >= 1 and 1 <= loud_blocks <= blocks")
        if not math.isfinite(self.noise.skip_below_dbfs):
            raise ValueError("the input gate's noise.skip_below_dbfs must be finite")


@dataclasses.dataclass(frozen=True)
class GateLayout:
    """Columns of the gate's state row. Every level is stored relative to `init_dbfs` (0 = init), the minimum of
    the sub-window in progress as `_NO_MINIMUM_DBFS` minus it (0 = none yet), the gain as 1 - gain (0 = open), so
    that zeros are a fresh stream."""

    ring: int  # completed sub-windows kept (subwindows - 1)
    recent: int  # steady-start levels kept (start_steady_frames, at least 1)

    HEARD = 0  # 1 once a frame was heard (the smoother starts from the first heard level)
    SMOOTHED = 1  # smoothed level - init_dbfs
    CURRENT = 2  # _NO_MINIMUM_DBFS - minimum of the sub-window in progress
    ELAPSED = 3  # heard frames in the sub-window in progress
    MEASURED = 4  # completed sub-windows, up to `ring`
    CONSECUTIVE = 5  # consecutive heard frames, up to `recent`
    SINCE = 6  # steps since the last speech step, up to hold_frames + 1
    CLOSED = 7  # 1 - the gain of the last step
    FIRST_RING = 8

    @property
    def first_recent(self) -> int:
        return self.FIRST_RING + self.ring

    @property
    def width(self) -> int:
        return self.first_recent + self.recent


def layout(cfg: InputGateConfig) -> GateLayout:
    return GateLayout(ring=int(cfg.noise.subwindows) - 1, recent=max(1, int(cfg.noise.start_steady_frames)))


def close_frames(sub_s: float, dt_s: float) -> int:
    """Heard frames of `dt_s` seconds after which a sub-window of `sub_s` closes, counted as
    `stream_engine.noise_floor.NoiseFloor` counts them (a float sum of dt_s reaching sub_s)."""
    elapsed, n = 0.0, 0
    while True:
        elapsed += dt_s
        n += 1
        if elapsed >= sub_s:
            return n


class GateStep(NamedTuple):
    """What one gate step gives (each (B, 1) but `audio` (B, samples_per_step) and `state` (B, width))."""

    audio: torch.Tensor  # the step's samples times the gain (faded within the step when it closes)
    gain: torch.Tensor  # the gain at the step's end, 0 or 1
    level_dbfs: torch.Tensor  # the step's level
    floor_dbfs: torch.Tensor  # the noise floor, this step included (as `NoiseFloor.update` returns it)
    state: torch.Tensor  # the next state row


class InputGate(torch.nn.Module):
    """The gate as a module of constants: `step` for one 40 ms step, `gate_pcm` for whole streams."""

    def __init__(self, cfg: InputGateConfig, samples_per_step: int, steps_per_second: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.layout = layout(cfg)
        if samples_per_step % cfg.blocks:
            raise ValueError(f"a step of {samples_per_step} samples does not split into {cfg.blocks} blocks")
        self.samples_per_step = int(samples_per_step)
        self.hold_frames = int(round(cfg.hold_s * steps_per_second))
        self.close_frames = close_frames(cfg.noise.sub_s, 1.0 / steps_per_second)
        fade = (torch.arange(1, samples_per_step + 1, dtype=torch.float32) / samples_per_step)[None, :]
        self.fade: torch.Tensor
        self.register_buffer("fade", fade, persistent=False)  # (1, n): a linear fade's progress at each sample
        self.ring_index: torch.Tensor
        self.register_buffer(
            "ring_index", torch.arange(self.layout.ring, dtype=torch.float32)[None, :], persistent=False
        )

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, width) zeros: a fresh stream."""
        return torch.zeros(batch, self.layout.width, device=device)

    def step(self, audio: torch.Tensor, state: torch.Tensor) -> GateStep:
        """One step of every stream.

        Args:
            audio: (B, samples_per_step) float32 PCM, the step's new samples.
            state: (B, width) the gate's state row (zeros for a fresh stream).
        Returns:
            `GateStep`: the gated samples, the gain, the level and floor, the next state.
        """
        cfg, lay, nz = self.cfg, self.layout, self.cfg.noise
        init = float(nz.init_dbfs)
        col = lambda k: state[:, k : k + 1]  # noqa: E731  (B, 1) column
        ring = state[:, lay.FIRST_RING : lay.first_recent]  # (B, ring), relative to init
        recent = state[:, lay.first_recent : lay.width]  # (B, recent), relative to init
        tilt = audio
        if cfg.preemphasis:  # y[n] = x[n] - a x[n-1] within the step (the first sample keeps (1 - a) x[0])
            tilt = audio - float(cfg.preemphasis) * torch.cat([audio[:, :1], audio[:, :-1]], dim=1)
        block_ms = (tilt * tilt).unflatten(1, (int(cfg.blocks), -1)).mean(dim=2)  # (B, blocks) mean squares
        mean_square = block_ms.mean(dim=1, keepdim=True)
        level = 10.0 * torch.log10(torch.clamp(mean_square, min=_LEVEL_FLOOR))  # (B, 1) dBFS
        block_level = 10.0 * torch.log10(torch.clamp(block_ms, min=_LEVEL_FLOOR))  # (B, blocks) dBFS
        heard = level >= float(nz.skip_below_dbfs)
        a = float(nz.smoothing)
        prev = col(lay.SMOOTHED) + init
        smoothed = torch.where(col(lay.HEARD) > 0.5, a * prev + (1.0 - a) * level, level)
        smoothed = torch.where(heard, smoothed, prev)
        current = _NO_MINIMUM_DBFS - col(lay.CURRENT)
        current = torch.where(heard, torch.minimum(current, smoothed), current)
        measured = col(lay.MEASURED)
        minima = ring + init
        n = int(nz.start_steady_frames)
        consecutive = torch.where(heard, col(lay.CONSECUTIVE) + 1.0, torch.zeros_like(level))
        if n > 0:  # a steady start (stream_engine.noise_floor): while some sub-window is still unmeasured
            starting = heard & (measured < lay.ring)
            recent_abs = torch.cat([recent[:, 1:] + init, smoothed], dim=1) if n > 1 else smoothed
            recent_abs = torch.where(starting, recent_abs, recent + init)
            steady = starting & (consecutive >= n)
            spread = recent_abs.max(dim=1, keepdim=True).values - recent_abs.min(dim=1, keepdim=True).values
            steady = steady & (spread <= float(nz.start_steady_db))
            low = recent_abs.min(dim=1, keepdim=True).values
            # The shifting ring keeps its unmeasured sub-windows first: indices below ring - measured.
            unmeasured = self.ring_index < (lay.ring - measured)
            minima = torch.where(steady & unmeasured, low, minima)
            recent_next = recent_abs - init
        else:
            recent_next = recent
        floor = torch.minimum(current, minima.min(dim=1, keepdim=True).values)
        elapsed = col(lay.ELAPSED) + heard.to(audio.dtype)
        done = elapsed >= float(self.close_frames)
        minima = torch.where(done, torch.cat([minima[:, 1:], current], dim=1), minima)
        measured = torch.where(done, torch.clamp(measured + 1.0, max=float(lay.ring)), measured)
        current = torch.where(done, torch.full_like(current, _NO_MINIMUM_DBFS), current)
        elapsed = torch.where(done, torch.zeros_like(elapsed), elapsed)
        # A heard step right after digital silence (a skipped step) is an onset: in a file or a push-to-talk stream
        # whose pauses are digital silence the floor is the speech's own quietest level, and the first syllable
        # would otherwise be cut (its first steps rise through that level).
        onset = col(lay.CONSECUTIVE) < 0.5
        # Sound that lasts counts: `loud_blocks` of the step's blocks stand out (a click of a few ms does not). A step
        # right after a speech step (inside a phrase) counts on its whole level, so speech's soft steps carry the
        # phrase on; an isolated click, even inside the hold, neither reopens the gate nor restarts the hold.
        last = 1.0 - col(lay.CLOSED)
        loud = (block_level >= floor + float(cfg.margin_db)).to(audio.dtype).sum(dim=1, keepdim=True)
        in_phrase = col(lay.SINCE) < 0.5  # the previous step counted as speech (also true for a fresh stream)
        keep = in_phrase & (level >= floor + float(cfg.margin_db))
        speech = heard & (keep | (loud >= float(cfg.loud_blocks)) | onset)
        since = torch.where(
            speech, torch.zeros_like(level), torch.clamp(col(lay.SINCE) + 1.0, max=self.hold_frames + 1.0)
        )
        gain = (since <= float(self.hold_frames)).to(audio.dtype)  # (B, 1)
        # open at once; close with a linear fade across the step (last -> gain)
        ramp = torch.where(gain < last, last + (gain - last) * self.fade, gain)
        next_state = torch.cat(
            [
                torch.maximum(col(lay.HEARD), heard.to(audio.dtype)),
                smoothed - init,
                _NO_MINIMUM_DBFS - current,
                elapsed,
                measured,
                torch.clamp(consecutive, max=float(lay.recent)),
                since,
                1.0 - gain,
                minima - init,
                recent_next,
            ],
            dim=1,
        )
        return GateStep(audio * ramp, gain, level, floor, next_state)

    def run(self, pcm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole streams from their start, step by step: (B, N) PCM -> ((B, N) the samples the step would hear,
        (B, width) the state after the last step). A trailing part of a step is gated with that step's gain, as if
        the step were completed with silence (and that step is in the state)."""
        b, total = pcm.shape
        n = self.samples_per_step
        steps = -(-total // n)
        padded = torch.nn.functional.pad(pcm, (0, steps * n - total))
        state = self.initial_state(b, pcm.device)
        out = []
        for k in range(steps):
            gated = self.step(padded[:, k * n : (k + 1) * n], state)
            out.append(gated.audio)
            state = gated.state
        return (torch.cat(out, dim=1)[:, :total] if out else pcm), state

    def gate_pcm(self, pcm: torch.Tensor) -> torch.Tensor:
        """Whole streams from their start: (B, N) PCM -> (B, N) the samples the step would hear (`run`)."""
        return self.run(pcm)[0]
