"""The causal multi-scale generator (paper §3.2, made streamable).

Temporal module: a 1-layer LSTM over embeddings of the previous landmark frame. Multi-scale audio module: a
causal, undecimated ("à trous") pyramid of dilated ConvNeXt-1D blocks at the landmark rate, one output per
level with receptive fields of about 200 ms, 360 ms, 680 ms and 1.96 s; every level reads audio only up to
L landmark frames after the frame being produced (L = `lookahead_frames`). One branch per level maps
[LSTM state | landmark embedding | level audio] to a velocity for every landmark and a mask logit per landmark;
a softmax over branches, per landmark, merges the velocities, and x(t) = x(t-1) + v(t). The random initial
LSTM state is the noise source; the caller gives the identity x_ref as the frame before the first one.

Past the paper (drift): pure integration lets small velocity biases add up over minutes (a face that grows or
slides away). With `anchor_rate` a > 0 every frame is also pulled back toward the identity,
x(t) = x(t-1) + v(t) - a * (x(t-1) - x_ref), which bounds the deviation a constant bias can build to bias / a;
with `reference_input` the landmark encoder also sees x(t-1) - x_ref, so the network knows the pull it has to
counter to hold a pose. Both off reproduce the paper's update.

The anchor can pull the head's pose more weakly than the face's shape (`pose_anchor_rate` a_p, `roll_anchor_rate`
a_r, `pitch_anchor_rate` a_t): one rate of 0.05 per frame (0.8 s) damped the slow head motion real speakers make
(1.6 s head energy 0.59x ground truth's), while a single lower rate let per-landmark noise build up into faces
outside the shape space.
The pull on d = x(t-1) - x_ref is then a * d + (a_p - a) * (H(d) - S(d)) + (a_r - a_p) * R(d) + (a_t - a_p) * P(d),
where H(d) is the head's move fitted on the rigid points (`stream_engine.signals.RIGID_POINTS`: upper jaw contour,
nose, eye corners) as a linearised scaled-orthographic move of a face, d_i ~ t + A g_i + z_i b (translation;
in-plane rotation, scale and shear; yaw and pitch as the parallax z_i b of each point's depth), evaluated at every
point; S(d) its isotropic scale, R(d) its small-angle in-plane rotation (roll) and P(d) its pitch (z_i b_y, the
depth term of the vertical coordinate). g and z come from the generic face `MEAN_FACE_3D`, so the whole split is
one constant (136, 136) product per step (`anchor_split_matrix`). The face's size stays at a: released, the
default reference face grew by up to 1.7x in silence and noise. A turn (yaw), a move in the image plane, a shear
or an uneven stretch relaxes at a_p, a roll at a_r, a pitch at a_t, and everything else (the face's size, the
mouth opening, shape noise) at a. "At exactly its rate" holds for offsets built on the generic face's proportions;
on a reference face of other proportions a pure change of size or roll is pulled within a few percent of its rate
(0.0495-0.0496 instead of 0.05 for the default reference face).

A calibration term (`reference_pose_gain`, fitted by `training.pose_bias`): the network pulls a face toward the
frontal pose it mostly saw, so a stream whose reference face is turned, nodded or rolled settles part of the way back
toward frontal, which reads as a constant bias relative to that reference (model 0.3.4: a quarter of the
reference's own angle). With gains (g_yaw, g_pitch, g_roll) the update adds g_k times the yaw, pitch and roll parts
of the reference face's own fitted pose (the same fit, `pose_fit_maps`, on x_ref itself):
x(t) = x(t-1) + v(t) - pull(x(t-1) - x_ref) + push(x_ref). A constant of the model, like the split: two thin
products (136 x 3, 3 x 136) per step.

Two forms with the same weights:
- `forward` runs a whole window (training): audio convolutions in parallel, the recurrence frame by frame.
- `step` is one 40 ms stream step with every piece of memory explicit (`StepState`): 640 new PCM samples in,
  one landmark frame out (the frame L steps back). Stepping through a sequence reproduces `forward`.
Because the audio pyramid is undecimated and causal, a step computes exactly one new column per conv layer
from cached inputs; nothing the previous step computed is recomputed.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stream_engine.features import FrontEndConfig
from stream_engine.signals import MEAN_FACE_3D, RIGID_POINTS
from training.frontend import TorchMfcc
from training.models.convnext1d import ConvNeXtBlock1d
from training.models.input_gate import InputGate, InputGateConfig, layout


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the generator.

    Attributes:
        lookahead_frames: L, landmark frames of audio read beyond the frame produced (0 = fully causal).
        level_dilations: dilations of the causal blocks that build each audio level from the previous one.
        branch_levels: which audio levels get a branch ((0, 1, 2, 3) = multi-scale; (0,) = single-scale).
        velocity_scale: fixed gain on the branch velocities (normalised units per frame), so that an untrained
            generator moves slowly.
        init_noise: "uniform" draws the initial LSTM state from U[0, 1) (the paper's noise source).
        anchor_rate: per-frame pull of every landmark toward the reference face (0 = the paper's pure
            integration; 0.05 = a time constant of 20 frames, 0.8 s).
        pose_anchor_rate: per-frame pull of the head's pose (the move H fitted on the rigid points; module
            docstring) toward the reference face's (None = anchor_rate, the single anchor of model 0.3.2 and before).
        roll_anchor_rate: per-frame pull of the head's in-plane rotation (roll; R in the module docstring)
            (None = pose_anchor_rate).
        pitch_anchor_rate: per-frame pull of the head's pitch (P in the module docstring) (None =
            pose_anchor_rate). The three in [0, 1) and for the iBUG 68-point layout.
        reference_pose_gain: (yaw, pitch, roll) per-frame push of the face by its reference face's own pose
            (the yaw, pitch and roll parts of the move fitted on the reference's rigid points, as the split
            anchor fits them: `reference_pose_matrix`), or None for none. A calibration term
            (`training.pose_bias`): the network pulls a face toward the frontal pose it mostly saw, so a stream
            whose reference face is turned settled turned back toward frontal (about a quarter of the
            reference's angle, model 0.3.4); this push cancels the part linear in the reference's pose. Finite;
            iBUG 68-point layout.
        reference_input: the landmark encoder reads [x(t-1), x(t-1) - x_ref] instead of x(t-1) alone.
        silence_history: before a stream's start, the causal audio blocks hold what digital silence gives them
            (the front end's own convention: a stream is preceded by zeros) instead of zero activations. The
            step's `conv_cache` then stores each block's inputs minus their silence value, so its zero initial
            state is that history and every runtime (Python, C++, TensorRT, Triton) starts alike. False = the
            zero history of 0.3.1 and before, whose deep blocks read a fresh stream as loud audio for ~0.5 s
            (the raw mouth opened ~0.1 IOD at a stream start inside steady noise).
        input_gate: a noise gate on the step's PCM (`training.models.input_gate`): where the stream's level has
            stayed near its own background for the gate's hold, the step hears digital silence, so the raw mouth
            rests in steady noise of any spectrum. It adds the state `input_gate`. None = no gate (training, and
            every model before 0.3.6). It acts in `step`; `forward` reads MFCC and cannot apply it: gate the
            stream's PCM from its start with `gate_pcm` first (`training.eval.generation` does).
        silent_face_rate: in digital silence (every band of the step's newest audio at the front end's log floor:
            silence in the input, or the input gate closed), the upper face's own shape (points 17-47: brows, nose,
            eyes), everything but its translation, roll and depth turn (`silent_face_map`), is pulled toward the
            reference face's at this extra rate per frame; None = off (training, and every model before 0.3.7).
            Why: the network's face in digital silence spreads its eyes and lowers its brows (model 0.3.6 on the
            test split after 2 s of silence: inter-ocular over face width 1.27x ground truth's, eyes 1.12x wide,
            brows 0.74x as high), while in speech its inter-ocular distance and eye width are ground truth's
            (1.01x; brows 0.91x). Shipped 0.05 (0.3.7: 1.09x, 1.07x, 0.80x). A constant of the model, like the
            anchor; `forward` and `step` apply it alike. In [0, 1); iBUG 68 points.
        frontend: the audio front end (MFCC) the generator reads and the exported step contains.
    """

    num_landmarks: int = 68
    n_mfcc: int = 26
    lookahead_frames: int = 2
    audio_channels: int = 128
    audio_kernel: int = 3
    audio_expansion: int = 2
    level_dilations: tuple[tuple[int, ...], ...] = ((1, 1), (2,), (4,), (8, 8))
    branch_levels: tuple[int, ...] = (0, 1, 2, 3)
    landmark_embed: int = 256
    lstm_hidden: int = 256
    branch_hidden: int = 256
    branch_expansion: int = 2
    velocity_scale: float = 0.01
    init_noise: str = "uniform"
    anchor_rate: float = 0.0
    pose_anchor_rate: float | None = None
    roll_anchor_rate: float | None = None
    pitch_anchor_rate: float | None = None
    reference_pose_gain: tuple[float, float, float] | None = None
    reference_input: bool = False
    silence_history: bool = False
    input_gate: InputGateConfig | None = None
    silent_face_rate: float | None = None
    frontend: FrontEndConfig = FrontEndConfig()

    def __post_init__(self) -> None:
        if self.lookahead_frames < 0:
            raise ValueError("lookahead_frames must be >= 0")
        if not 0.0 <= self.anchor_rate < 1.0:
            raise ValueError(f"anchor_rate must be in [0, 1), got {self.anchor_rate}")
        split = {n: getattr(self, n) for n in ("pose_anchor_rate", "roll_anchor_rate", "pitch_anchor_rate")}
        for name, rate in split.items():
            if rate is not None and not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")
        if any(rate is not None for rate in split.values()) and self.num_landmarks != 68:
            raise ValueError("pose, roll and pitch anchor rates need the iBUG 68-point layout (num_landmarks = 68)")
        gain = self.reference_pose_gain
        if gain is not None:
            if len(gain) != 3 or not all(math.isfinite(float(g)) for g in gain):
                raise ValueError(f"reference_pose_gain must be 3 finite numbers (yaw, pitch, roll), got {gain!r}")
            if self.num_landmarks != 68:
                raise ValueError("reference_pose_gain needs the iBUG 68-point layout (num_landmarks = 68)")
        if self.silent_face_rate is not None:
            if not 0.0 <= float(self.silent_face_rate) < 1.0:
                raise ValueError(f"silent_face_rate must be in [0, 1), got {self.silent_face_rate}")
            if self.num_landmarks != 68:
                raise ValueError("silent_face_rate needs the iBUG 68-point layout (num_landmarks = 68)")
        if not self.branch_levels or max(self.branch_levels) >= len(self.level_dilations):
            raise ValueError(f"branch_levels {self.branch_levels} must index level_dilations")

    @property
    def receptive_field_frames(self) -> list[int]:
        """Audio receptive field of each level, in landmark frames (ending at the newest frame)."""
        rf, out = 1, []
        for dils in self.level_dilations:
            for d in dils:
                rf += (self.audio_kernel - 1) * d
            out.append(rf)
        return out

    @property
    def conv_cache_frames(self) -> int:
        """Total cached input frames over all audio blocks (dimension 1 of the `conv_cache` state)."""
        return sum((self.audio_kernel - 1) * d for dils in self.level_dilations for d in dils)


class StepState(NamedTuple):
    """Everything a stream remembers between steps. Batch is dimension 0 of every tensor.

    audio_carry: (B, 352) last PCM samples (MFCC window overlap).
    conv_cache: (B, conv_cache_frames, C) inputs of every causal audio block for its last (k-1)*d frames, block
        after block, oldest first; each frame's C channels are contiguous, so a step's reads and writes of the
        cache are whole-row copies. With `GeneratorConfig.silence_history` each input is stored minus that
        block's input in digital silence (`Generator.silence_inputs`), so zeros mean a silent past.
    h, c: (B, lstm_hidden) LSTM state.
    prev_landmarks: (B, 68, 2) the last emitted frame (the reference face before the first one).
    frames_seen: (B, 1) float count of audio frames consumed, saturating at L (the look-ahead warm-up).
    reference_landmarks: (B, 68, 2) the stream's identity x_ref, passed through unchanged (the anchor).
    input_gate: (B, width) the input gate's state row (`training.models.input_gate`), or None without a gate.
    """

    audio_carry: torch.Tensor
    conv_cache: torch.Tensor
    h: torch.Tensor
    c: torch.Tensor
    prev_landmarks: torch.Tensor
    frames_seen: torch.Tensor
    reference_landmarks: torch.Tensor
    input_gate: torch.Tensor | None = None


class GroupedLinear(nn.Module):
    """G independent linear maps applied to (B, G, in) -> (B, G, out) in one batched product."""

    def __init__(self, groups: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(groups, out_dim))
        nn.init.normal_(self.weight, std=in_dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G, in) -> (B, G, out)."""
        return self.forward_groups(x.transpose(0, 1)).transpose(0, 1)

    def forward_groups(self, x: torch.Tensor) -> torch.Tensor:
        """(G, B, in) -> (G, B, out), groups leading: one batched product per group. (A broadcast (B, G, 1, in) @
        (G, in, out) would materialise the weights once per batch element, forward and backward.)"""
        return torch.matmul(x, self.weight) + self.bias[:, None, :]


class Branches(nn.Module):
    """The per-level heads: [h | landmark embedding | audio_l] -> (velocity (136), mask logits (68)) per branch."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        g, hid = len(cfg.branch_levels), cfg.branch_hidden
        in_dim = cfg.lstm_hidden + cfg.landmark_embed + cfg.audio_channels
        self.shared_dim = cfg.lstm_hidden + cfg.landmark_embed
        self.inp = GroupedLinear(g, in_dim, hid)
        self.norm = nn.LayerNorm(hid)
        self.mlp1 = GroupedLinear(g, hid, cfg.branch_expansion * hid)
        self.mlp2 = GroupedLinear(g, cfg.branch_expansion * hid, hid)
        self.velocity = GroupedLinear(g, hid, 2 * cfg.num_landmarks)
        self.mask = GroupedLinear(g, hid, cfg.num_landmarks)
        nn.init.zeros_(self.mask.weight)  # start from an even mix of the branches

    def forward(self, h: torch.Tensor, emb: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """h (B, H), emb (B, E), audio (B, G, C) -> merged velocity (B, 68, 2) in branch units.

        Per branch g: z = gelu([h | emb | audio_g] W_g + b_g), z += mlp2(gelu(mlp1(norm(z)))), velocity v_g = z V_g,
        and the branches mix per landmark with softmax-over-branches weights of z M_g. Computed with the branches
        leading (G, B, ...): the shared [h | emb] rows of W_g multiply once per group without being copied per
        branch, and the softmax (softmax(l)_g = exp(l_g - max l) / sum exp(l - max l)) and the mix are reductions over
        the leading axis; the velocity's columns are taken x block then y block, so the weights broadcast over
        whole 68-wide rows (a (B, G, 68, 1) x (B, G, 68, 2) product cost 4 % of a batched int8 step).
        """
        shared = torch.cat([h, emb], dim=-1)  # (B, H + E)
        w, k = self.inp.weight, self.shared_dim
        z = torch.matmul(shared, w[:, :k, :]) + torch.matmul(audio.transpose(0, 1), w[:, k:, :])
        z = F.gelu(z + self.inp.bias[:, None, :])  # (G, B, hid)
        z = z + self.mlp2.forward_groups(F.gelu(self.mlp1.forward_groups(self.norm(z))))
        # The velocity's columns as all x then all y (G, B, 2, 68), so the per-landmark weights (G, B, 1, 68)
        # broadcast along whole rows.
        v = self.velocity
        order = torch.arange(v.weight.shape[-1], device=z.device).view(-1, 2).t().reshape(-1)
        vel = (torch.matmul(z, v.weight[..., order]) + v.bias[:, None, order]).unflatten(-1, (2, -1))
        logits = self.mask.forward_groups(z).unsqueeze(2)  # (G, B, 1, 68)
        e = torch.exp(logits - logits.amax(dim=0, keepdim=True))
        merged = (e * vel).sum(dim=0) / e.sum(dim=0)  # (B, 2, 68)
        return merged.transpose(1, 2)


def initial_lstm_state(
    cfg: GeneratorConfig, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise source of a generator with config `cfg`: (h0, c0), each (B, lstm_hidden), U[0,1) or zeros per
    `cfg.init_noise` (also used by the ONNX rows of training.onnx_rows, which have no torch module)."""
    shape = (batch, cfg.lstm_hidden)
    if cfg.init_noise == "uniform":
        return (
            torch.rand(shape, generator=generator, device=device),
            torch.rand(shape, generator=generator, device=device),
        )
    return torch.zeros(shape, device=device), torch.zeros(shape, device=device)


def pose_fit_maps() -> dict[str, np.ndarray]:
    """The parts of the head's move fitted on the rigid points, each a linear map (136, 136) on the flattened
    (68 points x 2) offset d, applied as map @ d.

    The fit is least squares of d_i ~ t + A g~_i + z_i b over `RIGID_POINTS`, with g~ the image-plane coordinates
    of the generic face `MEAN_FACE_3D` centred on those points and z its depth (an affine change of g~ spans the
    same space, so a face of another size or place gives the same fit), evaluated at all 68 points. Keys:
    "move" the whole fitted move; "size" its isotropic scale s g~_i with s = (A_xx + A_yy) / 2; "roll" its
    small-angle in-plane rotation theta J g~_i with theta = (A_yx - A_xy) / 2 (J the 90-degree turn); "pitch"
    z_i b_y on the y coordinates; "yaw" z_i b_x on the x coordinates. A pure scale, roll, pitch or yaw of the
    generic face is fitted by its own part alone.
    """
    m = np.asarray(MEAN_FACE_3D, dtype=np.float64)
    n = len(m)
    w = np.zeros(n)
    w[list(RIGID_POINTS)] = 1.0
    g = m[:, :2] - (m[:, :2] * w[:, None]).sum(axis=0) / w.sum()  # g~: centred on the rigid points
    x = np.stack([np.ones(n), g[:, 0], g[:, 1], m[:, 2]], axis=1)  # (68, 4): [1, g~_x, g~_y, z]
    xw = x * w[:, None]
    fit = np.linalg.solve(x.T @ xw, xw.T)  # (4, 68): per coordinate c, coef = fit @ d[:, c] = [t_c, A_cx, A_cy, b_c]
    move = np.zeros((2 * n, 2 * n))  # the fitted move at every point
    move[0::2, 0::2] = move[1::2, 1::2] = x @ fit
    jg = np.stack([-g[:, 1], g[:, 0]], axis=1)
    size, roll, pitch, yaw = (np.zeros((2 * n, 2 * n)) for _ in range(4))
    for c in range(2):
        size[c::2, 0::2] = np.outer(g[:, c], fit[1]) / 2  # s = (A_xx + A_yy) / 2, displacement s * g~
        size[c::2, 1::2] = np.outer(g[:, c], fit[2]) / 2
        roll[c::2, 1::2] = np.outer(jg[:, c], fit[1]) / 2  # theta = (A_yx - A_xy) / 2, displacement theta * J g~
        roll[c::2, 0::2] = -np.outer(jg[:, c], fit[2]) / 2
    pitch[1::2, 1::2] = np.outer(m[:, 2], fit[3])  # pitch: b_y * z on the y coordinates
    yaw[0::2, 0::2] = np.outer(m[:, 2], fit[3])  # yaw: b_x * z on the x coordinates
    return {"move": move, "size": size, "roll": roll, "pitch": pitch, "yaw": yaw}


def anchor_split_matrix(cfg: GeneratorConfig) -> torch.Tensor | None:
    """The split anchor as one linear map: (136, 136) M with pull = a * d + d.flatten(1) @ M, or None when
    the pose, roll and pitch rates leave the single anchor.

    M = ((a_p - a) * H + (a - a_p) * S + (a_r - a_p) * R + (a_t - a_p) * P)^T on the flattened (68 points x 2)
    offset, with H, S, R and P the "move", "size", "roll" and "pitch" parts of `pose_fit_maps`; so a pure scale,
    roll or pitch is fitted by its own term alone and pulled at exactly its rate. The generic face, not each
    stream's reference, keeps M a constant of the model: one small product per step.
    """
    pose = cfg.anchor_rate if cfg.pose_anchor_rate is None else cfg.pose_anchor_rate
    roll = pose if cfg.roll_anchor_rate is None else cfg.roll_anchor_rate
    pitch = pose if cfg.pitch_anchor_rate is None else cfg.pitch_anchor_rate
    if pose == cfg.anchor_rate and roll == pose and pitch == pose:
        return None
    f = pose_fit_maps()
    a = cfg.anchor_rate
    split = (pose - a) * f["move"] + (a - pose) * f["size"] + (roll - pose) * f["roll"] + (pitch - pose) * f["pitch"]
    return torch.tensor(split.T, dtype=torch.float32)


#: The points whose shape `GeneratorConfig.silent_face_rate` restores in silence: brows, nose and eyes (the jaw line
#: and the mouth move with the mouth's opening, which rests closed, not at the reference's).
UPPER_FACE_POINTS = tuple(range(17, 48))


def silent_face_map() -> np.ndarray:
    """(136, 136) Q with Q @ d the upper face's own shape change in the flattened offset d = x - x_ref: d minus
    its fitted translation, roll and depth turn (pitch, yaw), on `UPPER_FACE_POINTS` only (zero rows elsewhere).

    From `pose_fit_maps`: the fitted move is t + A g~ + z b; A = s I + theta J + e1 [[1, 0], [0, -1]] +
    e2 [[0, 1], [1, 0]], so the move less its uneven stretch (e1) and shear (e2) is t + s g~ + theta J g~ + z b,
    and Q = mask (I - move + stretch + shear + size): the isotropic size counts as shape too, so a face that
    grows in silence is pulled back as well. Offsets made of a translation, a roll, a pitch or a yaw of the
    generic face give Q @ d = 0."""
    f = pose_fit_maps()
    m = np.asarray(MEAN_FACE_3D, dtype=np.float64)
    n = len(m)
    w = np.zeros(n)
    w[list(RIGID_POINTS)] = 1.0
    g = m[:, :2] - (m[:, :2] * w[:, None]).sum(axis=0) / w.sum()
    x = np.stack([np.ones(n), g[:, 0], g[:, 1], m[:, 2]], axis=1)
    fit = np.linalg.solve(x.T @ (x * w[:, None]), (x * w[:, None]).T)  # (4, 68), as in `pose_fit_maps`
    stretch, shear = np.zeros((2 * n, 2 * n)), np.zeros((2 * n, 2 * n))
    # e1 = (A_xx - A_yy) / 2 with A_xx = fit[1] . d_x, A_yy = fit[2] . d_y; displacement e1 * (g~_x, -g~_y)
    stretch[0::2, 0::2], stretch[0::2, 1::2] = np.outer(g[:, 0], fit[1]) / 2, -np.outer(g[:, 0], fit[2]) / 2
    stretch[1::2, 0::2], stretch[1::2, 1::2] = -np.outer(g[:, 1], fit[1]) / 2, np.outer(g[:, 1], fit[2]) / 2
    # e2 = (A_xy + A_yx) / 2 with A_xy = fit[2] . d_x, A_yx = fit[1] . d_y; displacement e2 * (g~_y, g~_x)
    shear[0::2, 0::2], shear[0::2, 1::2] = np.outer(g[:, 1], fit[2]) / 2, np.outer(g[:, 1], fit[1]) / 2
    shear[1::2, 0::2], shear[1::2, 1::2] = np.outer(g[:, 0], fit[2]) / 2, np.outer(g[:, 0], fit[1]) / 2
    q = np.eye(2 * n) - f["move"] + stretch + shear + f["size"]
    rows = np.zeros(2 * n, dtype=bool)
    for p in UPPER_FACE_POINTS:
        rows[2 * p : 2 * p + 2] = True
    q[~rows] = 0.0
    return q


def reference_pose_matrix(cfg: GeneratorConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`GeneratorConfig.reference_pose_gain` as a linear map W = F @ U, push = x_ref.flatten(1) @ F @ U (landmark
    units per frame), returned as its factors (F (136, 3), U (3, 136)), or None without a gain.

    W = (g_yaw * Y + g_pitch * P + g_roll * R)^T with Y, P, R the "yaw", "pitch" and "roll" parts of
    `pose_fit_maps`: the reference face's own yaw, pitch and roll displacements (its translation, size and shape
    fall outside them), each scaled by its gain. Each part is one fitted number times one displacement pattern, so
    W has rank 3 at most and its two thin factors (from its SVD, exact to float rounding) cost 816 multiply-adds
    per stream instead of the (136, 136) product's 18,496. A constant of the model, like the split anchor.
    """
    if cfg.reference_pose_gain is None:
        return None
    g_yaw, g_pitch, g_roll = (float(v) for v in cfg.reference_pose_gain)
    f = pose_fit_maps()
    w = (g_yaw * f["yaw"] + g_pitch * f["pitch"] + g_roll * f["roll"]).T
    u, sv, vt = np.linalg.svd(w)
    fit, push = u[:, :3] * sv[:3], vt[:3]
    return torch.tensor(fit, dtype=torch.float32), torch.tensor(push, dtype=torch.float32)


class Generator(nn.Module):
    """Causal MS-Sync generator. See the module docstring for the two forms."""

    mfcc_mean: torch.Tensor
    mfcc_std: torch.Tensor

    def __init__(self, cfg: GeneratorConfig = GeneratorConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.mfcc = TorchMfcc(cfg.frontend)
        self.register_buffer("mfcc_mean", torch.zeros(cfg.n_mfcc))
        self.register_buffer("mfcc_std", torch.ones(cfg.n_mfcc))
        per = cfg.frontend.mfcc_per_landmark_frame
        c = cfg.audio_channels
        self.audio_stem = nn.Linear(per * cfg.n_mfcc, c)
        self.blocks = nn.ModuleList()
        self.block_level: list[int] = []
        for lvl, dils in enumerate(cfg.level_dilations):
            for d in dils:
                self.blocks.append(ConvNeXtBlock1d(c, cfg.audio_kernel, d, cfg.audio_expansion, causal=True))
                self.block_level.append(lvl)
        d_lm = (4 if cfg.reference_input else 2) * cfg.num_landmarks
        e = cfg.landmark_embed
        self.landmark_encoder = nn.Sequential(
            nn.Linear(d_lm, e), nn.LayerNorm(e), nn.Linear(e, 2 * e), nn.GELU(), nn.Linear(2 * e, e)
        )
        self.lstm = nn.LSTMCell(e, cfg.lstm_hidden)
        self.branches = Branches(cfg)
        # The split anchor's linear map (not saved: a function of the config; see `anchor_split_matrix`).
        split = anchor_split_matrix(cfg)
        self.anchor_split: torch.Tensor | None
        self.register_buffer("anchor_split", split, persistent=False)
        # The push by the reference face's pose, as two thin factors (not saved either; `reference_pose_matrix`).
        factors = reference_pose_matrix(cfg)
        self.reference_pose_fit: torch.Tensor | None
        self.reference_pose_push: torch.Tensor | None
        self.register_buffer("reference_pose_fit", None if factors is None else factors[0], persistent=False)
        self.register_buffer("reference_pose_push", None if factors is None else factors[1], persistent=False)
        # `cfg.silent_face_rate`'s constants (not saved; kept whatever the rate, which an export may set later):
        # digital silence's MFCC vector, a tolerance around it, and the upper face's shape map (transposed).
        fe = cfg.frontend
        with torch.no_grad():
            quiet = self.mfcc(torch.zeros(1, fe.context_samples + fe.samples_per_landmark_frame))[0, 0]
        self.silent_mfcc: torch.Tensor
        self.register_buffer("silent_mfcc", quiet.clone(), persistent=False)
        self.silent_tol = 1e-3 * (1.0 + float(quiet.abs().max()))
        self.silent_face_q: torch.Tensor
        q = silent_face_map().T if cfg.num_landmarks == 68 else np.zeros((2 * cfg.num_landmarks,) * 2)
        self.register_buffer("silent_face_q", torch.tensor(q, dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------ audio
    def input_gate(self, device: torch.device | str = "cpu") -> InputGate | None:
        """The step's input gate as `cfg.input_gate` sets it (read per call, like `silence_history`), or None.
        Built per call (two small constant tensors), not cached: a module cached while `torch.export` traces the
        step would keep that trace's fake tensors."""
        gcfg = self.cfg.input_gate
        if gcfg is None:
            return None
        fe = self.frontend
        return InputGate(gcfg, fe.samples_per_landmark_frame, fe.landmark_fps).to(device)

    def gate_pcm(self, pcm: torch.Tensor) -> torch.Tensor:
        """(B, N) PCM of whole streams from their start -> what `step` hears of it (unchanged without a gate)."""
        gate = self.input_gate(pcm.device)
        return pcm if gate is None else gate.gate_pcm(pcm)

    @property
    def frontend(self) -> FrontEndConfig:
        """The audio front end (`cfg.frontend`)."""
        return self.cfg.frontend

    def _stem(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 4T, n_mfcc) raw MFCC -> (B, C, T) stem features."""
        norm = (mfcc - self.mfcc_mean) / self.mfcc_std
        per = self.frontend.mfcc_per_landmark_frame
        return self.audio_stem(norm.unflatten(1, (-1, per)).flatten(2)).transpose(1, 2)

    def audio_levels(self, mfcc: torch.Tensor, valid: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Causal audio pyramid over a window.

        Args:
            mfcc: (B, 4T, n_mfcc) MFCC of T landmark frames.
            valid: optional (B, T) bool, False for frames before a stream's start: they are zeroed after every
                layer, which is exactly what the zero-initialised caches of a fresh stream hold (with
                `cfg.silence_history`, set to what digital silence gives that layer, as the step's caches
                start; the window's own causal padding follows the same rule).
        Returns:
            One (B, C, T) tensor per level.
        """
        x = self._stem(mfcc)
        mask = None if valid is None else valid[:, None, :].to(x.dtype)
        silent = self.silence_inputs() if self.cfg.silence_history else None
        if mask is not None:
            x = x * mask if silent is None else x * mask + silent[0][None, :, None] * (1.0 - mask)
        levels: list[Any] = [None] * len(self.cfg.level_dilations)
        for i, (block, lvl) in enumerate(zip(self.blocks, self.block_level)):
            x = block(x, None if silent is None else silent[i])  # before the window: zeros, or silence
            if mask is not None:
                x = x * mask if silent is None else x * mask + silent[i + 1][None, :, None] * (1.0 - mask)
            levels[lvl] = x
        return levels

    def _step_silence(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """([block i's input in silence (C,)], [block i's depthwise-conv bias plus its cached taps' weights times
        that input (C,)]) for `step`; constants once `freeze_silence` has run."""
        frozen = getattr(self, "_frozen_silence", None)
        if frozen is not None:
            return frozen
        s = self.silence_inputs()
        biases = [
            cast(torch.Tensor, b.dwconv.bias) + b.dwconv.weight[:, 0, :-1].sum(dim=1) * s[i]
            for i, b in enumerate(cast("list[ConvNeXtBlock1d]", self.blocks))
        ]
        return s[:-1], biases

    def freeze_silence(self) -> None:
        """Compute `step`'s silence constants once and keep them as plain tensors, so that an exported step
        holds them as constants rather than recomputing the silence from the weights in every call (export
        calls it; the weights must not change afterwards)."""
        self._frozen_silence: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        with torch.no_grad():
            s, biases = self._step_silence()
        self._frozen_silence = ([t.detach().clone() for t in s], [t.detach().clone() for t in biases])

    def silence_inputs(self) -> list[torch.Tensor]:
        """What the causal audio blocks see in digital silence, which is the same in every frame: [the stem's
        output, block 1's output, ..., the last block's output], each (C,).

        Digital silence has one MFCC vector (the front end's log floor), so every block's input is constant in
        time and its depthwise conv reduces to the sum of its taps: conv = (sum_j w_j) * s + bias. Block i's
        input is entry i; the list has len(blocks) + 1 entries. Differentiable in the weights.
        """
        fe = self.frontend
        silence = torch.zeros(1, fe.context_samples + fe.samples_per_landmark_frame, device=self.mfcc_mean.device)
        s = self._stem(self.mfcc(silence))[0, :, 0]  # (C,)
        out = [s]
        for block in cast("list[ConvNeXtBlock1d]", self.blocks):
            conv = block.dwconv.weight[:, 0, :].sum(dim=1) * s + cast(torch.Tensor, block.dwconv.bias)
            s = block.mix_frame(conv[None], s[None])[0]
            out.append(s)
        return out

    def branch_audio(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Per-level features stacked for the branches: (B, G, C, T)."""
        return torch.stack([levels[l] for l in self.cfg.branch_levels], dim=1)

    # --------------------------------------------------------------- temporal
    def _embed(self, x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
        feats = ((x - 0.5) * 4.0).flatten(1)
        if self.cfg.reference_input:
            # The offset from the identity, scaled like a typical expression/head move (~0.05) to unit range.
            feats = torch.cat([feats, ((x - x_ref) * 20.0).flatten(1)], dim=1)
        return self.landmark_encoder(feats)

    def advance(
        self,
        x_prev: torch.Tensor,
        x_ref: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        audio: torch.Tensor,
        silent: torch.Tensor | None = None,
    ):
        """One landmark frame: x_prev, x_ref (B,68,2), h/c (B,H), audio (B,G,C), silent (B,1) 1.0 where the newest
        audio is digital silence (`silent_frames`; used with `cfg.silent_face_rate`) -> (x, h, c)."""
        emb = self._embed(x_prev, x_ref)
        h, c = self.lstm(emb, (h, c))
        v = self.branches(h, emb, audio) * self.cfg.velocity_scale
        if self.cfg.anchor_rate > 0.0 or self.anchor_split is not None:
            v = v - self.anchor_pull(x_prev - x_ref)
        if self.reference_pose_fit is not None:
            v = v + self.reference_push(x_ref)
        rate = self.cfg.silent_face_rate
        if rate is not None and silent is not None:  # the upper face's own shape back toward the reference's
            shape = ((x_prev - x_ref).flatten(1) @ self.silent_face_q).view_as(x_prev)
            v = v - (float(rate) * silent)[:, :, None] * shape
        return x_prev + v, h, c

    def reference_push(self, x_ref: torch.Tensor) -> torch.Tensor:
        """The push (B, 68, 2) by the reference faces x_ref (B, 68, 2) own yaw, pitch and roll, landmark units per
        frame (`GeneratorConfig.reference_pose_gain`; zeros without a gain)."""
        if self.reference_pose_fit is None or self.reference_pose_push is None:
            return torch.zeros_like(x_ref)
        return ((x_ref.flatten(1) @ self.reference_pose_fit) @ self.reference_pose_push).view_as(x_ref)

    def anchor_pull(self, d: torch.Tensor) -> torch.Tensor:
        """The anchor's per-frame pull (B, 68, 2) for the offset d = x(t-1) - x_ref (B, 68, 2), in landmark units
        per frame: a * d, plus the pose's, roll's and pitch's own rates (module docstring; exactly a * d when all
        three resolve to anchor_rate, e.g. when they are None). One (136, 136) product: `anchor_split`."""
        pull = self.cfg.anchor_rate * d
        if self.anchor_split is not None:
            pull = pull + (d.flatten(1) @ self.anchor_split).view_as(d)
        return pull

    def load_compatible(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Load weights of a generator trained without `reference_input` into one with it (warm start).

        The landmark encoder's first layer gains zero columns for the reference offset, so the loaded network
        computes what it computed before until training moves them. Returns the names of adapted tensors.
        """
        key = "landmark_encoder.0.weight"
        adapted = []
        w = state_dict.get(key)
        own = self.state_dict()[key]
        if w is not None and w.shape != own.shape and w.shape[1] * 2 == own.shape[1] and self.cfg.reference_input:
            state_dict = dict(state_dict)
            state_dict[key] = torch.cat([w, torch.zeros_like(w)], dim=1)
            adapted.append(key)
        self.load_state_dict(state_dict)
        return adapted

    def initial_lstm_state(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise source: (h0, c0), each (B, lstm_hidden), U[0,1) or zeros per `cfg.init_noise`."""
        return initial_lstm_state(self.cfg, batch, generator, device)

    def forward(
        self,
        mfcc: torch.Tensor,
        x_ref: torch.Tensor,
        h0: torch.Tensor,
        c0: torch.Tensor,
        num_frames: int,
        warmup_frames: int = 0,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generate `num_frames` frames over a window of audio.

        Args:
            mfcc: (B, 4 * (warmup_frames + num_frames + L), n_mfcc): audio of the warm-up frames (context for the
                causal convolutions), the frames to generate, and the L look-ahead frames after them.
            x_ref: (B, 68, 2) the frame before the first generated one (identity / last known frame).
            h0, c0: (B, lstm_hidden) initial LSTM state (the noise).
            valid: optional (B, warmup + num_frames + L) bool, False before the stream's start.
        Returns:
            (B, num_frames, 68, 2): frame t uses audio up to the end of frame warmup_frames + t + L.
        """
        L = self.cfg.lookahead_frames
        need = 4 * (warmup_frames + num_frames + L)
        if mfcc.shape[1] != need:
            raise ValueError(
                f"expected {need} mfcc frames for {num_frames} frames (+{warmup_frames} warm-up, "
                f"+{L} look-ahead), got {mfcc.shape[1]}"
            )
        audio = self.branch_audio(self.audio_levels(mfcc, valid))  # (B, G, C, W+T+L)
        silent = None if self.cfg.silent_face_rate is None else self.silent_frames(mfcc.unflatten(1, (-1, 4)))
        x, h, c = x_ref, h0, c0
        out = []
        for t in range(num_frames):
            j = warmup_frames + t + L
            x, h, c = self.advance(x, x_ref, h, c, audio[..., j], None if silent is None else silent[:, j : j + 1])
            out.append(x)
        return torch.stack(out, dim=1)

    def silent_frames(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, T, 4, n_mfcc) raw MFCC of T landmark frames -> (B, T) 1.0 where the frame's audio is digital
        silence (every mel band at the front end's log floor, so every MFCC equals digital silence's), else 0.0.
        What `GeneratorConfig.silent_face_rate` acts on; the input gate, once closed, gives exact silence."""
        quiet = self.silent_mfcc  # (n_mfcc,): one vector, the log floor's
        return ((mfcc - quiet).abs().flatten(2).max(dim=2).values <= self.silent_tol).to(mfcc.dtype)

    # ------------------------------------------------------------------- step
    def initial_state(
        self, x_ref: torch.Tensor, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None
    ) -> StepState:
        """A fresh stream: silence before it, zero caches, the given (or zero) LSTM state, x_ref as last frame."""
        b = x_ref.shape[0]
        dev = x_ref.device
        if h0 is None or c0 is None:
            h0 = torch.zeros(b, self.cfg.lstm_hidden, device=dev)
            c0 = torch.zeros(b, self.cfg.lstm_hidden, device=dev)
        return StepState(
            audio_carry=torch.zeros(b, self.frontend.context_samples, device=dev),
            conv_cache=torch.zeros(b, self.cfg.conv_cache_frames, self.cfg.audio_channels, device=dev),
            h=h0,
            c=c0,
            prev_landmarks=x_ref,
            frames_seen=torch.zeros(b, 1, device=dev),
            reference_landmarks=x_ref,
            input_gate=None if self.cfg.input_gate is None else torch.zeros(b, self._gate_width(), device=dev),
        )

    def _gate_width(self) -> int:
        """Columns of the input gate's state row (0 without a gate)."""
        return 0 if self.cfg.input_gate is None else layout(self.cfg.input_gate).width

    def step(self, audio_new: torch.Tensor, state: StepState) -> tuple[torch.Tensor, StepState]:
        """One 40 ms step.

        Args:
            audio_new: (B, 640) float32 PCM in [-1, 1], the next samples of the stream.
            state: the stream's `StepState`.
        Returns:
            landmarks (B, 68, 2): the frame L steps back (for the first L steps of a stream, the unchanged
            reference face, which runtimes drop), and the next state.
        """
        ctx = self.frontend.context_samples
        gate = self.input_gate(audio_new.device)
        gate_next = None
        if gate is not None:
            if state.input_gate is None:
                raise ValueError("this generator has an input gate: its step state needs `input_gate`")
            gated = gate.step(audio_new, state.input_gate)
            audio_new, gate_next = gated.audio, gated.state
        buf = torch.cat([state.audio_carry, audio_new], dim=1)  # (B, 352 + 640)
        raw = self.mfcc(buf)  # (B, 4, n_mfcc): this step's 4 mfcc frames
        norm = (raw - self.mfcc_mean) / self.mfcc_std
        x = self.audio_stem(norm.flatten(1))  # (B, C), as `_stem` with T = 1
        caches, offset = [], 0
        levels: list[Any] = [None] * len(self.cfg.level_dilations)
        silent = self._step_silence() if self.cfg.silence_history else None
        cache_in = state.conv_cache
        for i, (block, lvl) in enumerate(zip(cast("list[ConvNeXtBlock1d]", self.blocks), self.block_level)):
            pad, d = block.receptive_pad, block.dilation
            # Block i's cache is cache_in[:, offset : offset + pad], oldest first. The depthwise conv producing one
            # frame is k taps times weights: the cached taps (every d-th cached frame) and the new frame. Products
            # and sums export far cheaper than a Conv node with a single output column (which dominated batched
            # ORT steps), and every piece is sliced from the state input once (no per-block copy in between).
            weight = block.dwconv.weight[:, 0, :]  # (C, k)
            bias = cast(torch.Tensor, block.dwconv.bias)
            if silent is not None:  # the cache holds inputs minus silence: the cached taps' share of it back
                bias = silent[1][i]
            conv = x * weight[:, -1] + bias
            for j in range(weight.shape[1] - 1):
                conv = conv + cache_in[:, offset + j * d, :] * weight[:, j]
            stored = x if silent is None else x - silent[0][i]
            caches += [cache_in[:, offset + 1 : offset + pad, :], stored[:, None, :]]
            x = block.mix_frame(conv, x)  # (B, C)
            levels[lvl] = x
            offset += pad
        audio = torch.stack([levels[l] for l in self.cfg.branch_levels], dim=1)  # (B, G, C)
        quiet = None if self.cfg.silent_face_rate is None else self.silent_frames(raw[:, None])  # (B, 1)
        x_new, h_new, c_new = self.advance(
            state.prev_landmarks, state.reference_landmarks, state.h, state.c, audio, quiet
        )
        # Until L frames of look-ahead have arrived there is no frame to emit: keep the landmark state still.
        ready = state.frames_seen >= self.cfg.lookahead_frames  # (B, 1)
        x_out = torch.where(ready[:, :, None], x_new, state.prev_landmarks)
        h_out = torch.where(ready, h_new, state.h)
        c_out = torch.where(ready, c_new, state.c)
        seen = torch.clamp(state.frames_seen + 1.0, max=float(self.cfg.lookahead_frames))
        next_state = StepState(
            buf[:, -ctx:], torch.cat(caches, dim=1), h_out, c_out, x_out, seen, state.reference_landmarks, gate_next
        )
        return x_out, next_state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def resolve_checkpoint(path: str | Path) -> Path:
    """A generator checkpoint stem (no suffix). A run directory resolves to its `generator` (else `checkpoint`);
    a `.json`/`.safetensors` suffix is dropped.

    Raises:
        FileNotFoundError: the `.json` or the `.safetensors` half is missing.
    """
    p = Path(path)
    if p.is_dir():
        for name in ("generator", "checkpoint"):
            if (p / f"{name}.json").is_file():
                return p / name
    p = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    if not (p.with_suffix(".json").is_file() and p.with_suffix(".safetensors").is_file()):
        raise FileNotFoundError(f"generator checkpoint {p}.{{json,safetensors}} not found")
    return p


def load_generator(path: str | Path, device: str = "cpu") -> tuple[Generator, dict]:
    """(Generator in eval mode on `device`, checkpoint meta) from a checkpoint of kind "generator" written by
    `training.checkpoint.save_module` (`path`: stem, file or run directory, see :func:`resolve_checkpoint`).

    Older checkpoints keep the front end beside the generator config (meta "frontend") or not at all (the
    default front end); both load.

    Raises:
        FileNotFoundError: missing files; ValueError: not a generator checkpoint, or corrupt.
    """
    from stream_engine.dataclass_io import from_dict
    from training.checkpoint import load_meta, load_state

    p = resolve_checkpoint(path)
    meta = load_meta(p)
    if meta.get("kind") != "generator":
        raise ValueError(f"{p}: checkpoint kind is {meta.get('kind')!r}, expected 'generator'")
    if not isinstance(meta.get("generator"), dict):
        raise ValueError(f"{p}: checkpoint meta has no 'generator' config")
    data = dict(meta["generator"])
    if "frontend" not in data and isinstance(meta.get("frontend"), dict):
        data["frontend"] = meta["frontend"]
    model = Generator(from_dict(GeneratorConfig, data))
    model.load_state_dict(load_state(p, device), strict=True)
    return model.to(device).eval(), meta
