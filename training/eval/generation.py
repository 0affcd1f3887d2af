"""Generating landmarks for evaluation, causally and streaming-equivalently: batched fresh streams over
evaluation sequences (`Generator.forward` with warm-up and look-ahead), chunked long rollouts with carried state,
and the same stream through `Generator.step` as a check."""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.onnx_rows import OnnxGenerator

if TYPE_CHECKING:
    from stream_engine.features import FrontEndConfig
    from training.models.generator import Generator

SPF, FPS = 640, 25  # samples per landmark frame at 16 kHz, landmark rate
DEFAULT_MODELS = ("training/weights/generator", "runs/generator/generator")


@dataclasses.dataclass
class LoadedModel:
    name: str
    path: str
    G: Generator | OnnxGenerator
    meta: dict
    warmup: int
    lookahead: int


def parse_model_specs(specs: list[str]) -> tuple[tuple[str, str], ...]:
    """["NAME=CKPT" | "CKPT", ...] -> ((name, path), ...); a bare path is named after its run directory.
    With no spec, the first default generator that exists is used ("ours")."""
    out = []
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep:
            path = name
            p = Path(path)
            name = p.name if p.is_dir() else strip_suffix(p).parent.name or strip_suffix(p).name
        if not name or not path:
            raise ValueError(f"--model {s!r}: expected NAME=CHECKPOINT")
        out.append((name, path))
    if not out:
        for d in DEFAULT_MODELS:
            if Path(d).with_suffix(".json").is_file():
                out.append(("ours", d))
                break
        else:
            raise FileNotFoundError(
                f"no --model given and no default generator ({', '.join(DEFAULT_MODELS)}); pass --model NAME=CHECKPOINT"
            )
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    return tuple(out)


def audio_window(pcm: np.ndarray, first_frame: int, num_frames: int, context: int = 352) -> np.ndarray:
    """PCM of landmark frames [first_frame, first_frame + num_frames) with `context` samples before, zeros
    outside the signal: (context + 640 · num_frames,) float32."""
    a0 = first_frame * SPF - context
    a1 = (first_frame + num_frames) * SPF
    out = np.zeros(a1 - a0, dtype=np.float32)
    lo, hi = max(a0, 0), min(a1, len(pcm))
    if hi > lo:
        out[lo - a0 : hi - a0] = pcm[lo:hi]
    return out


def noise_seed(seed: int, key: str) -> int:
    """A stable per-stream seed (the same for every model, so rows differ by the model only)."""
    return zlib.crc32(f"{seed}:{key}".encode()) & 0x7FFFFFFF


def initial_noise(G, seeds: list[int], device):
    import torch

    hs, cs = zip(*(G.initial_lstm_state(1, generator=torch.Generator().manual_seed(s)) for s in seeds))
    return torch.cat(hs).to(device), torch.cat(cs).to(device)


def generate(
    m: LoadedModel,
    pcms: list[np.ndarray],
    starts: list[int],
    x_refs: np.ndarray,
    seeds: list[int],
    num_frames: int,
    device,
    batch_size: int = 16,
    bar=None,
) -> np.ndarray:
    """Frames [start, start + num_frames) of fresh streams that began at frame 0 of each `pcm` (silence before):
    `Generator.forward` with W warm-up frames (invalid before frame 0) and L look-ahead frames.

    Returns (B, num_frames, 68, 2) float32.
    """
    import torch

    G, W, L = m.G, m.warmup, m.lookahead
    if isinstance(G, OnnxGenerator):
        y = G.generate(pcms, starts, x_refs, seeds, num_frames, W)
        if bar is not None:
            bar.update(len(y))
        return y
    ctx = G.frontend.context_samples
    out = []
    for b in range(0, len(pcms), batch_size):
        sl = slice(b, b + batch_size)
        heard = [gated_pcm(G, p, (s + num_frames + L) * SPF) for p, s in zip(pcms[sl], starts[sl])]
        audio = np.stack([audio_window(p, s - W, W + num_frames + L, ctx) for p, s in zip(heard, starts[sl])])
        valid = np.stack([np.arange(s - W, s + num_frames + L) >= 0 for s in starts[sl]])
        with torch.no_grad():
            mfcc = G.mfcc(torch.from_numpy(audio).to(device))
            h0, c0 = initial_noise(G, seeds[sl], device)
            x = torch.from_numpy(np.asarray(x_refs[sl], np.float32)).to(device)
            y = G(mfcc, x, h0, c0, num_frames=num_frames, warmup_frames=W, valid=torch.from_numpy(valid).to(device))
        out.append(y.cpu().numpy())
        if bar is not None:
            bar.update(len(y))
    return np.concatenate(out).astype(np.float32)


def stream_rollout(
    m: LoadedModel,
    pcm: np.ndarray,
    x_ref: np.ndarray,
    seed: int,
    num_frames: int,
    device,
    chunk: int = 1500,
    progress: bool = False,
    desc: str = "rollout",
) -> np.ndarray:
    """One fresh stream over `pcm` (silence before it), `num_frames` frames, in chunks with carried state.

    Each chunk recomputes the audio pyramid over [chunk start − W, chunk end + L) (the convolutions' receptive
    field, invalid before frame 0) and carries the landmark frame and the LSTM state (h, c) across chunks, so
    the result equals one `forward` over the whole stream and `Generator.step` frame by frame, with memory
    bounded by the chunk. Returns (num_frames, 68, 2) float32.
    """
    import torch
    from tqdm import tqdm

    G, W, L = m.G, m.warmup, m.lookahead
    if isinstance(G, OnnxGenerator):
        return G.rollout(pcm, x_ref, seed, num_frames)
    ctx = G.frontend.context_samples
    pcm = gated_pcm(G, pcm, (num_frames + L) * SPF)
    out = np.empty((num_frames, 68, 2), dtype=np.float32)
    x = torch.from_numpy(np.asarray(x_ref, np.float32)[None]).to(device)
    anchor = x
    h, c = initial_noise(G, [seed], device)
    bar = tqdm(total=num_frames, desc=desc, unit="frame", disable=not progress, mininterval=2.0)
    with torch.no_grad():
        for a in range(0, num_frames, chunk):
            n = min(chunk, num_frames - a)
            audio = torch.from_numpy(audio_window(pcm, a - W, W + n + L, ctx)[None]).to(device)
            valid = torch.from_numpy((np.arange(a - W, a + n + L) >= 0)[None]).to(device)
            mfcc = G.mfcc(audio)
            feats = G.branch_audio(G.audio_levels(mfcc, valid))  # (1, G, C, W + n + L)
            silent = None if G.cfg.silent_face_rate is None else G.silent_frames(mfcc.unflatten(1, (-1, 4)))
            frames = []
            for t in range(n):
                j = W + t + L
                x, h, c = G.advance(x, anchor, h, c, feats[..., j], None if silent is None else silent[:, j : j + 1])
                frames.append(x)
            out[a : a + n] = torch.cat(frames).cpu().numpy()
            bar.update(n)
    bar.close()
    return out


def gated_pcm(G, pcm: np.ndarray, num_samples: int) -> np.ndarray:
    """What a stream of `G`'s step hears of `pcm` (from the stream's start) up to `num_samples`: the PCM itself, or
    for a generator with an input gate (`GeneratorConfig.input_gate`) the gated PCM, which `Generator.forward` needs
    to give what `step` gives. The samples beyond `num_samples` are left out (they are not needed)."""
    if getattr(G.cfg, "input_gate", None) is None:
        return pcm
    import torch

    x = np.asarray(pcm[:num_samples], np.float32)
    with torch.no_grad():
        return G.gate_pcm(torch.from_numpy(x)[None])[0].cpu().numpy()


def step_rollout(m: LoadedModel, pcm: np.ndarray, x_ref: np.ndarray, seed: int, num_frames: int, device) -> np.ndarray:
    """The same stream through `Generator.step` (640 samples per call; the first L outputs are dropped)."""
    import torch

    G, L = m.G, m.lookahead
    if isinstance(G, OnnxGenerator):
        return G.rollout(pcm, x_ref, seed, num_frames)
    h, c = initial_noise(G, [seed], device)
    state = G.initial_state(torch.from_numpy(np.asarray(x_ref, np.float32)[None]).to(device), h, c)
    out = []
    with torch.no_grad():
        for k in range(num_frames + L):
            chunk = audio_window(pcm, k, 1, 0)[None]
            y, state = G.step(torch.from_numpy(chunk).to(device), state)
            if k >= L:
                out.append(y[0].cpu().numpy())
    return np.stack(out).astype(np.float32)


def loop_to(pcm: np.ndarray, num_samples: int) -> np.ndarray:
    """Repeat `pcm` until it has `num_samples` samples."""
    if not len(pcm):
        return np.zeros(num_samples, np.float32)
    return np.asarray(pcm, np.float32)[np.arange(num_samples) % len(pcm)]


def mfcc_of(
    pcm: np.ndarray, frontend: FrontEndConfig, first_frame: int = 0, end_frame: int | None = None
) -> np.ndarray:
    """Causal MFCC (k = 4 per landmark frame) of landmark frames [first_frame, end_frame) of a stream that starts
    at pcm[0] (silence before): (k · (end − first), n_mfcc) float32, equal to the same rows of the whole stream's
    MFCC but computed from the needed samples only (one extra frame of audio covers the 352-sample context)."""
    from stream_engine.features import logmel, mfcc_from_logmel

    spf, k = frontend.samples_per_landmark_frame, frontend.mfcc_per_landmark_frame
    end = len(pcm) // spf if end_frame is None else end_frame
    lead = 1 if first_frame > 0 else 0
    x = np.asarray(pcm[(first_frame - lead) * spf : end * spf], np.float32)
    return mfcc_from_logmel(logmel(x, frontend), frontend)[k * lead :].astype(np.float32)


def syncer_audio_of(
    pcm: np.ndarray, frontend: FrontEndConfig, syncer_cfg=None, first_frame: int = 0, end_frame: int | None = None
) -> np.ndarray:
    """What a metric syncer pyramid reads for landmark frames [first_frame, end_frame) of a stream that starts at
    pcm[0]: :func:`mfcc_of`, or for `syncer_cfg.audio_input == "teacher"` the speech teacher's features of the
    stream up to `end_frame` at the MFCC rate (`training.teacher.features_at_mfcc_rate`, user cache), the same rows.
    """
    if syncer_cfg is None or syncer_cfg.audio_input != "teacher":
        return mfcc_of(pcm, frontend, first_frame, end_frame)
    from training.teacher import default_cache_dir, features_at_mfcc_rate

    spf, k = frontend.samples_per_landmark_frame, frontend.mfcc_per_landmark_frame
    end = len(pcm) // spf if end_frame is None else end_frame
    (feats,) = features_at_mfcc_rate(
        [np.asarray(pcm[: end * spf], np.float32)], cache_dir=default_cache_dir(), mfcc_per_frame=k, progress=False
    )
    return feats[k * first_frame :]


def render_rollout(video_dir: Path, name: str, landmarks: np.ndarray, pcm: np.ndarray, seconds: float) -> list[str]:
    """The first and last `seconds` of a rollout, (T, 68, 2) frames over their PCM, as MP4s; returns the paths."""
    from training.render import render_video

    n = min(int(round(seconds * FPS)), len(landmarks))
    if n <= 0:
        return []
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    paths = []
    for label, a in (("first", 0), ("last", len(landmarks) - n)):
        path = video_dir / f"{safe}_long_{label}_{seconds:g}s.mp4"
        render_video(path, landmarks[a : a + n], pcm[a * SPF : (a + n) * SPF])
        paths.append(str(path))
    return paths


def _load_onnx_model(name: str, path: str) -> LoadedModel:
    import json

    G = OnnxGenerator(path)
    try:  # the exporter writes the checkpoint's training-data summary as JSON text
        training_data = json.loads(G.contract.training_data)
    except ValueError:
        training_data = None
    meta = {
        "training_data": training_data if isinstance(training_data, dict) else {"note": G.contract.training_data},
        "model_version": G.contract.model_version,
        "precision": G.precision,
        "reference_face": [list(row) for row in G.contract.reference_face],  # as a checkpoint's meta has it
    }
    return LoadedModel(name, str(path), G, meta, G.cfg.receptive_field_frames[-1] - 1, G.cfg.lookahead_frames)


def strip_suffix(path: str | Path) -> Path:
    """`path` without a `.safetensors` / `.json` suffix."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def load_model(name: str, path: str, device: str) -> LoadedModel:
    """A generator row: the checkpoint (stem, file or run directory) with its warm-up W and look-ahead L, or an
    exported `.onnx` step (any precision), run by ONNX Runtime on the CPU (`training.onnx_rows`)."""
    from training.models.generator import load_generator, resolve_checkpoint

    if str(path).endswith(".onnx"):
        return _load_onnx_model(name, path)

    G, meta = load_generator(path, device)
    return LoadedModel(
        name, str(resolve_checkpoint(path)), G, meta, G.cfg.receptive_field_frames[-1] - 1, G.cfg.lookahead_frames
    )
