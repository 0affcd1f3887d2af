"""The step contract: what an exported msync model promises, read from its ONNX `metadata_props`.

An exported step model is one function applied every 40 ms (DESIGN.md §2)::

    step(audio[B, samples_per_frame], state...) -> (landmarks[B, num_landmarks, landmark_dims], state_next...)

The model file carries everything a runtime needs to drive it, as string metadata (JSON where structured);
runtimes read it with :func:`read_contract` (or :meth:`StepContract.from_metadata` on a map they already
have), check the graph against it with :func:`check_session`, and refuse a model that does not match. No
runtime hard-codes 640, 256 or a state name.

Metadata keys (all values are strings)::

    msync.contract_version   "1"
    msync.sample_rate_hz     "16000"
    msync.samples_per_frame  "640"                  new PCM samples per step
    msync.fps                "25"                   sample_rate_hz / samples_per_frame
    msync.lookahead_frames   "2"                    L: the first L outputs of a stream are the reference face; drop them
    msync.num_landmarks      "68"
    msync.landmark_dims      "2"
    msync.landmark_layout    "ibug68"
    msync.coordinates        text: fixed square crop normalised to [0, 1], x right, y down
    msync.audio_input        JSON {"name", "shape" (with "B" for batch), "dtype", "description"}
    msync.landmarks_output   JSON, same fields
    msync.states             JSON list of {"name", "next_name", "shape", "dtype", "init"}
                             with init one of "zeros" | "uniform(0,1)" | "reference_face"
    msync.reference_face     JSON (num_landmarks x landmark_dims) list: the default identity
    msync.model_version      free text
    msync.training_data      free text / JSON summary
    msync.generator_config   JSON of the generator's architecture settings
    msync.frontend           JSON of the audio front end's settings
    msync.precision          optional: "int8-dynamic", "int8-static" (export/quantize.py), "fp16-mixed" (TensorRT
                             graphs); absent = float32. I/O and states stay float32 in every precision

This module imports numpy only (onnxruntime lazily, in :func:`read_contract`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stream_engine.dataclass_io import to_dict

CONTRACT_VERSION = "1"
PREFIX = "msync."
BATCH = "B"
INIT_KINDS = ("zeros", "uniform(0,1)", "reference_face")
DTYPES = {"float32": np.float32}
# onnxruntime's NodeArg.type strings for the dtypes above.
_ORT_TYPES = {"float32": "tensor(float)"}

REQUIRED_KEYS = (
    "contract_version",
    "sample_rate_hz",
    "samples_per_frame",
    "fps",
    "lookahead_frames",
    "num_landmarks",
    "landmark_dims",
    "landmark_layout",
    "coordinates",
    "audio_input",
    "landmarks_output",
    "states",
    "reference_face",
    "model_version",
    "training_data",
    "generator_config",
    "frontend",
)

COORDINATES = (
    "fixed square crop per stream normalised to [0, 1]; x grows to the right, y grows downwards "
    "(image axes); the crop is never re-centred, so head translation and rotation stay in the data"
)

Dim = int | str


class ModelLoadError(Exception):
    """A model file that cannot be used: missing, unreadable, corrupt, or not an msync step model."""


class ContractError(ModelLoadError, ValueError):
    """A contract that is missing, malformed, of an unsupported version, or that the graph does not honour."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A non-state input or output of the step: `shape` has "B" for the batch dimension."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    description: str = ""

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = to_dict(self)
        if not self.description:
            del out["description"]
        return out


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """One piece of stream memory: an input `name` and its next value, the output `next_name`.

    Attributes:
        shape: with "B" in position 0 for the batch dimension, e.g. ("B", 256).
        dtype: "float32".
        init: value of a fresh stream: "zeros", "uniform(0,1)" (the generator's noise source, drawn per
            stream) or "reference_face" (the identity: the frame before the first one).
    """

    name: str
    next_name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    init: str = "zeros"

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = to_dict(self)
        return out


@dataclasses.dataclass(frozen=True)
class StepContract:
    """The validated contract of one exported step model. Build it with :meth:`from_metadata`."""

    sample_rate_hz: int
    samples_per_frame: int
    fps: float
    lookahead_frames: int
    num_landmarks: int
    landmark_dims: int
    landmark_layout: str
    coordinates: str
    audio_input: TensorSpec
    landmarks_output: TensorSpec
    states: tuple[StateSpec, ...]
    reference_face: tuple[tuple[float, ...], ...]
    model_version: str
    training_data: str
    generator_config: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    frontend: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    contract_version: str = CONTRACT_VERSION
    #: Other `msync.*` keys found in the file (exporter details, TensorRT notes...), kept verbatim.
    extra: dict[str, str] = dataclasses.field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ names
    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    @property
    def input_names(self) -> tuple[str, ...]:
        """Graph inputs in order: audio, then the states."""
        return (self.audio_input.name,) + self.state_names

    @property
    def output_names(self) -> tuple[str, ...]:
        """Graph outputs in order: landmarks, then the next states."""
        return (self.landmarks_output.name,) + tuple(s.next_name for s in self.states)

    def state(self, name: str) -> StateSpec:
        for s in self.states:
            if s.name == name:
                return s
        raise KeyError(f"no state named {name!r}; states are {list(self.state_names)}")

    @property
    def frame_duration_s(self) -> float:
        return self.samples_per_frame / self.sample_rate_hz

    @property
    def lookahead_s(self) -> float:
        """Algorithmic delay of the look-ahead alone (the feature window adds its own, see `frontend`)."""
        return self.lookahead_frames * self.frame_duration_s

    @property
    def reference_face_array(self) -> np.ndarray:
        """(num_landmarks, landmark_dims) float32 copy of the default identity."""
        return np.array(self.reference_face, dtype=np.float32)

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`ContractError` for any internal inconsistency."""
        if self.contract_version != CONTRACT_VERSION:
            raise ContractError(
                f"unsupported msync contract version {self.contract_version!r} "
                f"(this runtime understands {CONTRACT_VERSION!r})"
            )
        for name in ("sample_rate_hz", "samples_per_frame", "num_landmarks", "landmark_dims"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ContractError(f"msync.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.lookahead_frames, int) or self.lookahead_frames < 0:
            raise ContractError(f"msync.lookahead_frames must be an integer >= 0, got {self.lookahead_frames!r}")
        if not (self.fps > 0 and math.isclose(self.fps * self.samples_per_frame, self.sample_rate_hz, rel_tol=1e-9)):
            raise ContractError(
                f"inconsistent timing: fps {self.fps} x samples_per_frame {self.samples_per_frame} "
                f"!= sample_rate_hz {self.sample_rate_hz}"
            )
        lm_shape = (BATCH, self.num_landmarks, self.landmark_dims)
        if tuple(self.audio_input.shape) != (BATCH, self.samples_per_frame):
            raise ContractError(
                f"audio input {self.audio_input.name!r} has shape {list(self.audio_input.shape)}, "
                f"expected {[BATCH, self.samples_per_frame]}"
            )
        if tuple(self.landmarks_output.shape) != lm_shape:
            raise ContractError(
                f"landmarks output {self.landmarks_output.name!r} has shape "
                f"{list(self.landmarks_output.shape)}, expected {list(lm_shape)}"
            )
        for spec in (self.audio_input, self.landmarks_output):
            if spec.dtype not in DTYPES:
                raise ContractError(f"{spec.name!r}: unsupported dtype {spec.dtype!r} (supported: {list(DTYPES)})")
        if not self.states:
            raise ContractError("msync.states is empty: a step model needs at least one state")
        for s in self.states:
            if not s.name or not s.next_name:
                raise ContractError(f"state {s!r} needs both a name and a next_name")
            if not s.shape or s.shape[0] != BATCH:
                raise ContractError(f"state {s.name!r}: shape {list(s.shape)} must start with the batch dim {BATCH!r}")
            for d in s.shape[1:]:
                if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
                    raise ContractError(
                        f"state {s.name!r}: non-batch dims must be positive integers, got {list(s.shape)}"
                    )
            if s.dtype not in DTYPES:
                raise ContractError(f"state {s.name!r}: unsupported dtype {s.dtype!r} (supported: {list(DTYPES)})")
            if s.init not in INIT_KINDS:
                raise ContractError(f"state {s.name!r}: unknown init {s.init!r} (one of {list(INIT_KINDS)})")
            if s.init == "reference_face" and tuple(s.shape) != lm_shape:
                raise ContractError(
                    f"state {s.name!r} starts from the reference face, so its shape must be "
                    f"{list(lm_shape)}, got {list(s.shape)}"
                )
        names = [self.audio_input.name, *self.state_names]
        outs = [self.landmarks_output.name, *(s.next_name for s in self.states)]
        for what, lst in (("input", names), ("output", outs)):
            dup = sorted({n for n in lst if lst.count(n) > 1})
            if dup:
                raise ContractError(f"duplicate {what} names in the contract: {dup}")
        if set(names) & set(outs):
            raise ContractError(f"names used both as input and output: {sorted(set(names) & set(outs))}")
        face = np.asarray(self.reference_face, dtype=np.float64)
        if face.shape != (self.num_landmarks, self.landmark_dims) or not np.all(np.isfinite(face)):
            raise ContractError(
                f"msync.reference_face must be a finite {self.num_landmarks}x{self.landmark_dims} "
                f"list, got shape {face.shape}"
            )
        fe = self.frontend
        if fe.get("sample_rate_hz", self.sample_rate_hz) != self.sample_rate_hz:
            raise ContractError(
                f"msync.frontend sample_rate_hz {fe['sample_rate_hz']} != msync.sample_rate_hz {self.sample_rate_hz}"
            )
        if fe.get("samples_per_landmark_frame", self.samples_per_frame) != self.samples_per_frame:
            raise ContractError(
                f"msync.frontend samples_per_landmark_frame {fe['samples_per_landmark_frame']} != "
                f"msync.samples_per_frame {self.samples_per_frame}"
            )
        gc = self.generator_config
        if gc.get("lookahead_frames", self.lookahead_frames) != self.lookahead_frames:
            raise ContractError(
                f"msync.generator_config lookahead_frames {gc['lookahead_frames']} != "
                f"msync.lookahead_frames {self.lookahead_frames}"
            )
        if gc.get("num_landmarks", self.num_landmarks) != self.num_landmarks:
            raise ContractError(
                f"msync.generator_config num_landmarks {gc['num_landmarks']} != "
                f"msync.num_landmarks {self.num_landmarks}"
            )

    # ---------------------------------------------------------- (de)serialise
    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> StepContract:
        """Parse and validate a `metadata_props` map (keys with the `msync.` prefix).

        Raises:
            ContractError: a key is missing or malformed, the version is unsupported, or shapes disagree.
        """
        meta = {k[len(PREFIX) :]: v for k, v in metadata.items() if k.startswith(PREFIX)}
        if "contract_version" not in meta:
            raise ContractError(
                "no msync contract in this model (metadata key 'msync.contract_version' is "
                "missing): export it with `msync export`"
            )
        if meta["contract_version"] != CONTRACT_VERSION:
            raise ContractError(
                f"unsupported msync contract version {meta['contract_version']!r} "
                f"(this runtime understands {CONTRACT_VERSION!r})"
            )
        missing = [f"{PREFIX}{k}" for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise ContractError(f"model metadata lacks the contract keys {missing}")

        def integer(key: str) -> int:
            try:
                return int(meta[key])
            except ValueError:
                raise ContractError(f"{PREFIX}{key} must be an integer, got {meta[key]!r}") from None

        def number(key: str) -> float:
            try:
                return float(meta[key])
            except ValueError:
                raise ContractError(f"{PREFIX}{key} must be a number, got {meta[key]!r}") from None

        def js(key: str) -> Any:
            try:
                return json.loads(meta[key])
            except json.JSONDecodeError as exc:
                raise ContractError(f"{PREFIX}{key} is not valid JSON ({exc})") from None

        def tensor(key: str) -> TensorSpec:
            d = js(key)
            if not isinstance(d, dict) or "name" not in d or "shape" not in d:
                raise ContractError(f"{PREFIX}{key} must be a JSON object with 'name' and 'shape', got {meta[key]!r}")
            return TensorSpec(
                str(d["name"]), _shape(d["shape"], key), str(d.get("dtype", "float32")), str(d.get("description", ""))
            )

        raw_states = js("states")
        if not isinstance(raw_states, list):
            raise ContractError(f"{PREFIX}states must be a JSON list, got {type(raw_states).__name__}")
        states = []
        for i, s in enumerate(raw_states):
            if not isinstance(s, dict):
                raise ContractError(f"{PREFIX}states[{i}] must be an object, got {s!r}")
            lacking = [k for k in ("name", "next_name", "shape", "dtype", "init") if k not in s]
            if lacking:
                raise ContractError(f"{PREFIX}states[{i}] ({s.get('name', '?')}) lacks {lacking}")
            states.append(
                StateSpec(
                    str(s["name"]),
                    str(s["next_name"]),
                    _shape(s["shape"], f"states[{i}]"),
                    str(s["dtype"]),
                    str(s["init"]),
                )
            )
        face = js("reference_face")
        try:
            face_t = tuple(tuple(float(v) for v in row) for row in face)
        except (TypeError, ValueError):
            raise ContractError(f"{PREFIX}reference_face must be a list of coordinate lists") from None
        gen_cfg, frontend = js("generator_config"), js("frontend")
        for key, val in (("generator_config", gen_cfg), ("frontend", frontend)):
            if not isinstance(val, dict):
                raise ContractError(f"{PREFIX}{key} must be a JSON object")
        known = set(REQUIRED_KEYS)
        return cls(
            contract_version=meta["contract_version"],
            sample_rate_hz=integer("sample_rate_hz"),
            samples_per_frame=integer("samples_per_frame"),
            fps=number("fps"),
            lookahead_frames=integer("lookahead_frames"),
            num_landmarks=integer("num_landmarks"),
            landmark_dims=integer("landmark_dims"),
            landmark_layout=meta["landmark_layout"],
            coordinates=meta["coordinates"],
            audio_input=tensor("audio_input"),
            landmarks_output=tensor("landmarks_output"),
            states=tuple(states),
            reference_face=face_t,
            model_version=meta["model_version"],
            training_data=meta["training_data"],
            generator_config=gen_cfg,
            frontend=frontend,
            extra={f"{PREFIX}{k}": v for k, v in meta.items() if k not in known},
        )

    def to_metadata(self) -> dict[str, str]:
        """The `metadata_props` map that :meth:`from_metadata` reads back (extra keys included)."""
        fps = int(self.fps) if float(self.fps).is_integer() else self.fps
        out = {
            "contract_version": self.contract_version,
            "sample_rate_hz": str(self.sample_rate_hz),
            "samples_per_frame": str(self.samples_per_frame),
            "fps": str(fps),
            "lookahead_frames": str(self.lookahead_frames),
            "num_landmarks": str(self.num_landmarks),
            "landmark_dims": str(self.landmark_dims),
            "landmark_layout": self.landmark_layout,
            "coordinates": self.coordinates,
            "audio_input": json.dumps(self.audio_input.to_json()),
            "landmarks_output": json.dumps(self.landmarks_output.to_json()),
            "states": json.dumps([s.to_json() for s in self.states]),
            "reference_face": json.dumps([[float(v) for v in row] for row in self.reference_face]),
            "model_version": self.model_version,
            "training_data": self.training_data,
            "generator_config": json.dumps(self.generator_config, sort_keys=True),
            "frontend": json.dumps(self.frontend, sort_keys=True),
        }
        meta = {PREFIX + k: v for k, v in out.items()}
        meta.update({k: str(v) for k, v in self.extra.items() if k not in meta})
        return meta

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description (what `msync info --json` prints)."""
        return {
            "contract_version": self.contract_version,
            "model_version": self.model_version,
            "sample_rate_hz": self.sample_rate_hz,
            "samples_per_frame": self.samples_per_frame,
            "fps": self.fps,
            "lookahead_frames": self.lookahead_frames,
            "lookahead_ms": round(1000.0 * self.lookahead_s, 3),
            "num_landmarks": self.num_landmarks,
            "landmark_dims": self.landmark_dims,
            "landmark_layout": self.landmark_layout,
            "coordinates": self.coordinates,
            "audio_input": self.audio_input.to_json(),
            "landmarks_output": self.landmarks_output.to_json(),
            "states": [s.to_json() for s in self.states],
            "reference_face": [list(r) for r in self.reference_face],
            "training_data": self.training_data,
            "generator_config": self.generator_config,
            "frontend": self.frontend,
            "extra": self.extra,
        }


def _shape(raw: Any, where: str) -> tuple[Dim, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ContractError(f"{PREFIX}{where}: shape must be a list, got {raw!r}")
    out: list[Dim] = []
    for d in raw:
        if d == BATCH:
            out.append(BATCH)
        elif isinstance(d, int) and not isinstance(d, bool):
            out.append(d)
        else:
            raise ContractError(f"{PREFIX}{where}: shape entries must be integers or {BATCH!r}, got {raw!r}")
    return tuple(out)


# ---------------------------------------------------------------------------------------- model files


def ort_session(path: Path, sess_options: Any = None, providers: Sequence[str] | None = None) -> Any:
    """Open an onnxruntime session, turning every failure into a :class:`ModelLoadError`."""
    import onnxruntime as ort

    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    try:
        return ort.InferenceSession(
            str(path), sess_options=sess_options, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile... all mean "unusable model file"
        raise ModelLoadError(f"{path}: cannot load as an ONNX model ({type(exc).__name__}: {exc})") from exc


def contract_from_session(session: Any, where: str = "model") -> StepContract:
    """Contract of an open onnxruntime session (its custom metadata), validated against the graph."""
    try:
        meta = dict(session.get_modelmeta().custom_metadata_map)
    except Exception as exc:
        raise ModelLoadError(f"{where}: cannot read model metadata ({exc})") from exc
    try:
        contract = StepContract.from_metadata(meta)
    except ContractError as exc:
        raise ContractError(f"{where}: {exc}") from None
    check_session(contract, session, where)
    return contract


def read_contract(path: str | Path, check: bool = True) -> StepContract:
    """Read and validate the contract of an ONNX step model (through onnxruntime; `onnx` is not needed).

    Args:
        check: also verify the graph's inputs and outputs against the contract (:func:`check_session`).
    Raises:
        ModelLoadError: the file is missing or not a loadable ONNX model.
        ContractError: the contract is missing, malformed, or the graph does not honour it.
    """
    import onnxruntime as ort

    path = Path(path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only metadata is wanted
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    session = ort_session(path, so)
    if check:
        return contract_from_session(session, str(path))
    try:
        return StepContract.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
    except ContractError as exc:
        raise ContractError(f"{path}: {exc}") from None


def _dims_match(spec_shape: Sequence[Dim], graph_shape: Sequence[Any] | None) -> bool:
    if graph_shape is None or len(spec_shape) != len(graph_shape):
        return False
    for i, (want, got) in enumerate(zip(spec_shape, graph_shape)):
        if i == 0:  # batch: symbolic (str/None) or any positive int (a static-batch export)
            if not (got is None or isinstance(got, str) or (isinstance(got, int) and got > 0)):
                return False
        elif isinstance(got, int):
            if got != want:
                return False
        # a symbolic non-batch dim cannot be checked statically; accept it
    return True


def check_session(contract: StepContract, session: Any, where: str = "model") -> None:
    """Verify that an onnxruntime session's inputs/outputs are exactly the contract's names, shapes, dtypes.

    Raises:
        ContractError: with every mismatch listed.
    """
    want_in = {contract.audio_input.name: (contract.audio_input.shape, contract.audio_input.dtype)}
    want_in.update({s.name: (s.shape, s.dtype) for s in contract.states})
    want_out = {contract.landmarks_output.name: (contract.landmarks_output.shape, contract.landmarks_output.dtype)}
    want_out.update({s.next_name: (s.shape, s.dtype) for s in contract.states})
    problems: list[str] = []
    for kind, want, args in (("input", want_in, session.get_inputs()), ("output", want_out, session.get_outputs())):
        got = {a.name: a for a in args}
        missing = [n for n in want if n not in got]
        extra = [n for n in got if n not in want]
        if missing:
            problems.append(f"graph lacks {kind}s {missing}")
        if extra:
            problems.append(f"graph has {kind}s the contract does not name: {extra}")
        for name, (shape, dtype) in want.items():
            if name not in got:
                continue
            arg = got[name]
            if arg.type != _ORT_TYPES[dtype]:
                problems.append(f"{kind} {name!r}: graph type {arg.type}, contract {dtype}")
            if not _dims_match(shape, arg.shape):
                problems.append(f"{kind} {name!r}: graph shape {list(arg.shape)}, contract {list(shape)}")
    if problems:
        raise ContractError(f"{where}: the graph does not match its contract: " + "; ".join(problems))
