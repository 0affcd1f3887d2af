"""Head angles of landmark sequences in torch, differentiable: the evaluation's yaw/pitch/roll for training terms.

A port of `stream_engine.signals.head_rotation` (scaled-orthographic fit of the generic 3-D face's rigid points,
`MEAN_FACE_3D`, to the 2-D landmarks; the two fitted axes made orthonormal by Gram-Schmidt, the third their cross
product) and `stream_engine.signals.rotation_to_pose` (R = Rz(roll) @ Ry(yaw) @ Rx(pitch)), relative to a
reference face as `training.metrics.viewer.head_angles` computes them (R @ R_refᵀ), batched over any leading
dimensions. Degrees, image conventions of `stream_engine.signals.HeadPose`.
"""

from __future__ import annotations

import math

import torch

from stream_engine.signals import MODEL_RIGID_PINV, RIGID_INDEX, RigidFit


def head_rotation(x: torch.Tensor, fit: RigidFit | None = None) -> torch.Tensor:
    """(..., 68, 2) landmarks -> (..., 3, 3) rotations (rows r1, r2, r1 × r2), as `stream_engine.signals.head_rotation`
    (`fit`: `stream_engine.signals.rigid_fit` of other points than the rigid points).

    Differentiable wherever the fit is not degenerate (the norms are floored at 1e-12 as in the numpy function).
    """
    index, pinv_np = (RIGID_INDEX, MODEL_RIGID_PINV) if fit is None else fit
    pinv = torch.as_tensor(pinv_np, dtype=x.dtype, device=x.device)  # (3, n)
    image = x[..., index, :]
    affine = pinv @ (image - image.mean(dim=-2, keepdim=True))  # (..., 3, 2): image ~= model @ affine
    r1, r2 = affine[..., 0], affine[..., 1]
    r1 = r1 / (r1 * r1).sum(-1, keepdim=True).sqrt().clamp_min(1e-12)
    r2 = r2 - r1 * (r1 * r2).sum(-1, keepdim=True)
    r2 = r2 / (r2 * r2).sum(-1, keepdim=True).sqrt().clamp_min(1e-12)
    return torch.stack([r1, r2, torch.linalg.cross(r1, r2, dim=-1)], dim=-2)


def rotation_angles(r: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotations -> (..., 3) yaw, pitch, roll in degrees (`stream_engine.signals.rotation_to_pose`).

    The arcsine's argument is clamped to ±(1 − 1e-7) so that its gradient stays finite at a 90° yaw.
    """
    lim = 1.0 - 1e-7
    yaw = torch.asin(r[..., 2, 0].clamp(-lim, lim))
    pitch = torch.atan2(-r[..., 2, 1], r[..., 2, 2])
    roll = torch.atan2(-r[..., 1, 0], r[..., 0, 0])
    return torch.stack([yaw, pitch, roll], dim=-1) * (180.0 / math.pi)


def head_angles(x: torch.Tensor, reference: torch.Tensor, fit: RigidFit | None = None) -> torch.Tensor:
    """(B, T, 68, 2) frames and (B, 68, 2) reference faces -> (B, T, 3) yaw, pitch, roll in degrees relative to
    each row's reference (as `training.metrics.viewer.head_angles`, which the evaluation's head table uses; `fit`
    as in `head_rotation`)."""
    if x.ndim != 4 or reference.ndim != 3 or x.shape[0] != reference.shape[0]:
        raise ValueError(
            f"head_angles: want (B, T, 68, 2) and (B, 68, 2), got {tuple(x.shape)}, {tuple(reference.shape)}"
        )
    neutral = head_rotation(reference, fit)  # (B, 3, 3)
    return rotation_angles(head_rotation(x, fit) @ neutral.transpose(-1, -2)[:, None])
