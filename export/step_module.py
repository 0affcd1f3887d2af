"""The generator's 40 ms step as a flat, exportable module, and the contract that describes it.

`StepModule.forward(audio, *states) -> (landmarks, *states_next)` calls `Generator.step` unchanged (the MFCC
front end included), so the exported graph is the very code the tests hold to the sequence form. The input
and output names, shapes and initial values are produced here once, as a `StepContract`, and both the ONNX
exporter and the torch reference runner take them from it.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from stream_engine.contract import (
    BATCH,
    CONTRACT_VERSION,
    COORDINATES,
    StateSpec,
    StepContract,
    TensorSpec,
)
from stream_engine.dataclass_io import to_dict
from training.models.generator import Generator, GeneratorConfig, StepState

AUDIO_INPUT = "audio"
LANDMARKS_OUTPUT = "landmarks"
NEXT_SUFFIX = "_next"
#: Every state name the step can have, in graph order: the fields of `StepState` (`input_gate` only for a
#: generator with `GeneratorConfig.input_gate`; `state_names`).
STATE_NAMES: tuple[str, ...] = StepState._fields


def state_names(generator: Generator) -> tuple[str, ...]:
    """The states of this generator's step, in graph order."""
    return tuple(n for n in STATE_NAMES if n != "input_gate" or generator.cfg.input_gate is not None)


class StepModule(nn.Module):
    """Flat-signature wrapper: (audio, audio_carry, conv_cache, h, c, prev_landmarks, frames_seen,
    reference_landmarks[, input_gate]) -> (landmarks, audio_carry_next, ..., reference_landmarks_next[,
    input_gate_next]); the gate's state only with `GeneratorConfig.input_gate`."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, audio: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        names = state_names(self.generator)
        if len(states) != len(names):
            raise ValueError(f"the step takes {len(names)} states ({', '.join(names)}), got {len(states)}")
        state = StepState(**dict(zip(names, states)))
        landmarks, nxt = self.generator.step(audio, state)
        return (landmarks, *(getattr(nxt, n) for n in names))


def architecture_dict(cfg: GeneratorConfig) -> dict:
    """The contract's `msync.generator_config`: the generator config without its front end, which the contract
    carries as `msync.frontend` (the exported format is unchanged by the front end living in the config)."""
    out = to_dict(cfg)
    out.pop("frontend", None)
    return out


def state_specs(generator: Generator) -> tuple[StateSpec, ...]:
    """Names, shapes (batch = "B") and initial values of the step's memory, from the generator's configs."""
    cfg, fe = generator.cfg, generator.frontend
    noise = "uniform(0,1)" if cfg.init_noise == "uniform" else "zeros"
    shapes = {
        "audio_carry": ((BATCH, fe.context_samples), "zeros"),
        "conv_cache": ((BATCH, cfg.conv_cache_frames, cfg.audio_channels), "zeros"),
        "h": ((BATCH, cfg.lstm_hidden), noise),
        "c": ((BATCH, cfg.lstm_hidden), noise),
        "prev_landmarks": ((BATCH, cfg.num_landmarks, 2), "reference_face"),
        "frames_seen": ((BATCH, 1), "zeros"),
        # The identity the anchor pulls toward: set once per stream (the same face as prev_landmarks' start).
        "reference_landmarks": ((BATCH, cfg.num_landmarks, 2), "reference_face"),
        # The input gate's row (training.models.input_gate): zeros are a fresh stream.
        "input_gate": ((BATCH, generator._gate_width()), "zeros"),
    }
    if set(shapes) != set(STATE_NAMES):  # Generator.step changed its state: update this table
        raise RuntimeError(f"StepState fields {STATE_NAMES} differ from the exported states {sorted(shapes)}")
    names = state_names(generator)
    return tuple(StateSpec(n, n + NEXT_SUFFIX, shapes[n][0], "float32", shapes[n][1]) for n in names)


def build_contract(
    generator: Generator,
    reference_face: np.ndarray,
    model_version: str = "",
    training_data: str | dict = "",
    extra: dict[str, str] | None = None,
) -> StepContract:
    """The contract of `generator`'s step (validated)."""
    cfg, fe = generator.cfg, generator.frontend
    if not isinstance(training_data, str):
        training_data = json.dumps(to_dict(training_data), sort_keys=True)
    face = np.asarray(reference_face, dtype=np.float64).reshape(cfg.num_landmarks, 2)
    return StepContract(
        contract_version=CONTRACT_VERSION,
        sample_rate_hz=fe.sample_rate_hz,
        samples_per_frame=fe.samples_per_landmark_frame,
        fps=fe.landmark_fps,
        lookahead_frames=cfg.lookahead_frames,
        num_landmarks=cfg.num_landmarks,
        landmark_dims=2,
        landmark_layout="ibug68",
        coordinates=COORDINATES,
        audio_input=TensorSpec(
            AUDIO_INPUT,
            (BATCH, fe.samples_per_landmark_frame),
            "float32",
            f"the next {fe.samples_per_landmark_frame} samples of mono float32 PCM in [-1, 1] at "
            f"{fe.sample_rate_hz} Hz",
        ),
        landmarks_output=TensorSpec(
            LANDMARKS_OUTPUT,
            (BATCH, cfg.num_landmarks, 2),
            "float32",
            f"the landmark frame {cfg.lookahead_frames} steps back; the first "
            f"{cfg.lookahead_frames} outputs of a stream are its reference face: drop them",
        ),
        states=state_specs(generator),
        reference_face=tuple(tuple(float(v) for v in row) for row in face),
        model_version=model_version or "unversioned",
        training_data=training_data or "unknown",
        generator_config=architecture_dict(cfg),
        frontend=to_dict(fe),
        extra=dict(extra or {}),
    )


def example_inputs(generator: Generator, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs for tracing: random audio and a plausible mid-stream state (non-zero caches, warmed up)."""
    g = torch.Generator().manual_seed(seed)
    specs = state_specs(generator)
    fe = generator.frontend
    audio = (torch.rand(batch, fe.samples_per_landmark_frame, generator=g) - 0.5) * 0.2
    states = []
    for s in specs:
        shape = tuple(batch if d == BATCH else int(d) for d in s.shape)
        if s.name == "frames_seen":
            states.append(torch.full(shape, float(generator.cfg.lookahead_frames)))
        elif s.init == "reference_face":
            states.append(torch.rand(shape, generator=g) * 0.4 + 0.3)
        else:
            states.append(torch.rand(shape, generator=g) * 0.1)
    return (audio, *states)
