"""The runner protocol shared by every backend, and the stream-state helpers built on the contract.

A runner is loaded once and shared; it holds no per-stream memory of its own. A stream's memory has two
forms:

- a plain ``dict[str, np.ndarray]`` keyed by the contract's state names, batch on axis 0 (sherpa-onnx's
  recognizer/stream split): ``step`` is pure, it returns a new state dict and never writes into its input;
- a slot in a :class:`StateSlots` store that the runner allocates (``runner.new_slots(capacity)``): one
  preallocated array per state, streams on axis 0. The engine keeps every stream's state there and calls
  ``runner.step_slots(slots, rows, audio)``, which gathers the listed rows, runs the step and scatters the next
  state back in place: no per-stream dicts are stacked or split. The store's layout and device belong to the
  runner (ONNX Runtime's store is double buffered, so a contiguous range of rows is stepped with no copy at all,
  and other rows through host buffers bound once per batch size; a GPU backend may keep it on the device).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from stream_engine.contract import DTYPES, ModelLoadError, StepContract

State = dict[str, np.ndarray]


@runtime_checkable
class StepRunner(Protocol):
    """What every backend offers. Shapes use B = batch (number of streams in this call)."""

    contract: StepContract

    def initial_state(
        self, batch: int = 1, reference_face: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> State:
        """State of `batch` fresh streams (see :func:`initial_state`)."""
        ...

    def step(self, audio: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One step: audio (B, samples_per_frame) float32 in [-1, 1] -> (landmarks (B, N, D), next state).

        The landmarks are the frame `lookahead_frames` steps back; the first `lookahead_frames` outputs of a
        stream are its reference face and are to be dropped. The input state is not modified.
        """
        ...

    def new_slots(self, capacity: int) -> StateSlots:
        """A state store for up to `capacity` streams, laid out where this runner wants it."""
        ...

    def step_slots(self, slots: StateSlots, rows: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """One step of the streams in slots `rows` ((B,) int, distinct), their state read from and the next
        state written back into `slots`; audio (B, samples_per_frame) -> landmarks (B, N, D), a new array.
        Thread-safe for distinct stores, or for disjoint rows of one store when the caller serialises calls."""
        ...


def initial_state(
    contract: StepContract,
    batch: int = 1,
    reference_face: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> State:
    """Fresh-stream state for `batch` streams, following each state's `init` in the contract.

    Args:
        reference_face: the identity, (N, D) for all streams or (B, N, D) per stream, in the contract's
            coordinates; None uses the contract's default face.
        rng: source of the "uniform(0,1)" states (the generator's noise); None draws fresh entropy.
    Returns:
        state dict, each array (batch, ...) float32 with the contract's shapes.
    Raises:
        ValueError: bad batch or reference face.
    """
    if not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    lm_shape = (contract.num_landmarks, contract.landmark_dims)
    if reference_face is None:
        face = np.broadcast_to(contract.reference_face_array, (batch, *lm_shape))
    else:
        face = np.asarray(reference_face, dtype=np.float32)
        if face.shape == lm_shape:
            face = np.broadcast_to(face, (batch, *lm_shape))
        elif face.shape != (batch, *lm_shape):
            raise ValueError(f"reference_face must have shape {lm_shape} or {(batch, *lm_shape)}, got {face.shape}")
        if not np.all(np.isfinite(face)):
            raise ValueError("reference_face contains NaN or infinite values")
    rng = rng if rng is not None else np.random.default_rng()
    state: State = {}
    for spec in contract.states:
        shape = spec.concrete_shape(batch)
        dtype = DTYPES[spec.dtype]
        if spec.init == "zeros":
            state[spec.name] = np.zeros(shape, dtype=dtype)
        elif spec.init == "uniform(0,1)":
            state[spec.name] = rng.random(shape, dtype=np.float32).astype(dtype, copy=False)
        elif spec.init == "reference_face":
            state[spec.name] = np.array(face, dtype=dtype)  # a copy: the caller's array is never aliased
        else:  # validated by the contract; kept for safety
            raise ValueError(f"state {spec.name!r}: unknown init {spec.init!r}")
    return state


def check_audio(contract: StepContract, audio: np.ndarray) -> np.ndarray:
    """Validate one step of audio and return it as C-contiguous float32 (B, samples_per_frame)."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        raise ValueError(f"audio must be (B, {contract.samples_per_frame}); add a batch axis (audio[None])")
    if audio.ndim != 2 or audio.shape[1] != contract.samples_per_frame or audio.shape[0] < 1:
        raise ValueError(
            f"audio must have shape (B, {contract.samples_per_frame}), got {audio.shape}; "
            "use stream_engine.framing.AudioFramer to cut arbitrary chunks into steps"
        )
    if not np.issubdtype(audio.dtype, np.floating):
        raise TypeError(f"audio must be float PCM in [-1, 1], got dtype {audio.dtype}")
    return np.ascontiguousarray(audio, dtype=np.float32)


def check_state(contract: StepContract, state: State, batch: int) -> State:
    """Validate a state dict for `batch` streams; returns the arrays as C-contiguous float32 (no copy if
    they already are)."""
    missing = [s.name for s in contract.states if s.name not in state]
    if missing:
        raise KeyError(f"state lacks {missing}")
    out: State = {}
    for spec in contract.states:
        arr = np.ascontiguousarray(state[spec.name], dtype=DTYPES[spec.dtype])
        if arr.shape != spec.concrete_shape(batch):
            raise ValueError(
                f"state {spec.name!r} has shape {arr.shape}, expected {spec.concrete_shape(batch)} "
                f"for a batch of {batch}"
            )
        out[spec.name] = arr
    return out


def stack_states(states: Sequence[State]) -> State:
    """Batch streams: concatenate each state along axis 0 (each input may hold one or more streams)."""
    if not states:
        raise ValueError("stack_states needs at least one state")
    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys:
            raise ValueError(f"states have different keys: {sorted(keys)} vs {sorted(s)}")
    return {k: np.concatenate([np.asarray(s[k]) for s in states], axis=0) for k in states[0]}


def unstack_state(state: State, batch: int | None = None) -> list[State]:
    """Split a batched state into `batch` single-stream states (each with batch dimension 1, own memory)."""
    sizes = {k: np.asarray(v).shape[0] for k, v in state.items()}
    if batch is None:
        batch = next(iter(sizes.values()))
    bad = {k: n for k, n in sizes.items() if n != batch}
    if bad:
        raise ValueError(f"state arrays do not all have batch {batch}: {bad}")
    return [{k: np.array(v[i : i + 1]) for k, v in state.items()} for i in range(batch)]


class StateSlots:
    """Preallocated state of up to `capacity` streams: one array per contract state, streams on axis 0 (with
    two banks, `banks * capacity` rows: see below).

    A stream gets a row with :meth:`alloc` (lowest free row first, so a busy store stays dense and whole
    batches are often one contiguous range), fresh values with :meth:`init_row`, and gives it back with
    :meth:`free`. ``gather``/``scatter`` move the rows of one batch in and out (see ``StepRunner.step_slots``).
    The store grows by doubling when full (:meth:`alloc`); never grow it while a step is running on it.

    With ``banks=2`` (double buffering) every state array holds two banks of `capacity` rows, and
    ``bank[row]`` says which one holds a row's current state: a runner can then step a contiguous range of
    rows reading one bank and writing the other in place (:meth:`swap_range`, :meth:`flip`), with no copy of
    the state in or out. A state row is 29 KB in model 0.3.x, so at 256 rows a call those two copies are
    about 15 MB of memory traffic: stepping in place made the step alone 1.04-1.14x (int8) and 1.04-1.07x
    (float32) faster at 64-256 rows a call (``benchmarks/results/state_banks.md``).

    Args:
        contract: the step contract (state names, shapes, inits).
        capacity: initial number of rows (>= 1).
        banks: 1 (one row of storage per stream) or 2 (double buffered).
    Raises:
        ValueError: capacity < 1, or banks not 1 or 2.
    """

    def __init__(self, contract: StepContract, capacity: int, banks: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if banks not in (1, 2):
            raise ValueError(f"banks must be 1 or 2, got {banks!r}")
        self.contract = contract
        self.capacity = int(capacity)
        self.banks = int(banks)
        # state name -> (banks * capacity, ...): bank p's row r is store row p * capacity + r
        self.store: State = {
            s.name: np.zeros(s.concrete_shape(self.banks * self.capacity), DTYPES[s.dtype]) for s in contract.states
        }
        self.bank = np.zeros(self.capacity, dtype=np.intp)  # the bank holding each row's current state
        self.generation = 0  # bumped when the store's arrays are replaced (growth): addresses taken before are stale
        self.in_place_steps = 0  # runs in flight that write into the store through raw addresses (growth refused)
        self._free = list(range(self.capacity - 1, -1, -1))  # a stack: pop() gives the lowest free row
        self._used = 0

    @property
    def used(self) -> int:
        return self._used

    @property
    def arrays(self) -> State:
        """Every row's current state, (capacity, ...) per state name: the store itself with one bank (writes
        go to the streams' state), a copy with two banks."""
        if self.banks == 1:
            return self.store
        places = np.arange(self.capacity, dtype=np.intp) + self.bank * self.capacity
        return {k: v[places] for k, v in self.store.items()}

    def alloc(self) -> int:
        """Reserve a row (grows the store when full) and return its index; its values are undefined until
        :meth:`init_row`.

        Raises:
            RuntimeError: the store is full while a step runs in place on it (growing would free memory that
                ONNX Runtime is writing into).
        """
        if not self._free:
            self._grow(2 * self.capacity)
        self._used += 1
        return self._free.pop()

    def free(self, row: int) -> None:
        """Give a row back (the next :meth:`alloc` may return it)."""
        self._used -= 1
        self._free.append(int(row))
        self._free.sort(reverse=True)

    def init_row(
        self, row: int, reference_face: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> None:
        """Write a fresh stream's state into `row` (the contract's inits; see :func:`initial_state`)."""
        fresh = initial_state(self.contract, 1, reference_face, rng)
        at = int(row) + int(self.bank[row]) * self.capacity
        for name, value in fresh.items():
            self.store[name][at] = value[0]

    def _places(self, rows: np.ndarray) -> tuple[np.ndarray, int | None]:
        """Store rows of `rows`' current state, and the first of them when they are one ascending range."""
        places = rows if self.banks == 1 else rows + self.bank[rows] * self.capacity
        return places, _range_start(places)

    def gather(self, rows: np.ndarray, out: State | None = None) -> State:
        """The state of `rows` as a batch (B, ...): into `out` when given (preallocated per batch size), else
        new arrays. Rows whose state is one contiguous ascending range of the store are returned as views
        without copying when `out` is None."""
        places, first = self._places(np.asarray(rows, dtype=np.intp))
        if out is None:
            if first is not None:
                return {k: v[first : first + places.size] for k, v in self.store.items()}
            return {k: v[places] for k, v in self.store.items()}
        for k, v in self.store.items():
            if first is not None:
                np.copyto(out[k], v[first : first + places.size])
            else:
                np.take(v, places, axis=0, out=out[k])
        return out

    def scatter(self, rows: np.ndarray, state: State) -> None:
        """Write a batch's next state (B, ...) back into `rows` (each into the bank holding it)."""
        places, first = self._places(np.asarray(rows, dtype=np.intp))
        for k, v in self.store.items():
            if first is not None:
                v[first : first + places.size] = state[k]
            else:
                v[places] = state[k]

    def swap_range(self, rows: np.ndarray) -> tuple[int, int] | None:
        """For a double-buffered step of `rows`: (first row, bank holding their state) when `rows` is one
        contiguous ascending range, else None (gather and scatter instead). Rows of the range held in the
        other bank are first copied into the bank most of them share, so the whole range reads from one bank.
        The caller reads ``store[k][bank * capacity + first : ... + B]``, writes the next state to the other
        bank's same rows and then calls :meth:`flip`; on failure it calls nothing and the state is unchanged.
        Always None with one bank."""
        if self.banks == 1:
            return None
        rows = np.asarray(rows, dtype=np.intp)
        first, n = _range_start(rows), rows.size
        if first is None:
            return None
        if first < 0 or first + n > self.capacity:  # not rows of this store: gather's IndexError says so
            return None
        held = self.bank[first : first + n]
        ones = int(np.count_nonzero(held))
        bank = 1 if 2 * ones > n else 0
        if 0 < ones < n:  # the minority's rows move to the majority's bank (a copy of those rows only)
            move = first + np.flatnonzero(held != bank)
            src, dst = move + (1 - bank) * self.capacity, move + bank * self.capacity
            for v in self.store.values():
                v[dst] = v[src]
            held[:] = bank
        return first, bank

    def flip(self, first: int, n: int) -> None:
        """After a double-buffered step of rows [first, first + n): their current state is the other bank."""
        self.bank[first : first + n] ^= 1

    def row_state(self, row: int) -> State:
        """A copy of one stream's state with batch dimension 1."""
        at = int(row) + int(self.bank[row]) * self.capacity
        return {k: v[at : at + 1].copy() for k, v in self.store.items()}

    def _grow(self, capacity: int) -> None:
        if self.in_place_steps:
            raise RuntimeError("the state store cannot grow while a step runs in place on it")
        old = self.capacity
        for spec in self.contract.states:
            grown = np.zeros(spec.concrete_shape(self.banks * capacity), DTYPES[spec.dtype])
            for b in range(self.banks):
                grown[b * capacity : b * capacity + old] = self.store[spec.name][b * old : (b + 1) * old]
            self.store[spec.name] = grown
        self.bank = np.concatenate([self.bank, np.zeros(capacity - old, dtype=np.intp)])
        self.generation += 1
        self._free = sorted(set(self._free) | set(range(old, capacity)), reverse=True)
        self.capacity = capacity


def _range_start(rows: np.ndarray) -> int | None:
    """The first of `rows` ((B,) ints, B >= 1) when they are one contiguous ascending range, else None."""
    first = int(rows[0])
    if rows.size == 1 or (int(rows[-1]) - first == rows.size - 1 and bool(np.all(np.diff(rows) == 1))):
        return first
    return None


class BaseStepRunner:
    """Shared behaviour of the backends: contract-driven initial state and input checks.

    Subclasses set `self.contract` and implement :meth:`_run` (validated, contiguous inputs)."""

    contract: StepContract

    def initial_state(
        self, batch: int = 1, reference_face: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> State:
        return initial_state(self.contract, batch, reference_face, rng)

    def step(self, audio: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        audio = check_audio(self.contract, audio)
        state = check_state(self.contract, state, audio.shape[0])
        return self._run(audio, state)

    def _run(self, audio: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        raise NotImplementedError

    def new_slots(self, capacity: int) -> StateSlots:
        return StateSlots(self.contract, capacity)

    def step_slots(self, slots: StateSlots, rows: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """Generic path: gather the rows, one :meth:`step`, scatter the next state back."""
        landmarks, new_state = self.step(audio, slots.gather(rows))
        slots.scatter(rows, new_state)
        return landmarks


class NonFiniteModelError(ModelLoadError, ValueError):
    """A model whose step gives NaN or infinite landmarks or state on a canned input (refused at load)."""


def check_finite_output(runner: StepRunner, steps: int | None = None) -> None:
    """Refuse a model that gives non-finite output on a canned input.

    Runs one stream (seeded noise state, the default face) over `steps` steps (default look-ahead + 8) of a
    fixed signal: a 220 Hz tone at -10 dBFS with 5 % white noise for the first half, digital silence after.

    Raises:
        NonFiniteModelError: with the first step and tensor that went non-finite.
    """
    c = runner.contract
    steps = steps or c.lookahead_frames + 8
    spf = c.samples_per_frame
    n = steps * spf
    t = np.arange(n) / c.sample_rate_hz
    rng = np.random.default_rng(0)
    audio = (0.3 * np.sin(2 * np.pi * 220.0 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    audio[n // 2 :] = 0.0
    state = runner.initial_state(1, rng=np.random.default_rng(0))
    for k in range(steps):
        landmarks, state = runner.step(audio[None, k * spf : (k + 1) * spf], state)
        bad = [name for name, v in [("landmarks", landmarks), *state.items()] if not np.all(np.isfinite(v))]
        if bad:
            raise NonFiniteModelError(
                f"the model gives non-finite values ({', '.join(bad)}) at step {k} of a canned input "
                "(tone then silence): its weights or export are broken; refusing to serve it"
            )


def run_steps(runner: StepRunner, audio: np.ndarray, state: State) -> tuple[np.ndarray, State]:
    """Drive a runner over whole steps of audio.

    Args:
        audio: (B, T * samples_per_frame) or (T * samples_per_frame,) float PCM (a trailing partial step is
            an error: cut audio with :class:`stream_engine.framing.AudioFramer`).
    Returns:
        frames (B, T, N, D) float32 (all T outputs, warm-up frames included) and the final state.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    spf = runner.contract.samples_per_frame
    if audio.shape[1] % spf:
        raise ValueError(f"audio length {audio.shape[1]} is not a whole number of {spf}-sample steps")
    frames = []
    for t in range(audio.shape[1] // spf):
        lm, state = runner.step(audio[:, t * spf : (t + 1) * spf], state)
        frames.append(lm)
    n, d = runner.contract.num_landmarks, runner.contract.landmark_dims
    out = np.stack(frames, axis=1) if frames else np.zeros((audio.shape[0], 0, n, d), np.float32)
    return out, state
