"""ARKit-52 blendshape weights derived from 68 iBUG landmarks ("perfect sync" avatars, iFacialMocap-style rigs).

Arrays in, arrays out, over any number of frames (or of streams): `arkit_blendshapes(landmarks (..., 68, 2),
neutral (68, 2) or (..., 68, 2), blink (...)) -> (..., 52)` in `ARKIT_NAMES` order (Apple's
`ARFaceAnchor.BlendShapeLocation` list, alphabetical within ARKit's groups as iFacialMocap sends them). Weights
are in [0, 1]; shapes that 68 two-dimensional points cannot see (eye gaze, squint, cheek puff, tongue, sneer,
dimple, shrug, jaw forward) stay 0.

**Mapping.** Every measurement is taken in a face frame: origin between the eye centres, x along the line from
the subject's right eye (points 36-41) to its left eye (42-47), y perpendicular (down the face), unit = the
inter-ocular distance |p36 - p45|. So in-plane head roll, translation and scale do not leak into the weights.
Each weight is ``clip((feature - feature_of_neutral) / span, 0, 1)``: the deviation of one feature from the same
feature on the stream's neutral face, over a calibrated full-scale span. The engine starts the neutral at the
stream's reference face and lets it follow the face while speech is heard and the mouth is nearly closed, so
a generated face whose rest differs from its reference (brows a little lower, chin a little aside) does not
hold shapes at full weight (`SignalConfig.blendshape_neutral_s`, 3 s; the features are One-Euro filtered
with the mouth's settings first). In silence the engine's speech gate sets the mouth, jaw and brow shapes to 0
(`signals.GATED_SHAPES`) and the neutral stays as it was: the generated face lowers its brows by about 0.07
inter-ocular in digital silence (model 0.3.6, twice browDown's span), which held browDown at 1 for seconds
after every phrase before:

| blendshape | feature (face frame, / inter-ocular) |
|---|---|
| jawOpen | mean inner-lip gap (|61-67| + |62-66| + |63-65|) / 3 |
| mouthClose | chin drop (y8 - y33) not matched by a lip gap: chin-drop weight - jawOpen |
| mouthFunnel | mouth narrower than neutral (|48-54|) while open: narrowing x jawOpen share |
| mouthPucker | mouth narrower than neutral while closed: narrowing x (1 - jawOpen share) |
| mouthStretch L/R | mouth corner (54 left, 48 right) further out from the nose line (27, 33) along x |
| mouthSmile L/R | corner higher than the mouth's vertical centre (mean y of 51 and 57), vs neutral |
| mouthFrown L/R | corner lower than that centre, vs neutral |
| mouthPress L/R | that side's lip thickness (|52-63| + |56-65| left, |50-61| + |58-67| right) thinner, lips closed |
| mouthRollUpper / Lower | upper (|51-62|) / lower (|57-66|) lip thickness thinner than neutral |
| mouthUpperUp L/R | upper lip (52 left, 50 right) closer to the nose base (33) along y |
| mouthLowerDown L/R | lower lip (56 left, 58 right) further from the nose base along y |
| mouthLeft / Right | mouth centre (mean of 48, 54) moved along x, relative to the nose (27, 33) |
| jawLeft / Right | chin (8) moved along x towards the subject's left / right, relative to the nose bridge (27) |
| eyeBlink L/R | the `blink` argument (procedural blinks with human statistics, see `signals`) |
| browInnerUp | inner brow ends (21, 22) higher above the eye line |
| browOuterUp L/R | outer brow ends (26 left, 17 right) higher above the eye line |
| browDown L/R | brow middles (24 left, 19 right) lower towards the eye line |

"Left" is the subject's own left (ARKit's convention): image right for an unmirrored camera view.

**Calibration.** The spans (`SPANS`) are the 95th percentile of each feature's positive deviation from the
clip's neutral face over the real speakers of `../shared/data` (1,245 clips, 75.6 min; the neutral face of a
clip is its frame with the smallest inner-lip gap among the frames within 10 % of its median mouth width), so a
weight of 1 is a strong but real movement of a real speaker. `benchmarks/blendshape_calibration.py`
recomputes them and writes the table to `benchmarks/results/blendshape_calibration.{json,md}`. Generated faces
move less than real ones; `gain` scales every span down (weights up) for a livelier rig.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stream_engine.core import LandmarkFrame

ARKIT_NAMES: tuple[str, ...] = (
    "eyeBlinkLeft",
    "eyeLookDownLeft",
    "eyeLookInLeft",
    "eyeLookOutLeft",
    "eyeLookUpLeft",
    "eyeSquintLeft",
    "eyeWideLeft",
    "eyeBlinkRight",
    "eyeLookDownRight",
    "eyeLookInRight",
    "eyeLookOutRight",
    "eyeLookUpRight",
    "eyeSquintRight",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawRight",
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthLeft",
    "mouthRight",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "noseSneerLeft",
    "noseSneerRight",
    "tongueOut",
)
ARKIT_INDEX: dict[str, int] = {name: i for i, name in enumerate(ARKIT_NAMES)}

#: The features measured per frame (face frame, / inter-ocular distance); see `face_features`.
FEATURES: tuple[str, ...] = (
    "gap",
    "chin_drop",
    "width",
    "corner_out_l",
    "corner_out_r",
    "corner_up_l",
    "corner_up_r",
    "lip_thick_l",
    "lip_thick_r",
    "upper_thick",
    "lower_thick",
    "upper_lip_up_l",
    "upper_lip_up_r",
    "lower_lip_down_l",
    "lower_lip_down_r",
    "mouth_x",
    "jaw_x",
    "brow_inner",
    "brow_outer_l",
    "brow_outer_r",
    "brow_mid_l",
    "brow_mid_r",
)
_F = {name: i for i, name in enumerate(FEATURES)}

#: Full-scale deviation of each feature (inter-ocular units), measured on real speakers (module docstring).
#: Keys are "<feature>+" (increase) or "<feature>-" (decrease).
SPANS: dict[str, float] = {
    "gap+": 0.132,
    "chin_drop+": 0.143,
    "width-": 0.058,
    "width+": 0.061,
    "corner_out_l+": 0.056,
    "corner_out_r+": 0.044,
    "corner_up_l+": 0.043,
    "corner_up_r+": 0.046,
    "corner_up_l-": 0.024,
    "corner_up_r-": 0.021,
    "lip_thick_l-": 0.036,
    "lip_thick_r-": 0.036,
    "upper_thick-": 0.029,
    "lower_thick-": 0.017,
    "upper_lip_up_l-": 0.037,
    "upper_lip_up_r-": 0.039,
    "lower_lip_down_l+": 0.130,
    "lower_lip_down_r+": 0.129,
    "mouth_x+": 0.043,
    "mouth_x-": 0.029,
    "jaw_x+": 0.050,
    "jaw_x-": 0.046,
    "brow_inner+": 0.061,
    "brow_outer_l+": 0.048,
    "brow_outer_r+": 0.052,
    "brow_mid_l-": 0.033,
    "brow_mid_r-": 0.032,
}

_R_EYE = np.arange(36, 42)
_L_EYE = np.arange(42, 48)
_EYE_MEAN = np.zeros((68, 2))  # (right eye centre, left eye centre) = points.T @ _EYE_MEAN
_EYE_MEAN[_R_EYE, 0] = 1.0 / 6.0
_EYE_MEAN[_L_EYE, 1] = 1.0 / 6.0

# Distances (point pairs) and linear coordinate combinations, each feature a weighted sum of them.
_PAIRS = np.array([(61, 67), (62, 66), (63, 65), (48, 54), (52, 63), (56, 65), (50, 61), (58, 67), (51, 62), (57, 66)])
_DIST_FEATURES = {
    "gap": {0: 1 / 3, 1: 1 / 3, 2: 1 / 3},
    "width": {3: 1.0},
    "lip_thick_l": {4: 1.0, 5: 1.0},
    "lip_thick_r": {6: 1.0, 7: 1.0},
    "upper_thick": {8: 1.0},
    "lower_thick": {9: 1.0},
}
# (axis, point) -> weight; axis 0 = x, 1 = y of the face frame.
_LINEAR_FEATURES = {
    "chin_drop": {(1, 8): 1.0, (1, 33): -1.0},
    "corner_out_l": {(0, 54): 1.0, (0, 27): -0.5, (0, 33): -0.5},
    "corner_out_r": {(0, 48): -1.0, (0, 27): 0.5, (0, 33): 0.5},
    "corner_up_l": {(1, 51): 0.5, (1, 57): 0.5, (1, 54): -1.0},
    "corner_up_r": {(1, 51): 0.5, (1, 57): 0.5, (1, 48): -1.0},
    "upper_lip_up_l": {(1, 52): 1.0, (1, 33): -1.0},
    "upper_lip_up_r": {(1, 50): 1.0, (1, 33): -1.0},
    "lower_lip_down_l": {(1, 56): 1.0, (1, 33): -1.0},
    "lower_lip_down_r": {(1, 58): 1.0, (1, 33): -1.0},
    "mouth_x": {(0, 48): 0.5, (0, 54): 0.5, (0, 27): -0.5, (0, 33): -0.5},
    "jaw_x": {(0, 8): 1.0, (0, 27): -1.0},
    "brow_inner": {(1, 21): -0.5, (1, 22): -0.5},
    "brow_outer_l": {(1, 26): -1.0},
    "brow_outer_r": {(1, 17): -1.0},
    "brow_mid_l": {(1, 24): -1.0},
    "brow_mid_r": {(1, 19): -1.0},
}
_DIST_MATRIX = np.zeros((len(_PAIRS), len(FEATURES)))
_LINEAR_MATRIX = np.zeros((136, len(FEATURES)))  # the face-frame points flattened as (x0, y0, x1, y1, ...)
for _name, _terms in _DIST_FEATURES.items():
    for _k, _v in _terms.items():
        _DIST_MATRIX[_k, _F[_name]] = _v
for _lname, _lterms in _LINEAR_FEATURES.items():
    for (_axis, _point), _w in _lterms.items():
        _LINEAR_MATRIX[2 * _point + _axis, _F[_lname]] = _w
assert set(_DIST_FEATURES) | set(_LINEAR_FEATURES) == set(FEATURES)


def face_frame(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) image landmarks -> (..., 68, 2) in the face frame (module docstring): origin between the eye
    centres, x from the subject's right eye to its left eye, unit = inter-ocular distance |p36 - p45|."""
    p = np.asarray(landmarks, dtype=np.float64)
    if p.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks must have shape (..., 68, 2), got {p.shape}")
    eyes = np.swapaxes(p, -1, -2) @ _EYE_MEAN  # (..., 2 coords, 2 eyes)
    right, left = eyes[..., 0], eyes[..., 1]
    axis = left - right
    norm = np.sqrt((axis * axis).sum(-1, keepdims=True))
    d = p[..., 36, :] - p[..., 45, :]
    iod = np.maximum(np.sqrt((d * d).sum(-1)), 1e-9)[..., None, None]
    cos, sin = (axis / np.maximum(norm, 1e-12))[..., 0:1], (axis / np.maximum(norm, 1e-12))[..., 1:2]
    rot = np.stack([np.concatenate([cos, -sin], -1), np.concatenate([sin, cos], -1)], -2)  # columns: x, y axes
    result: np.ndarray = ((p - (0.5 * (right + left))[..., None, :]) @ rot) / iod
    return result


def face_features(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) landmarks -> (..., len(FEATURES)) measurements in the face frame (inter-ocular units)."""
    f = face_frame(landmarks)
    d = f[..., _PAIRS[:, 0], :] - f[..., _PAIRS[:, 1], :]
    dists = np.sqrt((d * d).sum(-1))
    result: np.ndarray = dists @ _DIST_MATRIX + f.reshape(f.shape[:-2] + (136,)) @ _LINEAR_MATRIX
    return result


# Direct shapes: (shape, feature, direction, span key); the combined ones are made from these in code.
_DIRECT = [
    ("jawOpen", "gap+"),
    ("mouthClose", "chin_drop+"),
    ("mouthFunnel", "width-"),
    ("mouthRollUpper", "upper_thick-"),
    ("mouthRollLower", "lower_thick-"),
    ("mouthLeft", "mouth_x+"),
    ("mouthRight", "mouth_x-"),
    ("jawLeft", "jaw_x+"),
    ("jawRight", "jaw_x-"),
    ("browInnerUp", "brow_inner+"),
]
for _side, _s in (("Left", "l"), ("Right", "r")):
    _DIRECT += [
        (f"mouthStretch{_side}", f"corner_out_{_s}+"),
        (f"mouthSmile{_side}", f"corner_up_{_s}+"),
        (f"mouthFrown{_side}", f"corner_up_{_s}-"),
        (f"mouthPress{_side}", f"lip_thick_{_s}-"),
        (f"mouthUpperUp{_side}", f"upper_lip_up_{_s}-"),
        (f"mouthLowerDown{_side}", f"lower_lip_down_{_s}+"),
        (f"browOuterUp{_side}", f"brow_outer_{_s}+"),
        (f"browDown{_side}", f"brow_mid_{_s}-"),
    ]
_D_SHAPE = np.array([ARKIT_INDEX[n] for n, _ in _DIRECT])
_D_FEATURE = np.array([_F[k[:-1]] for _, k in _DIRECT])
_D_SCALE = np.array([(1.0 if k.endswith("+") else -1.0) / SPANS[k] for _, k in _DIRECT])
_I = ARKIT_INDEX


def recipe_tables() -> dict[str, np.ndarray]:
    """The mapping's tables, for a re-implementation of `face_features` + `blendshapes_from_features` outside
    numpy (`signal_kernel`): "pairs" (10, 2) point pairs of the distance features; "dist_matrix" (10, F) and
    "linear_matrix" (136, F) as in `face_features`; "direct_shape", "direct_feature" (D,) int and
    "direct_scale" (D,) (+-1 / span) of the direct shapes. Copies."""
    return {
        "pairs": _PAIRS.copy(),
        "dist_matrix": _DIST_MATRIX.copy(),
        "linear_matrix": _LINEAR_MATRIX.copy(),
        "direct_shape": _D_SHAPE.copy(),
        "direct_feature": _D_FEATURE.copy(),
        "direct_scale": _D_SCALE.copy(),
    }


def arkit_blendshapes(
    landmarks: np.ndarray, neutral: np.ndarray, blink: np.ndarray | float = 0.0, gain: float = 1.0
) -> np.ndarray:
    """ARKit-52 weights of landmark frames against a neutral face (mapping and calibration: module docstring).

    Args:
        landmarks: (..., 68, 2) landmarks, any consistent units (normalised crop or pixels).
        neutral: (68, 2) the stream's neutral face, or (..., 68, 2) one per frame/stream.
        blink: eye closure in [0, 1], scalar or broadcastable to the leading shape (-> eyeBlinkLeft/Right).
        gain: > 1 makes every shape reach full weight with a smaller movement.
    Returns:
        (..., 52) float32 in `ARKIT_NAMES` order, each in [0, 1].
    Raises:
        ValueError: wrong shapes, or gain <= 0.
    """
    return blendshapes_from_features(face_features(landmarks), face_features(neutral), blink, gain)


def blendshapes_from_features(
    feats: np.ndarray, neutral_feats: np.ndarray, blink: np.ndarray | float = 0.0, gain: float = 1.0
) -> np.ndarray:
    """`arkit_blendshapes` on precomputed `face_features` (..., F) against neutral features (F,) or (..., F);
    lets a caller keep a running neutral (see `signals.SignalExtractor`)."""
    if gain <= 0:
        raise ValueError("gain must be positive")
    dev = np.asarray(feats, dtype=np.float64) - neutral_feats
    out = np.zeros(dev.shape[:-1] + (len(ARKIT_NAMES),), dtype=np.float64)
    out[..., _D_SHAPE] = np.clip(dev[..., _D_FEATURE] * (_D_SCALE * gain), 0.0, 1.0)
    jaw = out[..., _I["jawOpen"]].copy()
    out[..., _I["mouthClose"]] = np.clip(out[..., _I["mouthClose"]] - jaw, 0.0, 1.0)  # chin down, lips together
    narrow = out[..., _I["mouthFunnel"]].copy()
    out[..., _I["mouthFunnel"]] = narrow * jaw
    out[..., _I["mouthPucker"]] = narrow * (1.0 - jaw)
    for side in ("Left", "Right"):
        out[..., _I[f"mouthStretch{side}"]] *= 1.0 - out[..., _I[f"mouthSmile{side}"]]
        out[..., _I[f"mouthPress{side}"]] *= 1.0 - jaw
    b = np.clip(np.broadcast_to(np.asarray(blink, dtype=np.float64), dev.shape[:-1]), 0.0, 1.0)
    out[..., _I["eyeBlinkLeft"]] = b
    out[..., _I["eyeBlinkRight"]] = b
    return out.astype(np.float32)


#: The shapes `arkit_blendshapes` can make non-zero (the others are always 0).
SUPPORTED: tuple[str, ...] = tuple(
    n
    for n in ARKIT_NAMES
    if n
    in {
        "eyeBlinkLeft",
        "eyeBlinkRight",
        "jawLeft",
        "jawRight",
        "jawOpen",
        "mouthClose",
        "mouthFunnel",
        "mouthPucker",
        "mouthLeft",
        "mouthRight",
        "mouthSmileLeft",
        "mouthSmileRight",
        "mouthFrownLeft",
        "mouthFrownRight",
        "mouthStretchLeft",
        "mouthStretchRight",
        "mouthRollLower",
        "mouthRollUpper",
        "mouthPressLeft",
        "mouthPressRight",
        "mouthLowerDownLeft",
        "mouthLowerDownRight",
        "mouthUpperUpLeft",
        "mouthUpperUpRight",
        "browDownLeft",
        "browDownRight",
        "browInnerUp",
        "browOuterUpLeft",
        "browOuterUpRight",
    }
)


def as_dict(weights: np.ndarray, names: tuple[str, ...] = SUPPORTED) -> dict[str, float]:
    """(52,) weights -> {name: float} for `names` (default: the shapes 68 points support)."""
    w = np.asarray(weights).reshape(-1)
    return {n: float(w[ARKIT_INDEX[n]]) for n in names}


def from_signals(frame: LandmarkFrame) -> dict[str, float]:
    """The default blendshape deriver of the engines: a frame's ARKit-52 weights by name.

    `frame` is an engine frame whose `signals` were derived (`signals.Signals.blendshapes`, (52,) in
    `ARKIT_NAMES` order); returns all 52 names -> weight in [0, 1] (the shapes 68 points cannot make are 0),
    or {} when the frame has no signals.
    """
    signals = getattr(frame, "signals", None)
    weights = getattr(signals, "blendshapes", None)
    return {} if weights is None else as_dict(weights, ARKIT_NAMES)
